//! The synthetic model pairs: SmolLM2-135M and TinyLlama-1.1B shapes, B = A + 0.1·std·noise,
//! written as bf16 safetensors with a deterministic, thread-count-independent generator.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Preset {
    pub(crate) name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    tied: bool,
    max_pos: usize,
    rope_theta: f64,
    bos: u32,
    eos: u32,
}

pub(crate) const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        inter: 1536,
        vocab: 49152,
        tied: true,
        max_pos: 8192,
        rope_theta: 100_000.0,
        bos: 0,
        eos: 0,
    },
    Preset {
        name: "tinyllama-1.1b",
        hidden: 2048,
        layers: 22,
        heads: 32,
        kv_heads: 4,
        inter: 5632,
        vocab: 32000,
        tied: false,
        max_pos: 2048,
        rope_theta: 10_000.0,
        bos: 1,
        eos: 2,
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embed,
    Norm,
    Linear,
}

/// `(name, shape, kind)` in `LlamaForCausalLM` naming, like `gen_models.py`.
fn tensor_specs(p: &Preset) -> Vec<(String, Vec<usize>, Kind)> {
    let (h, hd) = (p.hidden, p.hidden / p.heads);
    let mut specs = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![p.vocab, h],
        Kind::Embed,
    )];
    for i in 0..p.layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        specs.extend([
            (l("input_layernorm.weight"), vec![h], Kind::Norm),
            (
                l("self_attn.q_proj.weight"),
                vec![p.heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.k_proj.weight"),
                vec![p.kv_heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.v_proj.weight"),
                vec![p.kv_heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.o_proj.weight"),
                vec![h, p.heads * hd],
                Kind::Linear,
            ),
            (l("post_attention_layernorm.weight"), vec![h], Kind::Norm),
            (l("mlp.gate_proj.weight"), vec![p.inter, h], Kind::Linear),
            (l("mlp.up_proj.weight"), vec![p.inter, h], Kind::Linear),
            (l("mlp.down_proj.weight"), vec![h, p.inter], Kind::Linear),
        ]);
    }
    specs.push(("model.norm.weight".to_string(), vec![h], Kind::Norm));
    if !p.tied {
        specs.push(("lm_head.weight".to_string(), vec![p.vocab, h], Kind::Embed));
    }
    specs
}

/// Elements per independently seeded block (so generation is parallel and still
/// deterministic whatever the thread count).
const GEN_BLOCK: usize = 1 << 18;

fn fnv1a(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Standard normal samples (Box–Muller) from a generator seeded by `(seed, salt, name, block)`.
fn normals(seed: u64, salt: &str, name: &str, block: usize, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(fnv1a(&format!("{seed}|{salt}|{name}|{block}")));
    for pair in out.chunks_mut(2) {
        let u1: f32 = 1.0 - rng.random::<f32>(); // (0, 1]
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        pair[0] = r * c;
        if pair.len() > 1 {
            pair[1] = r * s;
        }
    }
}

/// One tensor of model A (`derive = None`) or of B = A + delta·std·noise, as bf16 bytes.
fn make_tensor(name: &str, numel: usize, kind: Kind, derive: Option<f32>) -> Vec<u8> {
    let (mean, std) = match kind {
        Kind::Norm => (1.0f32, 0.05f32),
        Kind::Embed | Kind::Linear => (0.0, 0.02),
    };
    let mut bytes = vec![0u8; numel * 2];
    bytes
        .par_chunks_mut(GEN_BLOCK * 2)
        .enumerate()
        .for_each_init(
            || (vec![0f32; GEN_BLOCK], vec![0f32; GEN_BLOCK]),
            |(w, noise), (blk, out)| {
                let n = out.len() / 2;
                normals(1, "", name, blk, &mut w[..n]);
                if derive.is_some() {
                    normals(2, "delta", name, blk, &mut noise[..n]);
                }
                for j in 0..n {
                    let mut v = mean + std * w[j];
                    if let Some(d) = derive {
                        v += d * std * noise[j];
                    }
                    out[2 * j..2 * j + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes());
                }
            },
        );
    bytes
}

fn hf_config(p: &Preset) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": p.hidden,
        "intermediate_size": p.inter,
        "num_attention_heads": p.heads,
        "num_hidden_layers": p.layers,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.hidden / p.heads,
        "vocab_size": p.vocab,
        "max_position_embeddings": p.max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "tie_word_embeddings": p.tied,
        "bos_token_id": p.bos,
        "eos_token_id": p.eos,
        "torch_dtype": "bfloat16",
    })
}

/// Write `<dir>` (config.json + model.safetensors) unless it already holds a model.
pub(crate) fn ensure_model(dir: &Path, p: &Preset, derive: Option<f32>) {
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        eprintln!("reusing {}", dir.display());
        return;
    }
    let t0 = Instant::now();
    // Generated beside `dir` and renamed into place: an interrupted run leaves no half model.
    let staging = temper_formats::StagingDir::create(dir, true)
        .expect("create the temporary model directory");
    let tmp = staging.path().to_path_buf();

    let mut specs = tensor_specs(p);
    specs.sort_by(|a, b| a.0.cmp(&b.0)); // data in name order, like the safetensors serialiser
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut pos = 0usize;
    for (name, shape, _) in &specs {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            json!({ "dtype": "BF16", "shape": shape, "data_offsets": [pos, pos + len] }),
        );
        pos += len;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("serialise the header");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let path = tmp.join("model.safetensors");
    let mut f = std::io::BufWriter::with_capacity(
        1 << 22,
        File::create(&path).expect("create model.safetensors"),
    );
    f.write_all(&(head.len() as u64).to_le_bytes())
        .expect("write the header length");
    f.write_all(&head).expect("write the header");
    let mut params = 0usize;
    for (name, shape, kind) in &specs {
        let numel: usize = shape.iter().product();
        params += numel;
        f.write_all(&make_tensor(name, numel, *kind, derive))
            .expect("write tensor data");
    }
    f.flush().expect("flush model.safetensors");
    drop(f);
    let cfg = serde_json::to_string_pretty(&hf_config(p)).expect("serialise config.json");
    std::fs::write(tmp.join("config.json"), cfg).expect("write config.json");
    staging
        .commit()
        .expect("rename the model directory into place");
    eprintln!(
        "generated {} ({params} params, bf16) in {:.1} s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
}
