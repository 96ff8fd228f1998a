//! The products under `autocast(Some(HalfType::F16))` on `TEMPER_TEST_DEVICE` (default `cpu`;
//! `wgpu` in a build with the `wgpu` feature, as CI's lavapipe run): f16 operands, f32
//! accumulation, the output in the activation's dtype and each gradient in its input's dtype.
//! On Flex the half-precision gemm does the work (`kernels/flex/half_gemm`); on a GPU burn's
//! matmul on operands cast to f16, whose CubeCL kernels accumulate f16 outputs in f32
//! (cubek-matmul 0.3.1, `MatmulElems::from_globals`).
//!
//! The products are checked against an f64 reference over the same (f16-exact) operands, within
//! the worst-case error of an f32 accumulation, `k·2⁻²⁴·Σ|terms|`, plus one rounding of the
//! output to f16 (a GPU writes its f16 product, then widens it). Every row holds a cancelling
//! ±2048 pair, so an f16 accumulator loses the small terms added while the running sum is
//! large: emulated f16 accumulation (in order, four interleaved lanes, pairwise) is shown to
//! fail the same bound, so the test tells f16 accumulation from f32.

mod common;

use burn::tensor::DType;
use common::{host, spec, tensor, test_device, values};
use temper_backend::kernels::{self, activation_dtype};
use temper_backend::{BackendKind, HalfType, TrainPrecision, autocast};

const M: usize = 4;
/// Long enough for an f16 accumulator to drift far past the bound (the "k = 1000").
const K: usize = 1000;
const N: usize = 8;
/// The planted pair: `x = ±BIG` against weight rows of ones.
const BIG: f32 = 2048.0;

fn f16(x: f32) -> f32 {
    HalfType::F16.round(x)
}

/// `n` f16-exact values in `[-scale, scale)`: the casts to f16 are exact whatever the
/// device's conversion rounding, so only the accumulation is under test.
fn half_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    values(n, seed, scale).into_iter().map(f16).collect()
}

/// `x` `[M, K]` and `w` `[K, N]`: row `r` of `x` holds `+BIG` at column `3 + r` and `−BIG` at
/// `K − 5 − r`, and those rows of `w` are ones, so each output carries `+BIG − BIG` on top of
/// the `K − 2` small products.
fn operands() -> (Vec<f32>, Vec<f32>) {
    let mut x = half_values(M * K, 40, 1.0);
    let mut w = half_values(K * N, 41, 1.0);
    for r in 0..M {
        for (col, v) in [(3 + r, BIG), (K - 5 - r, -BIG)] {
            x[r * K + col] = v;
            w[col * N..(col + 1) * N].fill(1.0);
        }
    }
    (x, w)
}

/// `a [m, k] · b [k, n]` in f64, with `Σ|terms|` per output (for the error bound).
fn product_f64(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let t = f64::from(a[i * k + l]) * f64::from(b[l * n + j]);
                out[i * n + j] += t;
                abs[i * n + j] += t.abs();
            }
        }
    }
    (out, abs)
}

/// The f32-accumulation bound, `k·2⁻²⁴·Σ|terms|`, plus one rounding of the result to f16
/// (2⁻¹⁰ relative: one f16 ulp, whatever the device's conversion rounding mode).
fn bound(k: usize, reference: f64, abs: f64) -> f64 {
    let acc = k as f64 * 2f64.powi(-24) * abs;
    acc + 2f64.powi(-10) * (reference.abs() + acc)
}

/// The first output outside [`bound`], if any: `(index, got, want, bound)`.
fn violation(got: &[f32], want: &[f64], abs: &[f64], k: usize) -> Option<(usize, f32, f64, f64)> {
    assert_eq!(got.len(), want.len());
    (0..got.len()).find_map(|i| {
        let b = bound(k, want[i], abs[i]);
        let ok = (f64::from(got[i]) - want[i]).abs() <= b;
        (!ok).then_some((i, got[i], want[i], b))
    })
}

#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f64], abs: &[f64], k: usize) {
    if let Some((i, g, w, b)) = violation(got, want, abs, k) {
        panic!("{what}: output {i} is {g}, the f64 reference {w}, beyond the f32 bound {b}");
    }
}

/// `a · b` with the products and the running sums rounded to f16, `lanes` interleaved
/// accumulators summed at the end (a vectorised kernel), or pairwise.
fn product_f16_accumulated(a: &[f32], b: &[f32], lanes: Option<usize>) -> Vec<f32> {
    let mut out = vec![0.0; M * N];
    for i in 0..M {
        for j in 0..N {
            let terms: Vec<f32> = (0..K).map(|l| f16(a[i * K + l] * b[l * N + j])).collect();
            out[i * N + j] = match lanes {
                Some(lanes) => {
                    let mut acc = vec![0.0f32; lanes];
                    for (l, t) in terms.iter().enumerate() {
                        acc[l % lanes] = f16(acc[l % lanes] + t);
                    }
                    acc.into_iter().fold(0.0, |s, v| f16(s + v))
                }
                None => pairwise_f16(&terms),
            };
        }
    }
    out
}

fn pairwise_f16(terms: &[f32]) -> f32 {
    match terms.len() {
        0 => 0.0,
        1 => terms[0],
        n => f16(pairwise_f16(&terms[..n / 2]) + pairwise_f16(&terms[n / 2..])),
    }
}

/// The data separates the two accumulators: f32 accumulation (in order) is inside the bound,
/// every emulated f16 accumulation outside it. Host only, so that the device test below
/// cannot pass with an f16 accumulator.
#[test]
fn f16_accumulation_fails_the_bound_that_f32_accumulation_meets() {
    let (x, w) = operands();
    let (want, abs) = product_f64(&x, &w, M, K, N);
    let f32_in_order: Vec<f32> = (0..M * N)
        .map(|o| {
            let (i, j) = (o / N, o % N);
            (0..K).fold(0.0f32, |s, l| s + x[i * K + l] * w[l * N + j])
        })
        .collect();
    assert_within("f32 accumulation", &f32_in_order, &want, &abs, K);
    for lanes in [Some(1), Some(4), None] {
        let got = product_f16_accumulated(&x, &w, lanes);
        assert!(
            violation(&got, &want, &abs, K).is_some(),
            "f16 accumulation ({lanes:?} lanes) passed the f32 bound"
        );
    }
}

/// `kernels::linear` under f16 autocast: f32 output within the f32-accumulation bound of the
/// f64 reference, forward and both gradients (f32, for f32 inputs).
#[test]
fn linear_under_f16_autocast_accumulates_in_f32_on_the_test_device() {
    let device = test_device(true);
    if !device.supports_dtype(DType::F16) {
        return;
    }
    let (xs, ws) = operands();
    let gs = half_values(M * N, 42, 1.0);
    let x = tensor(&xs, [M, K], &device).require_grad();
    let w = tensor(&ws, [K, N], &device).require_grad();
    let out = {
        let _autocast = autocast(Some(HalfType::F16));
        kernels::linear(x.clone(), w.clone(), None)
    };
    assert_eq!(
        out.dtype(),
        DType::F32,
        "the output keeps the activation's dtype"
    );
    let grads = (out.clone() * tensor(&gs, [M, N], &device))
        .sum()
        .backward();
    let (want, abs) = product_f64(&xs, &ws, M, K, N);
    assert_within("linear", &host(out), &want, &abs, K);

    // ∂x = G·Wᵀ, ∂W = Xᵀ·G, from the same f16 operands.
    let wt: Vec<f32> = (0..N * K).map(|i| ws[(i % K) * N + i / K]).collect();
    let xt: Vec<f32> = (0..K * M).map(|i| xs[(i % M) * K + i / M]).collect();
    let dx = x.grad(&grads).expect("x grad");
    let dw = w.grad(&grads).expect("w grad");
    assert_eq!((dx.dtype(), dw.dtype()), (DType::F32, DType::F32));
    let (want, abs) = product_f64(&gs, &wt, M, N, K);
    assert_within("∂x", &host(dx), &want, &abs, N);
    let (want, abs) = product_f64(&xt, &gs, K, M, N);
    assert_within("∂W", &host(dw), &want, &abs, M);
}

/// `kernels::matmul` and `kernels::lora_linear` take the same f16 products: f32 outputs, the
/// matmul within the f32 bound, the LoRA projection close to its reference (whose `x·A` is
/// rounded to f16, as the next product's operand is on every backend).
#[test]
fn matmul_and_lora_linear_under_f16_autocast_on_the_test_device() {
    let device = test_device(false);
    if !device.supports_dtype(DType::F16) {
        return;
    }
    let (xs, ws) = operands();
    let _autocast = autocast(Some(HalfType::F16));
    let out = kernels::matmul(tensor(&xs, [M, K], &device), tensor(&ws, [K, N], &device));
    assert_eq!(out.dtype(), DType::F32);
    let (want, abs) = product_f64(&xs, &ws, M, K, N);
    assert_within("matmul", &host(out), &want, &abs, K);

    const R: usize = 2;
    const SCALE: f64 = 0.5;
    let (xs, ws) = (half_values(M * 64, 50, 1.0), half_values(64 * N, 51, 1.0));
    let (a, b) = (half_values(64 * R, 52, 1.0), half_values(R * N, 53, 1.0));
    let out = kernels::lora_linear(
        tensor(&xs, [M, 64], &device),
        tensor(&ws, [64, N], &device),
        None,
        tensor(&a, [64, R], &device),
        tensor(&b, [R, N], &device),
        SCALE,
    );
    assert_eq!(out.dtype(), DType::F32);
    let (base, _) = product_f64(&xs, &ws, M, 64, N);
    let (xa, _) = product_f64(&xs, &a, M, 64, R);
    let xa: Vec<f32> = xa.iter().map(|&v| f16(v as f32)).collect();
    let (update, _) = product_f64(&xa, &b, M, R, N);
    let got = host(out);
    let scale = base.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, g) in got.iter().enumerate() {
        let want = base[i] + SCALE * update[i];
        assert!(
            (f64::from(*g) - want).abs() <= 4e-3 * scale,
            "lora_linear output {i}: {g}, want {want}"
        );
    }
}

/// Under a mixed precision's scope GPU activations are f32 whatever the weights' storage (a
/// frozen f16 LoRA base); under a pure one they keep the storage dtype there. On the CPU they
/// are f32 always.
#[test]
fn activations_are_f32_under_mixed_precision_on_the_test_device() {
    let device = test_device(true);
    let gpu = !matches!(spec().kind, BackendKind::Cpu);
    {
        let _scope = TrainPrecision::F16Mixed.autocast();
        assert_eq!(activation_dtype(&device, DType::F16), DType::F32);
        assert_eq!(activation_dtype(&device, DType::F32), DType::F32);
    }
    let storage = if gpu { DType::F16 } else { DType::F32 };
    {
        let _scope = TrainPrecision::F16.autocast();
        assert_eq!(activation_dtype(&device, DType::F16), storage);
    }
    assert_eq!(activation_dtype(&device, DType::F16), storage);
    let _scope = autocast(Some(HalfType::F16));
    assert_eq!(activation_dtype(&device, DType::F16), DType::F32);
}

/// Every precision whose half type the device computes in is accepted; the others (bf16 on
/// wgpu) are refused by name, with the device and f16-mixed suggested where f16 works, and a
/// product under `autocast(Some(Bf16))` there stays in f32 instead of failing.
#[test]
fn precisions_the_device_cannot_compute_are_refused_on_the_test_device() {
    let spec = spec();
    let device = test_device(false);
    for precision in TrainPrecision::ALL {
        let supported = precision
            .compute()
            .is_none_or(|h| device.supports_dtype(h.precision().dtype()));
        match spec.check_precision(precision) {
            Ok(()) => assert!(supported, "{precision} accepted"),
            Err(e) => {
                assert!(!supported, "{precision} refused: {e}");
                let msg = e.to_string();
                let name = format!("`{spec}`");
                assert!(
                    msg.contains(&format!("`{precision}`")) && msg.contains(&name),
                    "{msg}"
                );
                if device.supports_dtype(DType::F16) {
                    assert!(msg.contains("`f16-mixed`"), "{msg}");
                }
                assert!(precision.check(&device).is_err());
            }
        }
    }
    if !device.supports_dtype(DType::BF16) {
        let (xs, ws) = (half_values(M * 64, 60, 1.0), values(64 * N, 61, 1.0));
        let plain = host(kernels::linear(
            tensor(&xs, [M, 64], &device),
            tensor(&ws, [64, N], &device),
            None,
        ));
        let _autocast = autocast(Some(HalfType::Bf16));
        let out = kernels::linear(
            tensor(&xs, [M, 64], &device),
            tensor(&ws, [64, N], &device),
            None,
        );
        assert_eq!(out.dtype(), DType::F32);
        assert_eq!(
            host(out),
            plain,
            "bf16 autocast on a device without bf16 stays f32"
        );
    }
}
