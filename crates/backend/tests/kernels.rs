//! Every fused op against the tensor-op reference on Flex, forward and gradients.
//!
//! The fused side runs on `TEMPER_TEST_DEVICE` (default `cpu`; `wgpu` in a build with the
//! `wgpu` feature, e.g. on Mesa lavapipe) and is called through the backend extension directly,
//! so it is exercised whatever [`kernels::kernel_path`] would choose:
//! * on `cpu`: Flex's fused CPU kernels, forward and backward (the custom autodiff nodes call
//!   Flex's fused backward entries; hand-derived gradients, checked here against burn's
//!   autodiff of the reference);
//! * on `wgpu`: the `#[cube]` kernels, forward and backward.

mod common;

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{host, spec, tensor, test_device, values};
use proptest::prelude::*;
use temper_backend::kernels::{self, FusedOps, KernelPath, reference};

fn flex(autodiff: bool) -> Device {
    let d = Device::flex();
    if autodiff { d.autodiff() } else { d }
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0.0f32), |(bi, be), (i, e)| {
            if e > be || e.is_nan() {
                (i, e)
            } else {
                (bi, be)
            }
        });
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err} at {i} (got {}, want {}), tolerance {} (max |want| {scale})",
        got[i],
        want[i],
        tol * scale
    );
}

const TOL: f32 = 2e-5;

fn rms_norm_fused(x: Tensor<2>, w: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        eps,
    ))
}

fn check_rms_norm(rows: usize, d: usize, seed: u64) {
    let (xs, ws, gs) = (
        values(rows * d, seed, 3.0),
        values(d, seed + 1, 1.5),
        values(rows * d, seed + 2, 1.0),
    );
    let eps = 1e-5;
    // Forward, no autodiff.
    let dev = test_device(false);
    let got = host(rms_norm_fused(
        tensor(&xs, [rows, d], &dev),
        tensor(&ws, [d], &dev),
        eps,
    ));
    let want = host(reference::rms_norm(
        tensor(&xs, [rows, d], &flex(false)),
        tensor(&ws, [d], &flex(false)),
        eps,
    ));
    assert_close(&format!("rms_norm [{rows}, {d}]"), &got, &want, TOL);
    // Gradients of sum(out · g) wrt x and weight.
    let grads = |fused: bool| {
        let dev = if fused { test_device(true) } else { flex(true) };
        let x = tensor(&xs, [rows, d], &dev).require_grad();
        let w = tensor(&ws, [d], &dev).require_grad();
        let out = if fused {
            rms_norm_fused(x.clone(), w.clone(), eps)
        } else {
            reference::rms_norm(x.clone(), w.clone(), eps)
        };
        let g = (out * tensor(&gs, [rows, d], &dev)).sum().backward();
        (
            host(x.grad(&g).expect("x grad")),
            host(w.grad(&g).expect("w grad")),
        )
    };
    let ((gx, gw), (rx, rw)) = (grads(true), grads(false));
    assert_close(&format!("rms_norm dx [{rows}, {d}]"), &gx, &rx, TOL);
    assert_close(&format!("rms_norm dweight [{rows}, {d}]"), &gw, &rw, 1e-4);
}

#[test]
fn rms_norm_matches_reference() {
    for (i, (rows, d)) in [(1, 1), (3, 7), (5, 129), (17, 576), (2, 1000)]
        .into_iter()
        .enumerate()
    {
        check_rms_norm(rows, d, 10 + i as u64);
    }
}

fn check_rotary(b: usize, s: usize, h: usize, kvh: usize, hd: usize, seed: u64) {
    let half = hd / 2;
    let qs = values(b * s * h * hd, seed, 2.0);
    let ks = values(b * s * kvh * hd, seed + 1, 2.0);
    let angles = values(b * s * half, seed + 2, 3.0);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let gq = values(qs.len(), seed + 3, 1.0);
    let gk = values(ks.len(), seed + 4, 1.0);
    let run = |fused: bool, autodiff: bool| {
        let dev = if fused {
            test_device(autodiff)
        } else {
            flex(autodiff)
        };
        let mut q = tensor(&qs, [b, s, h, hd], &dev);
        let mut k = tensor(&ks, [b, s, kvh, hd], &dev);
        if autodiff {
            (q, k) = (q.require_grad(), k.require_grad());
        }
        let (c, sn) = (
            tensor(&cos, [b, s, half], &dev),
            tensor(&sin, [b, s, half], &dev),
        );
        let (rq, rk) = if fused {
            let (rq, rk) = <Dispatch as FusedOps>::rotary_qk(
                q.clone().into_dispatch(),
                k.clone().into_dispatch(),
                c.into_dispatch(),
                sn.into_dispatch(),
            );
            (
                Tensor::<4>::from_dispatch(rq),
                Tensor::<4>::from_dispatch(rk),
            )
        } else {
            (
                reference::rotary(q.clone(), c.clone(), sn.clone()),
                reference::rotary(k.clone(), c, sn),
            )
        };
        if !autodiff {
            return vec![host(rq), host(rk)];
        }
        let loss = (rq * tensor(&gq, [b, s, h, hd], &dev)).sum()
            + (rk * tensor(&gk, [b, s, kvh, hd], &dev)).sum();
        let g = loss.backward();
        vec![
            host(q.grad(&g).expect("q grad")),
            host(k.grad(&g).expect("k grad")),
        ]
    };
    let what = format!("rotary b{b} s{s} h{h}/{kvh} hd{hd}");
    for autodiff in [false, true] {
        let (got, want) = (run(true, autodiff), run(false, autodiff));
        assert_close(
            &format!("{what} q (autodiff {autodiff})"),
            &got[0],
            &want[0],
            TOL,
        );
        assert_close(
            &format!("{what} k (autodiff {autodiff})"),
            &got[1],
            &want[1],
            TOL,
        );
    }
}

#[test]
fn rotary_matches_reference() {
    check_rotary(1, 1, 1, 1, 2, 30);
    check_rotary(2, 5, 3, 1, 8, 31);
    check_rotary(3, 7, 9, 3, 64, 32);
}

fn check_swiglu(n: usize, seed: u64) {
    let (gs, us, os) = (
        values(n, seed, 8.0),
        values(n, seed + 1, 2.0),
        values(n, seed + 2, 1.0),
    );
    let run = |fused: bool, autodiff: bool| {
        let dev = if fused {
            test_device(autodiff)
        } else {
            flex(autodiff)
        };
        let mut g = tensor(&gs, [n], &dev);
        let mut u = tensor(&us, [n], &dev);
        if autodiff {
            (g, u) = (g.require_grad(), u.require_grad());
        }
        let out = if fused {
            Tensor::<1>::from_dispatch(<Dispatch as FusedOps>::swiglu(
                g.clone().into_dispatch(),
                u.clone().into_dispatch(),
            ))
        } else {
            reference::swiglu(g.clone(), u.clone())
        };
        if !autodiff {
            return vec![host(out)];
        }
        let grads = (out * tensor(&os, [n], &dev)).sum().backward();
        vec![
            host(g.grad(&grads).expect("gate grad")),
            host(u.grad(&grads).expect("up grad")),
        ]
    };
    let (got, want) = (run(true, false), run(false, false));
    assert_close(&format!("swiglu [{n}]"), &got[0], &want[0], TOL);
    let (got, want) = (run(true, true), run(false, true));
    assert_close(&format!("swiglu dgate [{n}]"), &got[0], &want[0], TOL);
    assert_close(&format!("swiglu dup [{n}]"), &got[1], &want[1], TOL);
}

#[test]
fn swiglu_matches_reference() {
    for (i, n) in [1, 7, 1000, 4097].into_iter().enumerate() {
        check_swiglu(n, 50 + i as u64);
    }
}

/// Attention sizes: batch, query rows, key rows (≥ query rows: a cache), heads, KV heads,
/// head dim.
#[derive(Debug, Clone, Copy)]
struct Attn {
    b: usize,
    s: usize,
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
}

fn check_attention(a: Attn, seed: u64) {
    let Attn { b, s, t, h, kvh, d } = a;
    let qs = values(b * s * h * d, seed, 1.5);
    let ks = values(b * t * kvh * d, seed + 1, 1.5);
    let vs = values(b * t * kvh * d, seed + 2, 1.0);
    let gs = values(b * s * h * d, seed + 3, 1.0);
    let run = |fused: bool, autodiff: bool| {
        let dev = if fused {
            test_device(autodiff)
        } else {
            flex(autodiff)
        };
        let mut q = tensor(&qs, [b, s, h, d], &dev);
        let mut k = tensor(&ks, [b, t, kvh, d], &dev);
        let mut v = tensor(&vs, [b, t, kvh, d], &dev);
        if autodiff {
            (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
        }
        let out = if fused {
            Tensor::<4>::from_dispatch(<Dispatch as FusedOps>::causal_attention(
                q.clone().into_dispatch(),
                k.clone().into_dispatch(),
                v.clone().into_dispatch(),
                None,
            ))
        } else {
            reference::causal_attention(q.clone(), k.clone(), v.clone())
        };
        if !autodiff {
            return vec![host(out)];
        }
        let grads = (out * tensor(&gs, [b, s, h, d], &dev)).sum().backward();
        vec![
            host(q.grad(&grads).expect("q grad")),
            host(k.grad(&grads).expect("k grad")),
            host(v.grad(&grads).expect("v grad")),
        ]
    };
    let what = format!("{a:?}");
    let (got, want) = (run(true, false), run(false, false));
    assert_close(&format!("attention {what}"), &got[0], &want[0], TOL);
    let (got, want) = (run(true, true), run(false, true));
    for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
        assert_close(&format!("attention {name} {what}"), &got[i], &want[i], 1e-4);
    }
}

#[test]
fn attention_matches_reference_on_edge_shapes() {
    let cases = [
        // One row, one key.
        Attn {
            b: 1,
            s: 1,
            t: 1,
            h: 1,
            kvh: 1,
            d: 8,
        },
        // GQA ratio 3, several query/key tiles, SmolLM2's head dim.
        Attn {
            b: 1,
            s: 70,
            t: 70,
            h: 3,
            kvh: 1,
            d: 64,
        },
        // Decode against a cache: one query row, 45 keys, ratio 4.
        Attn {
            b: 2,
            s: 1,
            t: 45,
            h: 4,
            kvh: 1,
            d: 16,
        },
        // Prefill after a cache (t > s), ratio 1.
        Attn {
            b: 2,
            s: 5,
            t: 38,
            h: 2,
            kvh: 2,
            d: 16,
        },
    ];
    for (i, a) in cases.into_iter().enumerate() {
        check_attention(a, 70 + i as u64);
    }
}

/// Fewer keys than queries, or KV heads that do not divide the query heads, are refused with
/// the shapes in the message (on a GPU they would otherwise index past the keys).
#[test]
fn attention_refuses_inconsistent_shapes() {
    let dev = test_device(false);
    for (q, k) in [([1, 4, 2, 8], [1, 3, 2, 8]), ([1, 4, 3, 8], [1, 4, 2, 8])] {
        let (qt, kt) = (Tensor::<4>::zeros(q, &dev), Tensor::<4>::zeros(k, &dev));
        let result = std::panic::catch_unwind(|| {
            Tensor::<4>::from_dispatch(<Dispatch as FusedOps>::causal_attention(
                qt.into_dispatch(),
                kt.clone().into_dispatch(),
                kt.into_dispatch(),
                None,
            ))
            .into_data()
        });
        let message = match result {
            Ok(_) => panic!("q {q:?} with k {k:?} was accepted"),
            Err(e) => e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default(),
        };
        assert!(message.contains("causal_attention: q"), "{message}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Odd sizes, GQA ratios 1, 3 and 4, caches of any length.
    #[test]
    fn attention_matches_reference_on_random_shapes(
        b in 1usize..3,
        s in 1usize..40,
        extra in 0usize..20,
        kvh in 1usize..3,
        rep in prop::sample::select(vec![1usize, 3, 4]),
        d in prop::sample::select(vec![8usize, 16]),
        seed in 0u64..1000,
    ) {
        check_attention(Attn { b, s, t: s + extra, h: kvh * rep, kvh, d }, seed);
    }

    #[test]
    fn rms_norm_matches_reference_on_random_shapes(rows in 1usize..40, d in 1usize..300, seed in 0u64..1000) {
        check_rms_norm(rows, d, seed);
    }
}

/// The public wrappers choose the fused path where the table in `kernels` says so, and the
/// choice does not change the values.
#[test]
fn wrappers_route_by_device_and_agree_with_reference() {
    let dev = test_device(false);
    assert_eq!(kernels::kernel_path(&dev, DType::F32), KernelPath::Fused);
    // Training takes the fused path too (custom backward nodes) on every backend.
    assert_eq!(
        kernels::kernel_path(&test_device(true), DType::F32),
        KernelPath::Fused
    );

    let xs = values(2 * 3 * 40, 90, 2.0);
    let ws = values(40, 91, 1.0);
    let got = host(kernels::rms_norm(
        tensor(&xs, [2, 3, 40], &dev),
        tensor(&ws, [40], &dev),
        1e-6,
    ));
    let want = host(reference::rms_norm(
        tensor(&xs, [2, 3, 40], &flex(false)),
        tensor(&ws, [40], &flex(false)),
        1e-6,
    ));
    assert_close("rms_norm wrapper [2, 3, 40]", &got, &want, TOL);

    let got = host(kernels::swiglu(
        tensor(&xs, [2, 3, 40], &dev),
        tensor(&xs, [2, 3, 40], &dev),
    ));
    let want = host(reference::swiglu(
        tensor(&xs, [2, 3, 40], &flex(false)),
        tensor(&xs, [2, 3, 40], &flex(false)),
    ));
    assert_close("swiglu wrapper [2, 3, 40]", &got, &want, TOL);
}

/// Half precision on devices that have it (lavapipe and NVIDIA do; Flex's fused kernels are
/// f32-only and route f16 to the reference): within f16 rounding of the f32 reference.
#[test]
fn half_precision_matches_f32_reference() {
    let dev = test_device(false);
    if matches!(spec().kind, temper_backend::BackendKind::Cpu) || !dev.supports_dtype(DType::F16) {
        return;
    }
    let (b, s, h, kvh, d) = (1, 33, 6, 2, 64);
    let qs = values(b * s * h * d, 100, 1.5);
    let ks = values(b * s * kvh * d, 101, 1.5);
    let vs = values(b * s * kvh * d, 102, 1.0);
    let half = |x: &[f32], shape: [usize; 4]| tensor(x, shape, &dev).cast(DType::F16);
    let got = host(kernels::causal_attention(
        half(&qs, [b, s, h, d]),
        half(&ks, [b, s, kvh, d]),
        half(&vs, [b, s, kvh, d]),
        None,
    ));
    let f = flex(false);
    let want = host(reference::causal_attention(
        tensor(&qs, [b, s, h, d], &f),
        tensor(&ks, [b, s, kvh, d], &f),
        tensor(&vs, [b, s, kvh, d], &f),
    ));
    assert_close("attention f16", &got, &want, 5e-3);

    let xs = values(7 * 576, 103, 3.0);
    let ws = values(576, 104, 1.0);
    let got = host(kernels::rms_norm(
        tensor(&xs, [7, 576], &dev).cast(DType::F16),
        tensor(&ws, [576], &dev).cast(DType::F16),
        1e-5,
    ));
    let want = host(reference::rms_norm(
        tensor(&xs, [7, 576], &f),
        tensor(&ws, [576], &f),
        1e-5,
    ));
    assert_close("rms_norm f16", &got, &want, 5e-3);
}

/// `MatmulOps::matmul_t` (Flex: gemm through strides) against burn's matmul of the transposed
/// tensors: values and both gradients, for every transpose combination, with a strided
/// (transposed-view) operand.
fn check_matmul(m: usize, k: usize, n: usize, seed: u64) {
    let ls = values(m * k, seed, 1.0);
    let rs = values(k * n, seed + 1, 1.0);
    let gs = values(m * n, seed + 2, 1.0);
    for tl in [false, true] {
        for tr in [false, true] {
            let run = |fused: bool| {
                let dev = flex(true);
                // Stored as the flags say, so that op(stored) is [m, k] / [k, n]; with the flag,
                // `lhs` is a transposed view (strided).
                let lhs = if tl {
                    tensor(&ls, [m, k], &dev).transpose().require_grad()
                } else {
                    tensor(&ls, [m, k], &dev).require_grad()
                };
                // Without the flag, a transposed view of `[n, k]` (strided).
                let rhs = if tr {
                    tensor(&rs, [n, k], &dev).require_grad()
                } else {
                    tensor(&rs, [n, k], &dev).transpose().require_grad()
                };
                let op = |t: Tensor<2>, flag: bool| if flag { t.transpose() } else { t };
                let out = if fused {
                    Tensor::<2>::from_dispatch(<Dispatch as kernels::MatmulOps>::matmul_t(
                        lhs.clone().into_dispatch(),
                        rhs.clone().into_dispatch(),
                        tl,
                        tr,
                        None,
                    ))
                } else {
                    op(lhs.clone(), tl).matmul(op(rhs.clone(), tr))
                };
                assert_eq!(out.dims(), [m, n]);
                let grads = (out.clone() * tensor(&gs, [m, n], &dev)).sum().backward();
                vec![
                    host(out),
                    host(lhs.grad(&grads).expect("lhs grad")),
                    host(rhs.grad(&grads).expect("rhs grad")),
                ]
            };
            let (got, want) = (run(true), run(false));
            for (i, what) in ["out", "d lhs", "d rhs"].iter().enumerate() {
                assert_close(
                    &format!("matmul_t {what} [{m}, {k}]·[{k}, {n}] tl {tl} tr {tr}"),
                    &got[i],
                    &want[i],
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn matmul_t_matches_burn_matmul() {
    check_matmul(1, 1, 1, 300);
    check_matmul(3, 7, 5, 301);
    // Large enough for the multi-threaded gemm path.
    check_matmul(200, 300, 150, 302);
}

#[test]
fn linear_wrapper_matches_burn_linear_with_bias_and_batch_dims() {
    let dev = flex(true);
    let (xs, ws, bs) = (
        values(2 * 5 * 9, 310, 1.0),
        values(9 * 4, 311, 1.0),
        values(4, 312, 1.0),
    );
    let run = |fused: bool| {
        let x = tensor(&xs, [2, 5, 9], &dev).require_grad();
        let w = tensor(&ws, [9, 4], &dev).require_grad();
        let b = tensor(&bs, [4], &dev).require_grad();
        let out = if fused {
            kernels::linear(x.clone(), w.clone(), Some(b.clone()))
        } else {
            burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()))
        };
        let grads = (out.clone() * out.clone()).sum().backward();
        [
            host(out),
            host(x.grad(&grads).expect("x")),
            host(w.grad(&grads).expect("w")),
            host(b.grad(&grads).expect("b")),
        ]
    };
    let (got, want) = (run(true), run(false));
    for (i, what) in ["out", "dx", "dw", "db"].iter().enumerate() {
        assert_close(&format!("linear {what}"), &got[i], &want[i], 1e-5);
    }
}

/// The LM head's log-softmax (`FusedOps::lm_head_logps`: Flex's kernel, the CubeCL tile loop)
/// against the reference tile loop on Flex: log-probs, log-sum-exp, statistics and, through the
/// custom node, the gradients wrt the hidden states and a plain or tied (transposed) weight,
/// with the logits recomputed or kept.
fn check_lm_head(rows: usize, hid: usize, vocab: usize, tiling: kernels::VocabTiling, seed: u64) {
    let (hs, ws, gs) = (
        values(rows * hid, seed, 2.0),
        values(hid * vocab, seed + 1, 1.0),
        values(rows, seed + 2, 1.0),
    );
    let ids: Vec<i64> = (0..rows).map(|i| ((i * 7 + 3) % vocab) as i64).collect();
    let run = |fused: bool, autodiff: bool, tied: bool, keep: bool| {
        let dev = if fused {
            test_device(autodiff)
        } else {
            flex(autodiff)
        };
        let mut h = tensor(&hs, [rows, hid], &dev);
        // A tied head is the embedding `[vocab, hidden]` read transposed (a strided view).
        let mut w = if tied {
            tensor(&ws, [vocab, hid], &dev)
        } else {
            tensor(&ws, [hid, vocab], &dev)
        };
        if autodiff {
            (h, w) = (h.require_grad(), w.require_grad());
        }
        let wt = if tied {
            w.clone().transpose()
        } else {
            w.clone()
        };
        let t =
            Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(ids.clone(), [rows]), &dev);
        let out = if fused {
            let (logps, lse, stats, _) = <Dispatch as FusedOps>::lm_head_logps(
                h.clone().into_dispatch(),
                wt.into_dispatch(),
                t.into_dispatch(),
                tiling,
                true,
                keep,
            );
            let (entropy, argmax) = stats.expect("stats asked for");
            (
                Tensor::<1>::from_dispatch(logps),
                Tensor::<1>::from_dispatch(lse),
                Tensor::<1>::from_dispatch(entropy),
                Tensor::<1, burn::tensor::Int>::from_dispatch(argmax),
            )
        } else {
            let out = reference::lm_head_logps(h.clone(), wt, t, tiling, true);
            let (entropy, argmax) = out.stats.expect("stats asked for");
            (out.logps, out.lse, entropy, argmax)
        };
        let argmax: Vec<f32> = host(out.3.float());
        let mut got = vec![host(out.0.clone()), host(out.1), host(out.2), argmax];
        if autodiff {
            let grads = (out.0 * tensor(&gs, [rows], &dev)).sum().backward();
            got.push(host(h.grad(&grads).expect("hidden grad")));
            got.push(host(w.grad(&grads).expect("weight grad")));
        }
        got
    };
    let what = format!("lm_head [{rows}, {hid}] · [{hid}, {vocab}] {tiling:?}");
    let names = ["logps", "lse", "entropy", "argmax", "d hidden", "d weight"];
    for autodiff in [false, true] {
        for tied in [false, true] {
            let want = run(false, autodiff, tied, false);
            for keep in [false, true] {
                let got = run(true, autodiff, tied, keep);
                for (i, name) in names.iter().enumerate().take(got.len()) {
                    let ctx =
                        format!("{what} {name} (autodiff {autodiff}, tied {tied}, keep {keep})");
                    assert_close(&ctx, &got[i], &want[i], 1e-4);
                }
            }
        }
    }
}

#[test]
fn lm_head_matches_reference() {
    let tiling = |vocab_tile, row_block| kernels::VocabTiling::new(vocab_tile, row_block);
    check_lm_head(1, 1, 1, tiling(1, 1), 400);
    check_lm_head(7, 5, 13, tiling(4, 3), 401);
    check_lm_head(33, 17, 100, tiling(100, 64), 402);
    check_lm_head(20, 9, 50, tiling(7, 20), 403);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn matmul_t_matches_burn_matmul_on_random_shapes(m in 1usize..40, k in 1usize..40, n in 1usize..40, seed in 0u64..1000) {
        check_matmul(m, k, n, seed);
    }
}
