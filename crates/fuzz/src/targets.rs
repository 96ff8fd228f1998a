//! One target per parser of untrusted bytes: the function a downloaded or user-written file
//! reaches first, driven as far as a loader would drive it (a GGUF file is parsed, its
//! config derived and every tensor decoded; a template is compiled and rendered).
//!
//! A target returns `Ok` or the parser's error text; a panic is what the campaign hunts.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use temper_llm_arch::checkpoint::{SafetensorsSource, TensorSource};
use temper_llm_arch::gguf::{GgufFile, chat_template, hf_config, special_tokens, tokenizer_json};
use temper_llm_arch::{ChatMessage, ChatTemplate, ModelConfig};
use temper_objectives::data::{
    Document, PreferenceRow, PromptCompletion, ReadOptions, SftRow, UnpairedRow, parse_jsonl,
};

use crate::seeds;

/// Scratch space for the targets that read files (a temporary directory per campaign).
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// # Panics
    /// No temporary directory can be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let path = self.path(name);
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    /// Text formats get the text mutations as well as the byte ones.
    pub text: bool,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub run: fn(&Scratch, &[u8]) -> Result<(), String>,
}

/// Every target, in the order `--target all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        text: false,
        seeds: || vec![seeds::gguf()],
        run: gguf,
    },
    Target {
        name: "safetensors",
        text: false,
        seeds: || vec![seeds::safetensors()],
        run: safetensors,
    },
    Target {
        name: "shard-index",
        text: true,
        seeds: || vec![seeds::SHARD_INDEX.into()],
        run: shard_index,
    },
    Target {
        name: "config-json",
        text: true,
        seeds: || vec![seeds::CONFIG_JSON.into()],
        run: config_json,
    },
    Target {
        name: "tokenizer-config",
        text: true,
        seeds: || vec![seeds::TOKENIZER_CONFIG.into()],
        run: tokenizer_config,
    },
    Target {
        name: "adapter-config",
        text: true,
        seeds: || vec![seeds::ADAPTER_CONFIG.into()],
        run: adapter_config,
    },
    Target {
        name: "mergekit-yaml",
        text: true,
        seeds: || vec![seeds::MERGE_YAML.into()],
        run: mergekit_yaml,
    },
    Target {
        name: "trl-jsonl",
        text: true,
        seeds: || vec![seeds::TRL_JSONL.into()],
        run: trl_jsonl,
    },
    Target {
        name: "bench-jsonl",
        text: true,
        seeds: || vec![seeds::BENCH_JSONL.into()],
        run: bench_jsonl,
    },
    Target {
        name: "pipeline-toml",
        text: true,
        seeds: || vec![seeds::PIPELINE_TOML.into()],
        run: pipeline_toml,
    },
    Target {
        name: "stage-toml",
        text: true,
        seeds: || vec![seeds::STAGE_TOML.into()],
        run: stage_toml,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Render a template (at most a few messages) as `generate --chat` would.
fn render(source: &str) -> Result<(), String> {
    let template = ChatTemplate::new(source, "<s>", "</s>").map_err(err)?;
    let messages = [
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", "hello"),
    ];
    template.render(&messages, true).map(drop).map_err(err)
}

fn gguf(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let file = GgufFile::from_bytes(bytes.to_vec(), "fuzz.gguf").map_err(err)?;
    let _ = special_tokens(&file);
    let _ = tokenizer_json(&file);
    if let Ok(config) = hf_config(&file) {
        let _ = ModelConfig::from_json(&config, Path::new("fuzz.gguf"));
    }
    if let Some(source) = chat_template(&file) {
        let _ = render(&source);
    }
    for info in file.tensors() {
        let _ = file.dequantize(&info.name);
    }
    Ok(())
}

fn safetensors(scratch: &Scratch, bytes: &[u8]) -> Result<(), String> {
    temper_formats::safetensors_check::check_header(bytes, "fuzz.safetensors").map_err(err)?;
    let path = scratch.write("fuzz.safetensors", bytes)?;
    let mut source = SafetensorsSource::open_file(&path).map_err(err)?;
    for name in source.remaining() {
        source.take(&name).map_err(err)?;
    }
    Ok(())
}

fn shard_index(scratch: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let dir = scratch.path("sharded");
    if !dir.exists() {
        std::fs::create_dir(&dir).map_err(err)?;
        std::fs::write(
            dir.join("model-00001-of-00001.safetensors"),
            seeds::safetensors(),
        )
        .map_err(err)?;
    }
    std::fs::write(dir.join("model.safetensors.index.json"), bytes).map_err(err)?;
    let mut source = SafetensorsSource::open_dir(&dir).map_err(err)?;
    for name in source.remaining() {
        source.take(&name).map_err(err)?;
    }
    Ok(())
}

fn config_json(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(err)?;
    let config = ModelConfig::from_json(&value, Path::new("config.json")).map_err(err)?;
    let _ = config.num_parameters();
    let _ = config.to_json("float32");
    Ok(())
}

fn tokenizer_config(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(err)?;
    let config = temper_formats::tokenizer::TokenizerConfig::from_json(
        value,
        Path::new("tokenizer_config.json"),
    )
    .map_err(err)?;
    let _ = config.to_json();
    match config.default_chat_template() {
        Some(source) => render(source),
        None => Ok(()),
    }
}

fn adapter_config(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let config =
        temper_formats::peft::LoraConfig::from_json_slice(bytes, Path::new("adapter_config.json"))
            .map_err(err)?;
    config.to_json_bytes().map(drop).map_err(err)
}

fn mergekit_yaml(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let config = temper_merge::MergeConfig::from_yaml(text(bytes)?, "merge.yaml").map_err(err)?;
    let _ = config.referenced_models();
    let _ = config.load_dtype();
    Ok(())
}

fn trl_jsonl(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    // Every row kind TRL's trainers read, skipping bad lines as `--skip-bad-lines` does.
    let opts = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let origin = Path::new("train.jsonl");
    parse_jsonl::<Document>(Cursor::new(bytes), origin, &opts).map_err(err)?;
    parse_jsonl::<PromptCompletion>(Cursor::new(bytes), origin, &opts).map_err(err)?;
    parse_jsonl::<SftRow>(Cursor::new(bytes), origin, &opts).map_err(err)?;
    parse_jsonl::<PreferenceRow>(Cursor::new(bytes), origin, &opts).map_err(err)?;
    parse_jsonl::<UnpairedRow>(Cursor::new(bytes), origin, &opts).map_err(err)?;
    // And once without skipping: the first bad line is an error naming it.
    let _ = parse_jsonl::<Document>(Cursor::new(bytes), origin, &ReadOptions::default());
    Ok(())
}

fn bench_jsonl(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    let questions =
        temper_bench_eval::parse_questions(text(bytes)?, Path::new("bench.jsonl")).map_err(err)?;
    for q in &questions {
        let _ = q.choices();
        let _ = q.gold_index();
        let _ = q.gold_text();
    }
    Ok(())
}

fn pipeline_toml(scratch: &Scratch, bytes: &[u8]) -> Result<(), String> {
    temper_pipeline::PipelineConfig::from_toml_str(
        text(bytes)?,
        "pipeline.toml",
        scratch.dir.path(),
    )
    .map(drop)
    .map_err(err)
}

fn stage_toml(_: &Scratch, bytes: &[u8]) -> Result<(), String> {
    temper_train::StageConfig::from_toml_str(text(bytes)?)
        .map(drop)
        .map_err(err)
}
