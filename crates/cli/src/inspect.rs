//! `temper inspect`: what a checkpoint is, without loading its weights.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use temper_llm_arch::gguf::{GgufFile, hf_config};
use temper_llm_arch::{ModelConfig, SlidingLayers};

/// A human-readable report on an HF directory or GGUF file.
pub fn inspect(path: &Path) -> Result<String> {
    let mut out = String::new();
    let (config, dtypes, n_tensors) = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_json(&hf_config(&file)?, path)?;
        let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
        for t in file.tensors() {
            *dtypes
                .entry(t.ggml_type.name().unwrap_or("unknown").to_string())
                .or_default() += 1;
        }
        writeln!(out, "format:       GGUF v{}", file.version())?;
        if let Ok(name) = file.get_str("general.name") {
            writeln!(out, "name:         {name}")?;
        }
        (config, dtypes, file.tensors().len())
    } else {
        let config = ModelConfig::from_file(path.join("config.json"))?;
        let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let single = path.join("model.safetensors");
        if single.exists() {
            files.push(single);
        } else {
            for entry in std::fs::read_dir(path).with_context(|| path.display().to_string())? {
                let p = entry?.path();
                if p.extension().is_some_and(|e| e == "safetensors") {
                    files.push(p);
                }
            }
        }
        let mut n = 0;
        for f in &files {
            for (_, dtype) in safetensors_header(f)? {
                *dtypes.entry(dtype).or_default() += 1;
                n += 1;
            }
        }
        writeln!(
            out,
            "format:       HF directory ({} safetensors file(s))",
            files.len()
        )?;
        (config, dtypes, n)
    };
    writeln!(
        out,
        "architecture: {} (model_type {})",
        config.architecture(),
        config.model_type
    )?;
    writeln!(
        out,
        "parameters:   {} ({:.1}M)",
        config.num_parameters(),
        config.num_parameters() as f64 / 1e6
    )?;
    let dt: Vec<String> = dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    writeln!(out, "tensors:      {n_tensors} ({})", dt.join(", "))?;
    writeln!(
        out,
        "layers:       {} x (hidden {}, heads {}/{} kv, head_dim {}, mlp {})",
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.intermediate_size
    )?;
    writeln!(
        out,
        "vocab:        {} (tied embeddings: {})",
        config.vocab_size, config.tie_word_embeddings
    )?;
    writeln!(
        out,
        "rope:         theta {} scaling {:?}",
        config.rope_theta, config.rope_scaling
    )?;
    // Qwen2/Qwen3 slide on some layers only (`max_window_layers` / `layer_types`).
    let window = match (config.sliding_window, &config.sliding_layers) {
        (None, _) => "none".to_string(),
        (Some(w), SlidingLayers::All) => format!("{w}"),
        (Some(w), SlidingLayers::From(n)) => format!("{w} on layers ≥ {n}"),
        (Some(w), SlidingLayers::Listed(l)) => {
            let on: Vec<usize> = (0..l.len()).filter(|&i| l[i]).collect();
            format!("{w} on layers {on:?}")
        }
    };
    writeln!(
        out,
        "context:      {} (sliding window {window})",
        config.max_position_embeddings
    )?;
    write!(
        out,
        "config:       {}",
        serde_json::to_string_pretty(&config.to_json("float32"))?
    )?;
    Ok(out)
}

/// `(name, dtype)` of every tensor in a safetensors file, reading only its header (checked as
/// the loaders check it, naming the tensor at fault).
fn safetensors_header(path: &Path) -> Result<Vec<(String, String)>> {
    Ok(temper_formats::safetensors_check::read_header(path)?
        .into_iter()
        .map(|t| (t.name, t.dtype))
        .collect())
}
