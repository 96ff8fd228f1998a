//! Fast behaviour tests on tiny random models built in the test: KV-cache consistency,
//! padding, explicit positions, generation, and checkpoint save/load (single and sharded).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;
use safetensors::{Dtype, SafeTensors};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{SafetensorsSource, TensorSource, hf_tensors, load_weights};
use temper_llm_arch::{
    ForwardOptions, GenerationConfig, KvCache, LlamaForCausalLM, ModelConfig, Pretrained,
    RopeScaling, SpecialTokens, Tokenizer, generate,
};

const TOL: f32 = 1e-4;

fn device() -> Device {
    Device::flex()
}

/// Llama 3.1-style scaling with a tiny original context, so it changes frequencies at the
/// head dims used here.
fn llama3_scaling() -> RopeScaling {
    RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    }
}

/// A random model whose attention is sharp enough for positions and masks to matter: HF's
/// std 0.02 init gives near-uniform attention, so q/k projections are scaled up.
fn random_model(config: &ModelConfig) -> LlamaForCausalLM {
    let mut m = LlamaForCausalLM::init(config, &device());
    for layer in &mut m.model.layers {
        let attn = &mut layer.self_attn;
        attn.q_proj.weight = Param::from_tensor(attn.q_proj.weight.val() * 10.0);
        attn.k_proj.weight = Param::from_tensor(attn.k_proj.weight.val() * 10.0);
    }
    m
}

/// The same weights under another config (window, RoPE scaling).
fn with_config(m: &LlamaForCausalLM, config: ModelConfig) -> LlamaForCausalLM {
    LlamaForCausalLM::from_parts(config, m.model.clone(), m.lm_head.clone())
}

fn ids(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let b = rows.len();
    let s = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == s));
    let data: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [b, s]), &device())
}

/// Logits as `[batch][seq][vocab]`.
fn host(t: Tensor<3>) -> Vec<Vec<Vec<f32>>> {
    let [b, s, v] = t.dims();
    let flat: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
    (0..b)
        .map(|i| {
            (0..s)
                .map(|j| flat[(i * s + j) * v..(i * s + j + 1) * v].to_vec())
                .collect()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn forward(
    m: &LlamaForCausalLM,
    rows: &[Vec<u32>],
    options: &ForwardOptions,
) -> Vec<Vec<Vec<f32>>> {
    host(m.forward(ids(rows), options).unwrap())
}

fn forward_plain(m: &LlamaForCausalLM, rows: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    forward(m, rows, &ForwardOptions::default())
}

/// Logits `[seq][vocab]` of one unpadded row.
fn forward_row(m: &LlamaForCausalLM, row: &[u32]) -> Vec<Vec<f32>> {
    forward_plain(m, &[row.to_vec()]).remove(0)
}

fn with_positions(m: &LlamaForCausalLM, row: &[u32], positions: Vec<usize>) -> Vec<Vec<f32>> {
    let options = ForwardOptions {
        attention_mask: None,
        position_ids: Some(vec![positions]),
    };
    forward(m, &[row.to_vec()], &options).remove(0)
}

/// Largest difference between two `[seq][vocab]` logit blocks.
fn max_diff_rows(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| max_diff(x, y))
        .fold(0.0, f32::max)
}

/// Feed `rows` through `forward_cached` in chunks of the given sizes and concatenate the logits.
fn cached_in_chunks(
    m: &LlamaForCausalLM,
    rows: &[Vec<u32>],
    chunks: &[usize],
) -> Vec<Vec<Vec<f32>>> {
    let mut cache = KvCache::new(m.config().num_hidden_layers);
    let mut out: Vec<Vec<Vec<f32>>> = vec![vec![]; rows.len()];
    let mut start = 0;
    for &n in chunks {
        let chunk: Vec<Vec<u32>> = rows.iter().map(|r| r[start..start + n].to_vec()).collect();
        let logits = host(
            m.forward_cached(ids(&chunk), &ForwardOptions::default(), &mut cache)
                .unwrap(),
        );
        for (o, l) in out.iter_mut().zip(logits) {
            o.extend(l);
        }
        start += n;
        assert_eq!(cache.len(), start);
    }
    assert_eq!(start, rows[0].len());
    out
}

#[derive(Debug, Clone)]
enum Variant {
    Llama,
    /// Mistral with this sliding window (smaller than the sequence).
    Mistral(usize),
    Llama3Scaling,
}

#[derive(Debug, Clone)]
struct CacheCase {
    heads: usize,
    kv_heads: usize,
    hidden: usize,
    /// Override `head_dim` (so `heads * head_dim != hidden`).
    head_dim: Option<usize>,
    layers: usize,
    vocab: usize,
    tied: bool,
    variant: Variant,
    tokens: Vec<Vec<u32>>,
    /// First chunk of the prefill-then-one-by-one run.
    prefill: usize,
    /// Cut points of the arbitrary split (`cuts[i]`: cut after token `i`).
    cuts: Vec<bool>,
}

impl CacheCase {
    fn config(&self) -> ModelConfig {
        let mut c = ModelConfig::tiny(
            self.vocab,
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
        );
        if let Some(hd) = self.head_dim {
            c.head_dim = hd;
        }
        c.tie_word_embeddings = self.tied;
        match self.variant {
            Variant::Llama => {}
            Variant::Mistral(w) => {
                c.model_type = "mistral".into();
                c.sliding_window = Some(w);
            }
            Variant::Llama3Scaling => c.rope_scaling = Some(llama3_scaling()),
        }
        c
    }
}

fn cache_case() -> impl Strategy<Value = CacheCase> {
    let shape = (
        prop_oneof![
            Just((4usize, 1usize)),
            Just((4, 2)),
            Just((4, 4)),
            Just((2, 1))
        ],
        prop_oneof![Just(16usize), Just(32)],
        prop::option::weighted(0.25, Just(6usize)),
        1usize..=2,
        8usize..=64,
        any::<bool>(),
        2usize..=12,
        1usize..=2,
    );
    shape.prop_flat_map(
        |((heads, kv_heads), hidden, head_dim, layers, vocab, tied, seq, batch)| {
            let variant = prop_oneof![
                Just(Variant::Llama),
                (1..seq).prop_map(Variant::Mistral),
                Just(Variant::Llama3Scaling),
            ];
            let tokens = prop::collection::vec(prop::collection::vec(0..vocab as u32, seq), batch);
            (
                variant,
                tokens,
                1..=seq,
                prop::collection::vec(any::<bool>(), seq - 1),
            )
                .prop_map(move |(variant, tokens, prefill, cuts)| CacheCase {
                    heads,
                    kv_heads,
                    hidden,
                    head_dim,
                    layers,
                    vocab,
                    tied,
                    variant,
                    tokens,
                    prefill,
                    cuts,
                })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// `forward_cached` fed in chunks (prefill + single tokens, and an arbitrary split) gives the
    /// same logits as one `forward` over the whole sequence.
    #[test]
    fn cached_decoding_equals_full_recompute(case in cache_case()) {
        let m = random_model(&case.config());
        let seq = case.tokens[0].len();
        let full = forward_plain(&m, &case.tokens);

        let mut one_by_one = vec![case.prefill];
        one_by_one.extend(std::iter::repeat_n(1, seq - case.prefill));
        let mut split = vec![];
        let mut last = 0;
        for (i, &cut) in case.cuts.iter().enumerate() {
            if cut {
                split.push(i + 1 - last);
                last = i + 1;
            }
        }
        split.push(seq - last);

        for chunks in [one_by_one, split] {
            let cached = cached_in_chunks(&m, &case.tokens, &chunks);
            for (row, (a, b)) in full.iter().zip(&cached).enumerate() {
                let d = max_diff_rows(a, b);
                prop_assert!(d <= TOL, "row {row}, chunks {chunks:?}: max |Δ| = {d}");
            }
        }
    }
}

/// The window and the RoPE scaling of the configs above really change the model (so the
/// property test exercises them), and a 1-layer sliding-window model equals full attention
/// over the last `window` tokens at their original positions.
#[test]
fn sliding_window_and_rope_scaling_take_effect() {
    let base = ModelConfig::tiny(40, 32, 1, 4, 2);
    let m = random_model(&base);
    let tokens: Vec<u32> = vec![3, 17, 5, 29, 11, 2, 38, 7, 19];
    let full = forward_row(&m, &tokens);

    let w = 3;
    let mut mistral = base.clone();
    mistral.model_type = "mistral".into();
    mistral.sliding_window = Some(w);
    let windowed = forward_row(&with_config(&m, mistral), &tokens);
    for i in 0..tokens.len() {
        let d = max_diff(&full[i], &windowed[i]);
        if i < w {
            assert!(d <= TOL, "position {i} is inside the window: {d}");
        } else {
            assert!(
                d > 1e-3,
                "position {i} is outside the window but logits match ({d})"
            );
            // Reference: full attention over tokens i-w+1..=i at positions i-w+1..=i.
            let window_tokens = tokens[i + 1 - w..=i].to_vec();
            let reference = with_positions(&m, &window_tokens, (i + 1 - w..=i).collect());
            let d = max_diff(&reference[w - 1], &windowed[i]);
            assert!(
                d <= TOL,
                "position {i}: sliding window differs from its reference by {d}"
            );
        }
    }

    let mut scaled = base;
    scaled.rope_scaling = Some(llama3_scaling());
    let scaled = forward_row(&with_config(&m, scaled), &tokens);
    // Position 0 has angle 0 whatever the frequencies; later positions see the scaling.
    assert!(max_diff(&full[0], &scaled[0]) <= TOL);
    assert!(max_diff_rows(&full[1..], &scaled[1..]) > 1e-3);
}

/// Grouped-query attention equals multi-head attention whose K/V heads are copies: query head
/// `h` uses KV head `h / (heads / kv_heads)` (HF `repeat_kv`).
#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let (heads, kv_heads) = (4, 2);
    let gqa_config = ModelConfig::tiny(40, 32, 2, heads, kv_heads);
    let gqa = random_model(&gqa_config);
    let hd = gqa_config.head_dim;
    let mut mha_config = gqa_config.clone();
    mha_config.num_key_value_heads = heads;
    let mut mha = with_config(&gqa, mha_config.clone());
    let repeat = |w: Tensor<2>| {
        // burn weights are [in, out]; output columns are head-major.
        let cols = (0..heads)
            .map(|h| w.clone().narrow(1, (h / (heads / kv_heads)) * hd, hd))
            .collect();
        Param::from_tensor(Tensor::cat(cols, 1))
    };
    for layer in &mut mha.model.layers {
        let a = &mut layer.self_attn;
        a.num_kv_heads = heads;
        a.k_proj.weight = repeat(a.k_proj.weight.val());
        a.v_proj.weight = repeat(a.v_proj.weight.val());
    }
    let rows = vec![vec![3, 17, 5, 29, 11, 2, 38], vec![1, 2, 3, 4, 5, 6, 7]];
    let d = max_diff_rows(
        &forward_plain(&gqa, &rows)[0],
        &forward_plain(&mha, &rows)[0],
    );
    assert!(d <= TOL, "GQA vs repeated-KV MHA: {d}");
    let d = max_diff_rows(
        &forward_plain(&gqa, &rows)[1],
        &forward_plain(&mha, &rows)[1],
    );
    assert!(d <= TOL, "GQA vs repeated-KV MHA: {d}");
}

fn padding_configs() -> Vec<(&'static str, ModelConfig)> {
    let gqa = ModelConfig::tiny(48, 32, 2, 4, 1);
    let mut tied_mha = ModelConfig::tiny(48, 16, 2, 4, 4);
    tied_mha.tie_word_embeddings = true;
    let mut mistral = ModelConfig::tiny(48, 32, 2, 4, 2);
    mistral.model_type = "mistral".into();
    mistral.sliding_window = Some(3);
    let mut llama3 = ModelConfig::tiny(48, 32, 1, 4, 2);
    llama3.rope_scaling = Some(llama3_scaling());
    vec![
        ("gqa", gqa),
        ("tied-mha", tied_mha),
        ("mistral-window-3", mistral),
        ("llama3", llama3),
    ]
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 1, 44, 13, 27, 8], vec![31, 2, 17, 40], vec![6]]
}

/// Each real position of a left- or right-padded batch has the logits of its row run alone.
#[test]
fn padded_batch_rows_equal_unpadded_rows() {
    const PAD: u32 = 47;
    for (name, config) in padding_configs() {
        let m = random_model(&config);
        let seqs = prompts();
        let singles: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| forward_row(&m, s)).collect();
        let max_len = seqs.iter().map(Vec::len).max().unwrap();
        for left in [true, false] {
            let mut rows = vec![];
            let mut mask = vec![];
            for s in &seqs {
                let pad = max_len - s.len();
                let (mut row, mut m) = (vec![], vec![]);
                if left {
                    row.extend(std::iter::repeat_n(PAD, pad));
                    m.extend(std::iter::repeat_n(0u8, pad));
                }
                row.extend(s);
                m.extend(std::iter::repeat_n(1u8, s.len()));
                if !left {
                    row.extend(std::iter::repeat_n(PAD, pad));
                    m.extend(std::iter::repeat_n(0u8, pad));
                }
                rows.push(row);
                mask.push(m);
            }
            let options = ForwardOptions {
                attention_mask: Some(mask),
                position_ids: None,
            };
            let batch = forward(&m, &rows, &options);
            for (r, s) in seqs.iter().enumerate() {
                let offset = if left { max_len - s.len() } else { 0 };
                for j in 0..s.len() {
                    let d = max_diff(&batch[r][offset + j], &singles[r][j]);
                    assert!(d <= TOL, "{name}, left={left}, row {r}, position {j}: {d}");
                }
            }
        }
    }
}

/// A padding mask changes the result compared with attending to the pad tokens (the mask is
/// not ignored).
#[test]
fn attention_mask_is_not_ignored() {
    let m = random_model(&ModelConfig::tiny(48, 32, 1, 4, 2));
    let row = vec![47, 47, 5, 9, 1];
    let masked = ForwardOptions {
        attention_mask: Some(vec![vec![0, 0, 1, 1, 1]]),
        position_ids: None,
    };
    let a = forward(&m, std::slice::from_ref(&row), &masked).remove(0);
    let b = forward_plain(&m, &[row]).remove(0);
    assert!(max_diff(&a[4], &b[4]) > 1e-3);
}

/// Greedy reference: full forward (no cache) and argmax, one token at a time.
fn greedy_reference(m: &LlamaForCausalLM, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = forward_plain(m, &[seq.clone()]).remove(0);
        seq.push(temper_llm_arch::generation::argmax(logits.last().unwrap()));
    }
    seq[prompt.len()..].to_vec()
}

/// Greedy `generate` on a batch of prompts of different lengths equals generating each prompt
/// alone, and equals a cache-free argmax loop.
#[test]
fn batched_generate_equals_single_prompts() {
    for (name, config) in padding_configs() {
        let m = random_model(&config);
        let cfg = GenerationConfig {
            max_new_tokens: 6,
            pad_token_id: 47,
            ..Default::default()
        };
        let prompts = prompts();
        let mut streamed: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
        let batch = generate(&m, None, &prompts, &cfg, |row, t| streamed[row].push(t)).unwrap();
        assert_eq!(batch.len(), prompts.len());
        for (r, p) in prompts.iter().enumerate() {
            let alone = generate(&m, None, std::slice::from_ref(p), &cfg, |_, _| {})
                .unwrap()
                .remove(0);
            assert_eq!(batch[r].tokens.len(), 6, "{name} row {r}");
            assert_eq!(
                batch[r].tokens, alone.tokens,
                "{name} row {r}: batch vs alone"
            );
            assert_eq!(
                batch[r].tokens, streamed[r],
                "{name} row {r}: streamed tokens"
            );
            assert_eq!(
                alone.tokens,
                greedy_reference(&m, p, 6),
                "{name} row {r}: vs cache-free greedy"
            );
        }
    }
}

/// RoPE depends only on position differences: shifting every position of a sequence by a
/// constant leaves the logits unchanged; a non-uniform change does not.
#[test]
fn explicit_position_ids_are_honoured() {
    let mut mistral = ModelConfig::tiny(40, 32, 2, 4, 2);
    mistral.model_type = "mistral".into();
    mistral.sliding_window = Some(3);
    let mut llama3 = ModelConfig::tiny(40, 32, 2, 4, 1);
    llama3.rope_scaling = Some(llama3_scaling());
    for config in [ModelConfig::tiny(40, 32, 2, 4, 2), mistral, llama3] {
        let m = random_model(&config);
        let row: Vec<u32> = vec![4, 22, 9, 31, 0, 15];
        let n = row.len();
        let default = forward_row(&m, &row);
        let explicit = with_positions(&m, &row, (0..n).collect());
        assert!(max_diff_rows(&default, &explicit) <= TOL);
        for k in [1, 7, 50] {
            let shifted = with_positions(&m, &row, (k..k + n).collect());
            let d = max_diff_rows(&default, &shifted);
            assert!(
                d <= TOL,
                "{}: shift by {k} changed logits by {d}",
                config.model_type
            );
        }
        let spread: Vec<usize> = (0..n).map(|i| 3 * i).collect();
        let d = max_diff_rows(&default[1..], &with_positions(&m, &row, spread)[1..]);
        assert!(
            d > 1e-3,
            "{}: non-uniform positions left the logits unchanged ({d})",
            config.model_type
        );
        // Position ids with the cache: the second chunk at explicit positions equals the default.
        let mut cache = KvCache::new(config.num_hidden_layers);
        m.forward_cached(
            ids(&[row[..2].to_vec()]),
            &ForwardOptions::default(),
            &mut cache,
        )
        .unwrap();
        let options = ForwardOptions {
            attention_mask: None,
            position_ids: Some(vec![(2..n).collect()]),
        };
        let rest = host(
            m.forward_cached(ids(&[row[2..].to_vec()]), &options, &mut cache)
                .unwrap(),
        )
        .remove(0);
        assert!(max_diff_rows(&default[2..], &rest) <= TOL);
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7},
    "unk_token": "<unk>"
  }
}"#;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_json_str(TOKENIZER_JSON, "<test tokenizer>").unwrap()
}

fn pretrained(config: &ModelConfig) -> Pretrained {
    Pretrained {
        model: random_model(config),
        tokenizer: tokenizer(),
        chat_template: None,
        special: SpecialTokens {
            bos: Some(1),
            eos: vec![2],
            pad: None,
        },
        source: PathBuf::from("<memory>"),
    }
}

fn checkpoint_configs() -> Vec<ModelConfig> {
    let mut tied = ModelConfig::tiny(24, 16, 2, 4, 2);
    tied.tie_word_embeddings = true;
    tied.bos_token_id = Some(1);
    tied.eos_token_ids = vec![2];
    tied.rope_scaling = Some(llama3_scaling());
    let mut mistral = ModelConfig::tiny(24, 16, 2, 2, 1);
    mistral.model_type = "mistral".into();
    mistral.sliding_window = Some(4);
    mistral.head_dim = 6;
    mistral.bos_token_id = Some(1);
    mistral.eos_token_ids = vec![2];
    mistral.rope_theta = 500000.0;
    mistral.max_position_embeddings = 64;
    vec![tied, mistral]
}

fn assert_same_tensors(a: &LlamaForCausalLM, b: &LlamaForCausalLM, what: &str) {
    let (ta, tb) = (hf_tensors(a), hf_tensors(b));
    assert_eq!(ta.len(), tb.len(), "{what}");
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb, "{what}");
        assert_eq!(xa.shape, xb.shape, "{what}: {na}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&xa.data) == bits(&xb.data),
            "{what}: {na} is not bit-identical"
        );
    }
}

fn config_without_raw(c: &ModelConfig) -> ModelConfig {
    let mut c = c.clone();
    c.raw = serde_json::Map::new();
    c
}

fn expected_names(c: &ModelConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for i in 0..c.num_hidden_layers {
        for t in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            names.push(format!("model.layers.{i}.{t}.weight"));
        }
    }
    if !c.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    names.sort();
    names
}

/// Safetensors names and PyTorch shapes of a saved model.
fn saved_shapes(path: &Path) -> HashMap<String, (Dtype, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec())))
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_identical_in_f32() {
    for config in checkpoint_configs() {
        let p = pretrained(&config);
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path(), FloatPrecision::F32).unwrap();
        let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
        assert_same_tensors(&p.model, &loaded.model, &config.model_type);
        assert_eq!(loaded.special, p.special);
        assert_eq!(
            loaded.tokenizer.encode("the cat sat", false).unwrap(),
            vec![3, 4, 5]
        );
        // Same weights, same config: same logits.
        let row = vec![vec![1, 5, 7, 2, 9, 11]];
        assert_eq!(
            forward_plain(&p.model, &row),
            forward_plain(&loaded.model, &row)
        );

        // Keys are exactly the HF names, with PyTorch [out, in] shapes, and no lm_head when tied.
        let shapes = saved_shapes(&dir.path().join("model.safetensors"));
        let mut names: Vec<String> = shapes.keys().cloned().collect();
        names.sort();
        assert_eq!(names, expected_names(&config));
        let (h, hd, inter) = (
            config.hidden_size,
            config.head_dim,
            config.intermediate_size,
        );
        let (q, kv) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let shape = |n: &str| {
            let (dtype, shape) = &shapes[n];
            assert_eq!(*dtype, Dtype::F32, "{n}");
            shape.clone()
        };
        assert_eq!(shape("model.embed_tokens.weight"), [config.vocab_size, h]);
        assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), [q, h]);
        assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), [kv, h]);
        assert_eq!(shape("model.layers.0.self_attn.v_proj.weight"), [kv, h]);
        assert_eq!(shape("model.layers.0.self_attn.o_proj.weight"), [h, q]);
        assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), [inter, h]);
        assert_eq!(shape("model.layers.1.mlp.down_proj.weight"), [h, inter]);
        assert_eq!(shape("model.layers.1.input_layernorm.weight"), [h]);
        if !config.tie_word_embeddings {
            assert_eq!(shape("lm_head.weight"), [config.vocab_size, h]);
        }
        // The saved q_proj is the transpose of burn's [in, out] weight.
        let burn_w: Vec<f32> = p.model.model.layers[0]
            .self_attn
            .q_proj
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let saved: Vec<f32> = st
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for o in 0..q {
            for i in 0..h {
                assert_eq!(
                    saved[o * h + i].to_bits(),
                    burn_w[i * q + o].to_bits(),
                    "q_proj[{o}, {i}]"
                );
            }
        }

        // config.json parses back to the same config.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(json["torch_dtype"], "float32");
        assert_eq!(json["architectures"][0], config.architecture());
        let back = ModelConfig::from_file(dir.path().join("config.json")).unwrap();
        assert_eq!(config_without_raw(&back), config_without_raw(&config));
        assert_eq!(
            config_without_raw(loaded.model.config()),
            config_without_raw(&config)
        );
    }
}

#[test]
fn bf16_save_rounds_each_value_to_bf16() {
    let config = &checkpoint_configs()[1];
    let p = pretrained(config);
    let dir = tempfile::tempdir().unwrap();
    p.save(dir.path(), FloatPrecision::BF16).unwrap();
    let shapes = saved_shapes(&dir.path().join("model.safetensors"));
    assert!(shapes.values().all(|(d, _)| *d == Dtype::BF16));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["torch_dtype"], "bfloat16");
    let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
    let mut changed = 0usize;
    for ((name, orig), (name2, back)) in hf_tensors(&p.model).iter().zip(&hf_tensors(&loaded.model))
    {
        assert_eq!(name, name2);
        assert_eq!(orig.shape, back.shape);
        for (x, y) in orig.data.iter().zip(&back.data) {
            let rounded = half::bf16::from_f32(*x).to_f32();
            assert_eq!(
                rounded.to_bits(),
                y.to_bits(),
                "{name}: {x} saved as {y}, bf16 is {rounded}"
            );
            changed += usize::from(rounded != *x);
        }
    }
    assert!(
        changed > 0,
        "random f32 weights should not all be exact bf16 values"
    );
}

/// Split `model.safetensors` into two shards plus `model.safetensors.index.json`.
fn shard(dir: &Path) {
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (k, file) in files.iter().enumerate() {
        let mine: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(_, n)| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for (n, _) in &mine {
            weight_map.insert(n.clone(), serde_json::json!(file));
        }
        safetensors::serialize_to_file(mine, None, &dir.join(file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(single).unwrap();
}

#[test]
fn sharded_checkpoint_loads_identically() {
    for config in checkpoint_configs() {
        let p = pretrained(&config);
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path(), FloatPrecision::F32).unwrap();
        shard(dir.path());
        assert!(!dir.path().join("model.safetensors").exists());

        let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
        assert_same_tensors(&p.model, &loaded.model, "Pretrained::load");

        let mut source = SafetensorsSource::open_dir(dir.path()).unwrap();
        assert_eq!(
            source.origin(),
            dir.path().join("model.safetensors.index.json")
        );
        let mut remaining = source.remaining();
        remaining.sort();
        assert_eq!(remaining, expected_names(&config));
        let model = load_weights(&config, &mut source, &device(), FloatPrecision::F32).unwrap();
        assert!(source.remaining().is_empty());
        assert_same_tensors(&p.model, &model, "open_dir + load_weights");
    }
}
