//! Fast behaviour tests on tiny random models built in the test: KV-cache consistency,
//! padding, explicit positions and generation (checkpoint save/load: `tiny_checkpoint.rs`);
//! a few f16-mixed training steps on the test device.
#![allow(clippy::unwrap_used)]

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};
use proptest::prelude::*;
use temper_backend::TrainPrecision;
use temper_llm_arch::{
    ForwardOptions, GenerationConfig, KvCache, LlamaForCausalLM, ModelConfig, generate,
};

use common::{forward, forward_plain, host, ids, llama3_scaling, random_model};

const TOL: f32 = 1e-4;

/// The same weights under another config (window, RoPE scaling).
fn with_config(m: &LlamaForCausalLM, config: ModelConfig) -> LlamaForCausalLM {
    LlamaForCausalLM::from_parts(config, m.model.clone(), m.lm_head.clone())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits `[seq][vocab]` of one unpadded row.
fn forward_row(m: &LlamaForCausalLM, row: &[u32]) -> Vec<Vec<f32>> {
    forward_plain(m, &[row.to_vec()]).remove(0)
}

fn with_positions(m: &LlamaForCausalLM, row: &[u32], positions: Vec<usize>) -> Vec<Vec<f32>> {
    let options = ForwardOptions {
        attention_mask: None,
        position_ids: Some(vec![positions]),
        ..Default::default()
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
                ..Default::default()
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
        ..Default::default()
    };
    let a = forward(&m, std::slice::from_ref(&row), &masked).remove(0);
    let b = forward_plain(&m, &[row]).remove(0);
    assert!(max_diff(&a[4], &b[4]) > 1e-3);
}

/// A custom mask packs sequences that share a prefix into one row: a context followed by two
/// continuations, each continuation seeing the context and itself only, with positions
/// restarting after the context, gives each continuation the logits of its own unpacked row.
#[test]
fn a_custom_mask_packs_continuations_of_one_context() {
    let m = random_model(&ModelConfig::tiny(48, 32, 2, 4, 2));
    let (ctx, a, b) = (vec![3, 14, 15, 9], vec![26, 5], vec![35, 8, 9]);
    let row: Vec<u32> = [ctx.clone(), a.clone(), b.clone()].concat();
    let n = row.len();
    // 0: context, 1: first continuation, 2: second.
    let segment: Vec<usize> = [vec![0; 4], vec![1; 2], vec![2; 3]].concat();
    let mask: Vec<bool> = (0..n)
        .flat_map(|q| (0..n).map(move |k| (q, k)))
        .map(|(q, k)| !(k <= q && (segment[k] == 0 || segment[k] == segment[q])))
        .collect();
    let positions = [vec![0, 1, 2, 3], vec![4, 5], vec![4, 5, 6]].concat();
    let options = ForwardOptions {
        position_ids: Some(vec![positions]),
        custom_mask: Some(Tensor::from_data(
            TensorData::new(mask, [1, 1, n, n]),
            &m.device(),
        )),
        ..Default::default()
    };
    let packed = forward(&m, std::slice::from_ref(&row), &options).remove(0);
    let alone_a = forward_row(&m, &[ctx.clone(), a].concat());
    let alone_b = forward_row(&m, &[ctx, b].concat());
    assert!(max_diff_rows(&packed[..6], &alone_a) < TOL);
    assert!(max_diff_rows(&packed[6..], &alone_b[4..]) < TOL);
    // Without the mask the second continuation would see the first: the mask is not ignored.
    let plain = forward_row(&m, &row);
    assert!(max_diff(&plain[8], &alone_b[6]) > 1e-3);
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
            ..Default::default()
        };
        let rest = host(
            m.forward_cached(ids(&[row[2..].to_vec()]), &options, &mut cache)
                .unwrap(),
        )
        .remove(0);
        assert!(max_diff_rows(&default[2..], &rest) <= TOL);
    }
}

/// Plain SGD on every float parameter, `w ← w − lr·∂w/scale`, recording each gradient's dtype
/// and the squared gradient norm.
struct Sgd<'a> {
    grads: &'a burn::tensor::Gradients,
    lr: f64,
    loss_scale: f64,
    dtypes: Vec<DType>,
    sq_norm: f64,
}

impl ModuleMapper for Sgd<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|w| {
            let g = w
                .grad(self.grads)
                .expect("every weight of the tiny model trains");
            self.dtypes.push(g.dtype());
            let g = g.cast(DType::F32) / self.loss_scale;
            self.sq_norm += (g.clone() * g.clone()).sum().into_scalar::<f64>();
            Tensor::from_inner(w.inner() - g * self.lr).require_grad()
        })
    }
}

/// A few SGD steps of a tiny tied model in `f16-mixed` on `TEMPER_TEST_DEVICE` (default `cpu`;
/// `wgpu` in CI's lavapipe run, where the products run as f16 matmuls): the f32 master weights
/// get f32 gradients through the f16 products, and every step's loss differs from the f32
/// run's, by less than an f16 rounding (2⁻¹⁰ relative). A static loss scale stands in for the
/// trainer's `GradScaler`.
#[test]
fn f16_mixed_training_steps_on_the_test_device() {
    let spec: temper_backend::DeviceSpec = std::env::var("TEMPER_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("TEMPER_TEST_DEVICE");
    let device = spec.with_autodiff(true).device().expect("test device");
    if !device.supports_dtype(DType::F16) {
        return;
    }
    const LOSS_SCALE: f64 = 1024.0;
    let mut config = ModelConfig::tiny(64, 64, 2, 4, 2);
    config.tie_word_embeddings = true;
    let initial = LlamaForCausalLM::init(&config, &device);
    let (b, s) = (2, 12);
    let tokens: Vec<i64> = (0..b * (s + 1))
        .map(|i| ((i * 7 + i / 5) % 64) as i64)
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [b, s + 1]), &device);
    let (inputs, targets) = (
        tokens.clone().slice([0..b, 0..s]),
        tokens.slice([0..b, 1..s + 1]),
    );
    let run = |precision: TrainPrecision| {
        let mut model = initial.clone();
        let mut losses = Vec::new();
        for _ in 0..3 {
            let _autocast = precision.autocast();
            let logits = model
                .forward(inputs.clone(), &ForwardOptions::default())
                .unwrap();
            assert_eq!(logits.dtype(), DType::F32, "{precision}: f32 logits");
            let logp = log_softmax(logits, 2).gather(2, targets.clone().unsqueeze_dim::<3>(2));
            let loss = -logp.mean();
            losses.push(loss.clone().into_scalar::<f64>());
            let grads = (loss * LOSS_SCALE).backward();
            let mut sgd = Sgd {
                grads: &grads,
                lr: 0.2,
                loss_scale: LOSS_SCALE,
                dtypes: Vec::new(),
                sq_norm: 0.0,
            };
            model = model.map(&mut sgd);
            assert!(
                sgd.dtypes.iter().all(|d| *d == DType::F32),
                "{precision}: gradients {:?}",
                sgd.dtypes
            );
            assert!(
                sgd.sq_norm.is_finite() && sgd.sq_norm > 0.0,
                "{precision}: {}",
                sgd.sq_norm
            );
        }
        losses
    };
    let (reference, mixed) = (run(TrainPrecision::F32), run(TrainPrecision::F16Mixed));
    assert!(
        reference[2] < reference[0],
        "the steps train: {reference:?}"
    );
    assert_ne!(mixed, reference, "the f16-mixed products were not rounded");
    for (step, (r, m)) in reference.iter().zip(&mixed).enumerate() {
        assert!(
            m.is_finite() && (m - r).abs() <= 1e-3 * r.abs(),
            "step {step}: f16-mixed loss {m}, f32 {r}"
        );
    }
}
