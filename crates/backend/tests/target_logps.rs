//! The fused tiled log-softmax of the LM head against the dense computation in burn ops:
//! log-probs, log-sum-exp, entropy, argmax and both gradients, on odd tile and block sizes and
//! on a transposed (tied-embedding) weight.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::values;
use proptest::prelude::*;
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
    let tiling = |vocab_tile, row_block| VocabTiling {
        vocab_tile,
        row_block,
    };
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
    let tiling = VocabTiling {
        vocab_tile: 2,
        row_block: 2,
    };
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
        check(rows, hidden, vocab, VocabTiling { vocab_tile, row_block }, tied, keep, seed);
    }
}
