//! The chunked (vocabulary-tiled) log-prob path against the dense one: values and gradients
//! with respect to the hidden states and the LM-head weight.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use temper_objectives::{
    ChunkConfig, ObjectiveError, TokenLogps, chunked_token_logps, target_logps, token_logps,
};

type TestResult = Result<(), ObjectiveError>;

fn floats(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn vec_f32(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

struct Case {
    hidden: Vec<f32>,
    weight: Vec<f32>,
    labels: Vec<i64>,
    /// Per-token coefficients of the scalar test loss Σ c · logp.
    coef: Vec<f32>,
    dims: [usize; 4], // b, t, h, v
}

fn case(seed: u64, [b, t, h, v]: [usize; 4], ignore_every: usize) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels = (0..b * t)
        .map(|i| {
            if ignore_every > 0 && i % ignore_every == 1 {
                -100
            } else {
                rng.random_range(0..v as i64)
            }
        })
        .collect();
    Case {
        // Scale so logits spread over a few units (tests the max-shift of the online LSE).
        hidden: floats(&mut rng, b * t * h, 2.0),
        weight: floats(&mut rng, h * v, 1.5),
        labels,
        coef: floats(&mut rng, b * (t - 1), 1.0),
        dims: [b, t, h, v],
    }
}

struct Grads {
    logps: Vec<f32>,
    mask: Vec<f32>,
    hidden: Vec<f32>,
    weight: Vec<f32>,
}

/// Runs the dense or chunked path on `device` (autodiff), returns log-probs and both gradients
/// of `Σ coef · logps`.
fn run(c: &Case, device: &Device, chunk: Option<ChunkConfig>) -> Result<Grads, ObjectiveError> {
    let [b, t, h, v] = c.dims;
    let hidden =
        Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), device).require_grad();
    let weight =
        Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), device).require_grad();
    let labels = Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), device);
    let out: TokenLogps = match chunk {
        None => {
            let logits = hidden
                .clone()
                .reshape([b * t, h])
                .matmul(weight.clone())
                .reshape([b, t, v]);
            token_logps(logits, labels)?
        }
        Some(cfg) => chunked_token_logps(hidden.clone(), weight.clone(), labels, &cfg)?,
    };
    let coef = Tensor::<2>::from_data(TensorData::new(c.coef.clone(), [b, t - 1]), device);
    let loss = (out.logps.clone() * coef).sum();
    let grads = loss.backward();
    let gh = hidden
        .grad(&grads)
        .ok_or_else(|| ObjectiveError::Invalid("no hidden grad".into()))?;
    let gw = weight
        .grad(&grads)
        .ok_or_else(|| ObjectiveError::Invalid("no weight grad".into()))?;
    Ok(Grads {
        logps: vec_f32(out.logps),
        mask: vec_f32(out.mask),
        hidden: vec_f32(gh.reshape([b * t, h])),
        weight: vec_f32(gw),
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: chunked {g} vs dense {w}"
        );
    }
}

fn compare(c: &Case, device: &Device, cfg: ChunkConfig) -> TestResult {
    // Both backward strategies: logits recomputed per tile, and kept from the forward.
    for max_kept_logits_bytes in [0, usize::MAX] {
        compare_one(
            c,
            device,
            ChunkConfig {
                max_kept_logits_bytes,
                ..cfg
            },
        )?;
    }
    Ok(())
}

fn compare_one(c: &Case, device: &Device, cfg: ChunkConfig) -> TestResult {
    let dense = run(c, device, None)?;
    let chunked = run(c, device, Some(cfg))?;
    assert_eq!(chunked.mask, dense.mask);
    assert_close("logps", &chunked.logps, &dense.logps, 2e-5);
    assert_close("grad hidden", &chunked.hidden, &dense.hidden, 2e-5);
    assert_close("grad weight", &chunked.weight, &dense.weight, 2e-5);
    // Ignored targets contribute exactly nothing.
    for (lp, m) in chunked.logps.iter().zip(&chunked.mask) {
        if *m == 0.0 {
            assert_eq!(*lp, 0.0);
        }
    }
    Ok(())
}

#[test]
fn flex_devices_get_the_custom_backward() {
    use temper_objectives::bounded_backward;
    assert!(bounded_backward(&Device::flex()));
    assert!(bounded_backward(&Device::flex().autodiff()));
    assert!(bounded_backward(
        &Device::flex().autodiff().gradient_checkpointing()
    ));
}

#[test]
fn chunked_matches_dense_values_and_gradients_with_odd_tiles() -> TestResult {
    let device = Device::flex().autodiff();
    let c = case(1, [3, 9, 6, 37], 4);
    for cfg in [
        ChunkConfig {
            vocab_tile: 5,
            row_block: 7,
            ..ChunkConfig::default()
        },
        ChunkConfig {
            vocab_tile: 1,
            row_block: 1,
            ..ChunkConfig::default()
        },
        ChunkConfig {
            vocab_tile: 36,
            row_block: 100,
            ..ChunkConfig::default()
        },
        ChunkConfig {
            vocab_tile: 37,
            row_block: 3,
            ..ChunkConfig::default()
        },
        ChunkConfig {
            vocab_tile: 1000,
            row_block: 1000,
            ..ChunkConfig::default()
        },
    ] {
        compare(&c, &device, cfg)?;
    }
    Ok(())
}

#[test]
fn chunked_matches_dense_without_ignored_labels() -> TestResult {
    let device = Device::flex().autodiff();
    let c = case(2, [2, 6, 4, 19], 0);
    compare(&c, &device, ChunkConfig::with_vocab_tile(3))
}

#[test]
fn chunked_matches_dense_under_gradient_checkpointing() -> TestResult {
    let device = Device::flex().autodiff().gradient_checkpointing();
    let c = case(3, [2, 8, 5, 23], 3);
    compare(
        &c,
        &device,
        ChunkConfig {
            vocab_tile: 4,
            row_block: 5,
            ..ChunkConfig::default()
        },
    )
}

#[test]
fn large_logits_stay_finite_and_exact() -> TestResult {
    // Logits of several hundred: a naive exp would overflow, the online LSE must not.
    let device = Device::flex().autodiff();
    let mut c = case(4, [1, 5, 3, 11], 0);
    for x in &mut c.hidden {
        *x *= 40.0;
    }
    let chunked = run(&c, &device, Some(ChunkConfig::with_vocab_tile(2)))?;
    let dense = run(&c, &device, None)?;
    assert!(chunked.logps.iter().all(|x| x.is_finite()));
    assert_close("logps", &chunked.logps, &dense.logps, 1e-4);
    assert_close("grad hidden", &chunked.hidden, &dense.hidden, 1e-4);
    assert_close("grad weight", &chunked.weight, &dense.weight, 1e-4);
    Ok(())
}

#[test]
fn frozen_weight_and_tied_embedding_layouts() -> TestResult {
    let device = Device::flex().autodiff();
    let c = case(5, [2, 5, 4, 13], 3);
    let [b, t, h, v] = c.dims;
    let labels = || Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), &device);
    let coef = || Tensor::<2>::from_data(TensorData::new(c.coef.clone(), [b, t - 1]), &device);
    let hidden = || {
        Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), &device).require_grad()
    };
    // The weight stored as an embedding [vocab, hidden] and used transposed (tied LM head).
    let mut emb = vec![0.0f32; v * h];
    for i in 0..h {
        for j in 0..v {
            emb[j * h + i] = c.weight[i * v + j];
        }
    }
    let dense = run(&c, &device, None)?;

    // Tied: gradient reaches the [vocab, hidden] parameter through the transpose.
    let x = hidden();
    let e = Tensor::<2>::from_data(TensorData::new(emb.clone(), [v, h]), &device).require_grad();
    let out = chunked_token_logps(
        x.clone(),
        e.clone().transpose(),
        labels(),
        &ChunkConfig::with_vocab_tile(4),
    )?;
    let grads = (out.logps * coef()).sum().backward();
    let ge = e
        .grad(&grads)
        .ok_or_else(|| ObjectiveError::Invalid("no embedding grad".into()))?;
    let ge = vec_f32(ge.transpose());
    assert_close("tied grad", &ge, &dense.weight, 2e-5);

    // Frozen head: only the hidden states need a gradient.
    let x = hidden();
    let w = Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), &device);
    let out = chunked_token_logps(x.clone(), w, labels(), &ChunkConfig::with_vocab_tile(6))?;
    let grads = (out.logps * coef()).sum().backward();
    let gx = x
        .grad(&grads)
        .ok_or_else(|| ObjectiveError::Invalid("no hidden grad".into()))?;
    assert_close(
        "frozen-head grad",
        &vec_f32(gx.reshape([b * t, h])),
        &dense.hidden,
        2e-5,
    );
    Ok(())
}

#[test]
fn without_autodiff_values_match() -> TestResult {
    let device = Device::flex();
    let c = case(6, [2, 7, 5, 29], 2);
    let [b, t, h, v] = c.dims;
    let hidden = Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), &device);
    let weight = Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), &device);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), &device);
    let logits = hidden
        .clone()
        .reshape([b * t, h])
        .matmul(weight.clone())
        .reshape([b, t, v]);
    let dense = token_logps(logits, labels.clone())?;
    let chunked = chunked_token_logps(hidden, weight, labels, &ChunkConfig::with_vocab_tile(8))?;
    assert_close(
        "logps",
        &vec_f32(chunked.logps),
        &vec_f32(dense.logps),
        2e-5,
    );
    Ok(())
}

#[test]
fn bf16_inputs_accumulate_in_f32() -> TestResult {
    let device = Device::flex();
    let c = case(7, [1, 6, 8, 21], 0);
    let [b, t, h, v] = c.dims;
    let hidden = Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), &device);
    let weight = Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), &device);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), &device);
    let (hb, wb) = (hidden.cast(DType::BF16), weight.cast(DType::BF16));
    // Reference: the same bf16-rounded inputs, dense in f32.
    let logits = hb
        .clone()
        .cast(DType::F32)
        .reshape([b * t, h])
        .matmul(wb.clone().cast(DType::F32))
        .reshape([b, t, v]);
    let dense = token_logps(logits, labels.clone())?;
    let chunked = chunked_token_logps(hb, wb, labels, &ChunkConfig::with_vocab_tile(4))?;
    assert_eq!(chunked.logps.dtype(), DType::F32);
    assert_close(
        "logps",
        &vec_f32(chunked.logps),
        &vec_f32(dense.logps),
        1e-4,
    );
    Ok(())
}

#[test]
fn all_targets_ignored_gives_zeros_and_zero_gradients() -> TestResult {
    let device = Device::flex().autodiff();
    let mut c = case(8, [2, 4, 3, 7], 0);
    c.labels = vec![-100; 8];
    let chunked = run(&c, &device, Some(ChunkConfig::default()))?;
    let dense = run(&c, &device, None)?;
    assert!(chunked.logps.iter().all(|&x| x == 0.0));
    assert!(chunked.mask.iter().all(|&x| x == 0.0));
    assert_eq!(chunked.hidden, dense.hidden);
    assert_eq!(chunked.weight, dense.weight);
    assert!(
        chunked
            .hidden
            .iter()
            .chain(&chunked.weight)
            .all(|&x| x == 0.0)
    );
    Ok(())
}

#[test]
fn bad_inputs_are_errors() {
    let device = Device::flex();
    let hidden = Tensor::<3>::zeros([1, 3, 4], &device);
    let weight = Tensor::<2>::zeros([4, 5], &device);
    let labels = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [1, 3]), &device);
    let cfg = ChunkConfig::default();
    let err = chunked_token_logps(hidden.clone(), weight.clone(), labels(vec![0, 5, 1]), &cfg)
        .expect_err("target 5 is outside a vocabulary of 5");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = chunked_token_logps(
        hidden.clone(),
        weight.clone().transpose(),
        labels(vec![0, 1, 1]),
        &cfg,
    )
    .expect_err("[vocab, hidden] layout");
    assert!(err.to_string().contains("[hidden, vocab]"), "{err}");
    let err = chunked_token_logps(
        hidden.clone(),
        weight.clone(),
        labels(vec![0, 1, 1]),
        &ChunkConfig {
            vocab_tile: 0,
            row_block: 1,
            ..ChunkConfig::default()
        },
    )
    .expect_err("zero tile");
    assert!(err.to_string().contains("positive"), "{err}");
    let err = target_logps(
        Tensor::<2>::zeros([3, 4], &device),
        weight,
        Tensor::<1, Int>::zeros([2], &device),
        &cfg,
    )
    .expect_err("rows");
    assert!(err.to_string().contains("do not fit"), "{err}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn chunked_equals_dense_for_random_shapes_and_tiles(
            seed in 0u64..1000,
            b in 1usize..3,
            t in 2usize..7,
            h in 1usize..6,
            v in 1usize..20,
            tile in 1usize..9,
            rows in 1usize..9,
            ignore_every in 0usize..4,
        ) {
            let device = Device::flex().autodiff();
            let c = case(seed, [b, t, h, v], ignore_every);
            let out = compare(&c, &device, ChunkConfig { vocab_tile: tile, row_block: rows, ..ChunkConfig::default() });
            prop_assert!(out.is_ok(), "{out:?}");
        }
    }
}

#[test]
fn token_stats_match_the_dense_ones() -> TestResult {
    use temper_objectives::{TokenStats, chunked_token_logps_with_stats};
    for device in [Device::flex(), Device::flex().autodiff()] {
        let c = case(9, [3, 7, 5, 31], 3);
        let [b, t, h, v] = c.dims;
        let hidden = Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), &device);
        let weight = Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), &device);
        let (hidden, weight) = if device.is_autodiff() {
            (hidden.require_grad(), weight.require_grad())
        } else {
            (hidden, weight)
        };
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), &device);
        // The last position of row 1 and the last two of row 2 are padding.
        let mut attn = vec![1i64; b * t];
        attn[2 * t - 1] = 0;
        attn[3 * t - 2] = 0;
        attn[3 * t - 1] = 0;
        let attn = Tensor::<2, Int>::from_data(TensorData::new(attn, [b, t]), &device);
        let logits = hidden
            .clone()
            .reshape([b * t, h])
            .matmul(weight.clone())
            .reshape([b, t, v]);
        let want = TokenStats::from_logits(logits.clone(), labels.clone(), attn.clone())?;
        let want_lp = token_logps(logits, labels.clone())?;
        let (lp, got) = chunked_token_logps_with_stats(
            hidden,
            weight,
            labels,
            attn,
            &ChunkConfig {
                vocab_tile: 6,
                row_block: 4,
                ..ChunkConfig::default()
            },
        )?;
        assert_close("logps", &vec_f32(lp.logps), &vec_f32(want_lp.logps), 2e-5);
        assert_close(
            "entropy",
            &vec_f32(got.entropy),
            &vec_f32(want.entropy),
            2e-5,
        );
        assert_eq!(vec_f32(got.is_top1.clone()), vec_f32(want.is_top1.clone()));
        assert_eq!(vec_f32(got.mask), vec_f32(want.mask));
        assert_close(
            "mean logit",
            &vec_f32(got.mean_logit),
            &vec_f32(want.mean_logit),
            2e-5,
        );
        let n = |x: Tensor<1>| {
            x.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default()
        };
        assert_eq!(n(got.num_tokens), n(want.num_tokens));
        // The random case must exercise both outcomes of the top-1 test.
        let hits = vec_f32(got.is_top1);
        assert!(hits.contains(&1.0), "{hits:?}");
    }
    Ok(())
}

/// The stats path and a frozen (plain) weight under gradient checkpointing: the constants the
/// stats are lifted to, and the weight, must carry the hidden states' strategy.
#[test]
fn stats_and_frozen_weight_under_gradient_checkpointing() -> TestResult {
    let device = Device::flex().autodiff().gradient_checkpointing();
    let c = case(6, [2, 6, 4, 11], 3);
    let [b, t, h, v] = c.dims;
    let hidden = Tensor::<3>::from_data(TensorData::new(c.hidden.clone(), [b, t, h]), &device)
        .require_grad();
    let labels = || Tensor::<2, Int>::from_data(TensorData::new(c.labels.clone(), [b, t]), &device);
    let mask = Tensor::<2, Int>::ones([b, t], &device);
    for frozen in [false, true] {
        let weight = Tensor::<2>::from_data(TensorData::new(c.weight.clone(), [h, v]), &device);
        let weight = if frozen {
            weight.inner()
        } else {
            weight.require_grad()
        };
        let (out, stats) = temper_objectives::chunked_token_logps_with_stats(
            hidden.clone(),
            weight,
            labels(),
            mask.clone(),
            &ChunkConfig::with_vocab_tile(4),
        )?;
        let loss = out.logps.sum() + stats.entropy.sum() * 0.0;
        let grads = loss.backward();
        assert!(hidden.grad(&grads).is_some());
    }
    Ok(())
}

/// The custom node on `TEMPER_TEST_DEVICE` (default `cpu`; `wgpu` in a build with the `wgpu`
/// feature, as CI's lavapipe run): bounded backward memory there too, and chunked = dense in
/// values and gradients, plain and under gradient checkpointing.
#[test]
fn chunked_matches_dense_on_the_test_device() -> TestResult {
    let spec: temper_backend::DeviceSpec = std::env::var("TEMPER_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("TEMPER_TEST_DEVICE");
    let device = spec.with_autodiff(true).device().expect("test device");
    assert!(temper_objectives::bounded_backward(&device));
    let c = case(9, [2, 7, 8, 45], 3);
    let cfg = ChunkConfig {
        vocab_tile: 16,
        row_block: 5,
        ..ChunkConfig::default()
    };
    compare(&c, &device, cfg)?;
    compare(&c, &device.gradient_checkpointing(), cfg)
}
