//! Causal attention with half-precision products on the CPU (`causal_attention(.., Some(half))`,
//! what a bf16-mixed training step and a bf16 model's prefill take): `Q·Kᵀ`, `P·V` and the
//! backward's five products round their operands — the probabilities and the score gradient
//! included, as torch's bf16 flash attention does — and accumulate in f32; the softmax, its
//! log-sum-exp and `δ = rowsum(∂O ∘ O)` stay in f32.
//!
//! Checked against an f64 reference that rounds the same operands at the same places. The
//! kernel's f32 probabilities can land on the other side of a rounding boundary than the f64
//! ones, one half-type step of one element at most, so the bound is a fraction of the distance
//! between the rounded reference and the unrounded one: the test sees the rounding, and sees
//! it in the right places.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{host, values};
use temper_backend::kernels::causal_attention;
use temper_backend::{DeviceSpec, HalfType};

/// Two query blocks of the CPU kernel (64 rows each), cached keys, grouped KV heads.
const B: usize = 2;
const S: usize = 70;
const PAST: usize = 5;
const T: usize = S + PAST;
const H: usize = 6;
const KVH: usize = 2;
const D: usize = 32;

/// Inputs `q` `[B, S, H, D]`, `k`, `v` `[B, T, KVH, D]` and an output gradient like `q`.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    grad: Vec<f32>,
}

fn inputs() -> Inputs {
    Inputs {
        q: values(B * S * H * D, 70, 1.5),
        k: values(B * T * KVH * D, 71, 1.5),
        v: values(B * T * KVH * D, 72, 1.0),
        grad: values(B * S * H * D, 73, 1.0),
    }
}

/// Output and gradients `(out, dq, dk, dv)`, flattened in the inputs' layouts.
type Results = [Vec<f64>; 4];

/// f64 attention forward and backward; `round` is applied wherever the kernel rounds an
/// operand of a product (identity: the exact result).
fn reference(x: &Inputs, round: impl Fn(f64) -> f64) -> Results {
    let r = |v: &[f32]| -> Vec<f64> { v.iter().map(|&a| round(f64::from(a))).collect() };
    let (q, k, v, g) = (r(&x.q), r(&x.k), r(&x.v), r(&x.grad));
    let scale = 1.0 / (D as f64).sqrt();
    let qi = |b: usize, i: usize, h: usize| ((b * S + i) * H + h) * D;
    let ki = |b: usize, j: usize, g: usize| ((b * T + j) * KVH + g) * D;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut out = vec![0.0; q.len()];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..B {
        for h in 0..H {
            let kv = h / (H / KVH);
            for i in 0..S {
                let seen = PAST + i + 1;
                let (qa, ga) = (qi(b, i, h), qi(b, i, h));
                let scores: Vec<f64> = (0..seen)
                    .map(|j| scale * dot(&q[qa..qa + D], &k[ki(b, j, kv)..ki(b, j, kv) + D]))
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
                for (j, &pj) in p.iter().enumerate() {
                    let va = ki(b, j, kv);
                    for e in 0..D {
                        out[qa + e] += round(pj) * v[va + e];
                    }
                }
                // δ from the unrounded gradient and the f64 output, as the kernel's f32 ones.
                let delta: f64 = (0..D)
                    .map(|e| f64::from(x.grad[ga + e]) * out[qa + e])
                    .sum();
                for (j, &pj) in p.iter().enumerate() {
                    let (ka, va) = (ki(b, j, kv), ki(b, j, kv));
                    let dp = dot(&g[ga..ga + D], &v[va..va + D]);
                    let ds = round(pj * (dp - delta));
                    for e in 0..D {
                        dv[va + e] += round(pj) * g[ga + e];
                        dk[ka + e] += scale * ds * q[qa + e];
                        dq[qa + e] += scale * ds * k[ka + e];
                    }
                }
            }
        }
    }
    [out, dq, dk, dv]
}

/// The kernel's output and gradients on the CPU with products in `half`.
fn kernel(x: &Inputs, half: Option<HalfType>) -> [Vec<f32>; 4] {
    let device = "cpu"
        .parse::<DeviceSpec>()
        .expect("cpu")
        .with_autodiff(true)
        .device()
        .expect("cpu device");
    let t = |data: &[f32], shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(data.to_vec(), shape), &device).require_grad()
    };
    let (q, k, v) = (
        t(&x.q, [B, S, H, D]),
        t(&x.k, [B, T, KVH, D]),
        t(&x.v, [B, T, KVH, D]),
    );
    let out = causal_attention(q.clone(), k.clone(), v.clone(), half);
    let grad = Tensor::<4>::from_data(TensorData::new(x.grad.clone(), [B, S, H, D]), &device);
    let grads = (out.clone() * grad).sum().backward();
    let g = |t: &Tensor<4>| host(t.grad(&grads).expect("a gradient"));
    [host(out.inner()), g(&q), g(&k), g(&v)]
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}

fn check(half: HalfType) {
    let x = inputs();
    let got = kernel(&x, Some(half));
    let rounded = reference(&x, |a| f64::from(half.round(a as f32)));
    let exact = reference(&x, |a| a);
    for (((name, got), rounded), exact) in ["out", "dq", "dk", "dv"]
        .iter()
        .zip(&got)
        .zip(&rounded)
        .zip(&exact)
    {
        let (to_rounded, to_exact) = (max_diff(got, rounded), max_diff(got, exact));
        eprintln!(
            "{half:?} {name}: {to_rounded:.3e} from the rounded reference, {to_exact:.3e} from the exact one"
        );
        assert!(
            to_rounded * 4.0 < to_exact,
            "{half:?} {name}: {to_rounded:.3e} from the rounded f64 reference is not well below \
             {to_exact:.3e} from the exact one"
        );
    }
}

#[test]
fn bf16_products_round_their_operands_and_the_probabilities() {
    check(HalfType::Bf16);
}

#[test]
fn f16_products_round_their_operands_and_the_probabilities() {
    check(HalfType::F16);
}

/// Without a half type the kernel is f32 throughout: close to the exact reference.
#[test]
fn no_half_type_keeps_f32_products() {
    let x = inputs();
    let got = kernel(&x, None);
    let exact = reference(&x, |a| a);
    for (name, (got, exact)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&exact)) {
        let diff = max_diff(got, exact);
        assert!(
            diff < 2e-5,
            "f32 {name}: {diff:.3e} from the exact reference"
        );
    }
}
