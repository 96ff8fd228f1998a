//! The fused tiled log-softmax of the LM head against the dense computation in burn ops:
//! log-probs, log-sum-exp, entropy, argmax and both gradients, on odd tile and block sizes and
//! on a transposed (tied-embedding) weight.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::values;
use proptest::prelude::*;
use temper_backend::HalfType;
use temper_backend::kernels::{VocabTiling, target_logps_backward, target_logps_forward};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// `rows × hidden` hidden states against a `hidden × vocab` head, tiled as given.
fn check(
    rows: usize,
    hidden: usize,
    vocab: usize,
    tiling: VocabTiling,
    tied: bool,
    keep: bool,
    seed: u64,
) {
    let device = Device::flex();
    let h = Tensor::<2>::from_data(
        TensorData::new(values(rows * hidden, seed, 2.0), [rows, hidden]),
        &device,
    );
    // A tied head is the embedding `[vocab, hidden]` read transposed (a strided view).
    let w = if tied {
        Tensor::<2>::from_data(
            TensorData::new(values(vocab * hidden, seed + 1, 1.0), [vocab, hidden]),
            &device,
        )
        .transpose()
    } else {
        Tensor::<2>::from_data(
            TensorData::new(values(hidden * vocab, seed + 1, 1.0), [hidden, vocab]),
            &device,
        )
    };
    let ids: Vec<i64> = (0..rows)
        .map(|i| ((i * 7 + seed as usize) % vocab) as i64)
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [rows]), &device);
    let upstream = values(rows, seed + 2, 1.0);
    let g = Tensor::<1>::from_data(TensorData::new(upstream.clone(), [rows]), &device);

    let fused =
        target_logps_forward(&h, &w, &targets, tiling, true, keep).expect("Flex f32 applies");
    assert_eq!(fused.logits.is_some(), keep);
    let (dh, dw) = target_logps_backward(
        &h,
        &w,
        &targets,
        &fused.lse,
        &g,
        tiling,
        true,
        true,
        fused.logits.clone(),
    )
    .expect("Flex f32 applies");

    // Dense reference under autodiff: Σ g · log_softmax(h·W)[target].
    let ad = device.clone().autodiff();
    let (hr, wr) = (
        Tensor::<2>::from_data(h.to_data(), &ad).require_grad(),
        Tensor::<2>::from_data(w.to_data(), &ad).require_grad(),
    );
    let logits = hr.clone().matmul(wr.clone());
    let logp_all = log_softmax(logits.clone(), 1);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [rows, 1]), &ad);
    let logp = logp_all.clone().gather(1, idx).reshape([rows]);
    let gr = Tensor::<1>::from_data(TensorData::new(upstream, [rows]), &ad);
    let grads = (logp.clone() * gr).sum().backward();
    let (want_dh, want_dw) = (hr.grad(&grads).expect("dh"), wr.grad(&grads).expect("dw"));

    let lse = (logits.clone() - logp_all.clone())
        .slice([0..rows, 0..1])
        .reshape([rows]);
    assert_close("logps", &host(fused.logps), &host(logp.inner()), 1e-5);
    assert_close("lse", &host(fused.lse), &host(lse.inner()), 1e-5);
    let p = logp_all.clone().exp();
    let entropy = (p * logp_all.clone()).sum_dim(1).neg().reshape([rows]);
    let (got_entropy, got_argmax) = fused.stats.expect("stats asked for");
    assert_close("entropy", &host(got_entropy), &host(entropy.inner()), 1e-4);
    let want_argmax = logits.inner().argmax(1).reshape([rows]);
    assert_eq!(
        got_argmax
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("i64"),
        want_argmax
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("i64"),
        "argmax"
    );
    assert_close("d hidden", &host(dh.expect("asked")), &host(want_dh), 1e-4);
    let dw = dw.expect("asked");
    assert_eq!(dw.dims(), [hidden, vocab]);
    assert_close("d weight", &host(dw), &host(want_dw), 1e-4);

    // Only what is asked for.
    let (none_h, some_w) = target_logps_backward(
        &h,
        &w,
        &targets,
        &lse_of(&h, &w, &targets, tiling),
        &g,
        tiling,
        false,
        true,
        None,
    )
    .expect("applies");
    assert!(none_h.is_none() && some_w.is_some());
}

fn lse_of(h: &Tensor<2>, w: &Tensor<2>, t: &Tensor<1, Int>, tiling: VocabTiling) -> Tensor<1> {
    target_logps_forward(h, w, t, tiling, false, false)
        .expect("applies")
        .lse
}

#[test]
fn matches_dense_on_odd_tiles_blocks_and_a_tied_layout() {
    let tiling = |vocab_tile, row_block| VocabTiling::new(vocab_tile, row_block);
    for keep in [false, true] {
        check(7, 5, 13, tiling(4, 3), false, keep, 1);
        check(7, 5, 13, tiling(4, 3), true, keep, 2);
        check(1, 1, 1, tiling(1, 1), false, keep, 3);
        check(33, 17, 100, tiling(100, 64), true, keep, 4);
        check(20, 9, 50, tiling(7, 20), false, keep, 5);
    }
}

#[test]
fn does_not_apply_under_autodiff_or_to_other_dtypes() {
    let ad = Device::flex().autodiff();
    let h = Tensor::<2>::zeros([2, 3], &ad);
    let w = Tensor::<2>::zeros([3, 4], &ad);
    let t = Tensor::<1, Int>::zeros([2], &ad);
    let tiling = VocabTiling::new(2, 2);
    assert!(target_logps_forward(&h, &w, &t, tiling, false, false).is_none());
    let flex = Device::flex();
    let h64 = Tensor::<2>::zeros([2, 3], (&flex, burn::tensor::DType::F64));
    let w = Tensor::<2>::zeros([3, 4], &flex);
    let t = Tensor::<1, Int>::zeros([2], &flex);
    assert!(target_logps_forward(&h64, &w, &t, tiling, false, false).is_none());
    // Mismatched shapes are refused, not indexed out of bounds.
    let w_bad = Tensor::<2>::zeros([4, 4], &flex);
    let h = Tensor::<2>::zeros([2, 3], &flex);
    assert!(target_logps_forward(&h, &w_bad, &t, tiling, false, true).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn matches_dense_on_random_shapes(
        rows in 1usize..24,
        hidden in 1usize..20,
        vocab in 1usize..70,
        vocab_tile in 1usize..32,
        row_block in 1usize..30,
        tied in any::<bool>(),
        keep in any::<bool>(),
        seed in 0u64..1000,
    ) {
        check(rows, hidden, vocab, VocabTiling::new(vocab_tile, row_block), tied, keep, seed);
    }
}

/// Rounds `x` to `half` and back (round to nearest even).
fn round_to(x: f32, half: HalfType) -> f64 {
    f64::from(half.round(x))
}

/// Relative Frobenius distance `‖got − want‖ / ‖want‖`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// The LM head's products under a half type (autocast's `VocabTiling::half`) against an f64
/// computation over operands rounded to that type — the logit gradient rounded too, as the
/// kernel's backward rounds it. The same f64 computation without the roundings lies far
/// outside the tolerance, so the test sees whether rounding happened.
#[test]
fn half_products_round_their_operands_and_accumulate_in_f32() {
    let (rows, hidden, vocab) = (19, 300, 203);
    let device = Device::flex();
    let hv = values(rows * hidden, 11, 2.0);
    let wv = values(vocab * hidden, 12, 1.0); // the tied layout: `[vocab, hidden]`
    let ids: Vec<i64> = (0..rows).map(|i| ((i * 37) % vocab) as i64).collect();
    let upstream = values(rows, 13, 1.0);
    let h = Tensor::<2>::from_data(TensorData::new(hv.clone(), [rows, hidden]), &device);
    let w =
        Tensor::<2>::from_data(TensorData::new(wv.clone(), [vocab, hidden]), &device).transpose();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [rows]), &device);
    let g = Tensor::<1>::from_data(TensorData::new(upstream.clone(), [rows]), &device);

    for half in [HalfType::F16, HalfType::Bf16] {
        let tiling = VocabTiling {
            half: Some(half),
            ..VocabTiling::new(64, 8)
        };
        let got = target_logps_forward(&h, &w, &targets, tiling, false, false).expect("applies");
        let (dh, dw) =
            target_logps_backward(&h, &w, &targets, &got.lse, &g, tiling, true, true, None)
                .expect("applies");
        let (got_logps, dh, dw) = (
            host(got.logps),
            host(dh.expect("dh")),
            host(dw.expect("dw")),
        );

        for rounded in [true, false] {
            let r = |x: f32| {
                if rounded {
                    round_to(x, half)
                } else {
                    f64::from(x)
                }
            };
            let (hr, wr): (Vec<f64>, Vec<f64>) = (
                hv.iter().map(|&x| r(x)).collect(),
                wv.iter().map(|&x| r(x)).collect(),
            );
            let mut logps = vec![0.0f64; rows];
            let mut want_dh = vec![0.0f64; rows * hidden];
            let mut want_dw = vec![0.0f64; hidden * vocab];
            for i in 0..rows {
                let z: Vec<f64> = (0..vocab)
                    .map(|v| {
                        (0..hidden)
                            .map(|k| hr[i * hidden + k] * wr[v * hidden + k])
                            .sum()
                    })
                    .collect();
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                logps[i] = z[ids[i] as usize] - lse;
                for v in 0..vocab {
                    let onehot = if v as i64 == ids[i] { 1.0 } else { 0.0 };
                    let dz = f64::from(upstream[i]) * (onehot - (z[v] - lse).exp());
                    let dz = r(dz as f32);
                    for k in 0..hidden {
                        want_dh[i * hidden + k] += dz * wr[v * hidden + k];
                        want_dw[k * vocab + v] += dz * hr[i * hidden + k];
                    }
                }
            }
            let errs = [
                rel_err(&got_logps, &logps),
                rel_err(&dh, &want_dh),
                rel_err(&dw, &want_dw),
            ];
            // Measured: bf16 ≤ 1e-7 rounded, ≥ 1e-3 unrounded; f16 forward 2e-7, gradients
            // 7.5e-5 rounded (f16's finer spacing lets the f32-vs-f64 difference in `z` move
            // some roundings of ∂z), ≥ 1.3e-4 forward and 9e-4 gradients unrounded.
            let (fwd_tol, grad_tol, unrounded) = match half {
                HalfType::Bf16 => (2e-6, 2e-6, [5e-4, 5e-3, 5e-3]),
                HalfType::F16 => (2e-6, 2e-4, [1e-4, 6e-4, 6e-4]),
            };
            if rounded {
                assert!(errs[0] < fwd_tol, "{half:?} log-probs: {errs:?}");
                assert!(
                    errs[1] < grad_tol && errs[2] < grad_tol,
                    "{half:?} grads: {errs:?}"
                );
            } else {
                // What an f32 product (no rounding) would have matched instead.
                let far = errs.iter().zip(unrounded).all(|(e, t)| *e > t);
                assert!(far, "{half:?} unrounded: {errs:?}");
            }
        }
    }
}

/// A bf16-stored head is read in place: the products are bf16 without autocast, and the
/// gradients come back in each input's dtype.
#[test]
fn a_bf16_weight_is_read_in_place_and_its_gradient_comes_back_in_bf16() {
    let (rows, hidden, vocab) = (5, 40, 30);
    let device = Device::flex();
    let h = Tensor::<2>::from_data(
        TensorData::new(values(rows * hidden, 21, 1.0), [rows, hidden]),
        &device,
    );
    let w32 = Tensor::<2>::from_data(
        TensorData::new(values(hidden * vocab, 22, 1.0), [hidden, vocab]),
        &device,
    );
    let w16 = w32.clone().cast(burn::tensor::FloatDType::BF16);
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 7, 29, 11], [rows]), &device);
    let g = Tensor::<1>::ones([rows], &device);
    let tiling = VocabTiling::new(8, 2);
    let stored = target_logps_forward(&h, &w16, &targets, tiling, false, false).expect("applies");
    let autocast = VocabTiling {
        half: Some(HalfType::Bf16),
        ..tiling
    };
    let cast = target_logps_forward(&h, &w32, &targets, autocast, false, false).expect("applies");
    assert_eq!(
        host(stored.logps.clone()),
        host(cast.logps),
        "bf16 storage = autocast bf16"
    );
    let (dh, dw) = target_logps_backward(
        &h,
        &w16,
        &targets,
        &stored.lse,
        &g,
        tiling,
        true,
        true,
        None,
    )
    .expect("applies");
    let (dh, dw) = (dh.expect("dh"), dw.expect("dw"));
    assert_eq!(dh.dtype(), burn::tensor::DType::F32);
    assert_eq!(dw.dtype(), burn::tensor::DType::BF16);
    assert_eq!(dw.dims(), [hidden, vocab]);
}
