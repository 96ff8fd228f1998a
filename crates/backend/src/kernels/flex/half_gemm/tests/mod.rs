//! Tests of the half-precision products: [`products`] against an f64 reference computed
//! from the operands rounded by the `half` crate, on every path this CPU runs, every storage
//! and layout; [`units`] for the rounding, the packing and the choice of path.
#![allow(clippy::unwrap_used)]

mod products;
mod units;

use burn::tensor::{bf16, f16};

use super::*;

/// Deterministic values in [-1, 1) with full f32 mantissas (rarely bf16- or f16-exact).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How a test operand is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    F32,
    Bf16,
    F16,
}

/// One operand's values in every storage.
struct Operand {
    f32: Vec<f32>,
    bf16: Vec<bf16>,
    f16: Vec<f16>,
}

impl Operand {
    fn new(n: usize, seed: u64) -> Self {
        let f32 = values(n, seed);
        Self {
            bf16: f32.iter().map(|&x| bf16::from_f32(x)).collect(),
            f16: f32.iter().map(|&x| f16::from_f32(x)).collect(),
            f32,
        }
    }

    fn view(&self, store: Store, rs: usize, cs: usize) -> HalfView<'_> {
        match store {
            Store::F32 => HalfView::f32(&self.f32, rs, cs),
            Store::Bf16 => HalfView::bf16(&self.bf16, rs, cs),
            Store::F16 => HalfView::f16(&self.f16, rs, cs),
        }
    }
}

/// `x` rounded to `half` by the `half` crate (independent of the code under test).
fn round(x: f32, half: HalfType) -> f64 {
    match half {
        HalfType::Bf16 => f64::from(bf16::from_f32(x).to_f32()),
        HalfType::F16 => f64::from(f16::from_f32(x).to_f32()),
    }
}

/// `Σ_p r(lhs(i, p))·r(rhs(p, j))` and `Σ_p |…|` in f64, `r` rounding to `half`.
fn reference(
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    half: HalfType,
) -> (Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = (0..m * k)
        .map(|e| round(lhs.get(e / k, e % k), half))
        .collect();
    let b: Vec<f64> = (0..k * n)
        .map(|e| round(rhs.get(e / n, e % n), half))
        .collect();
    let (mut sum, mut abs) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                let t = a[i * k + p] * b[p * n + j];
                sum[i * n + j] += t;
                abs[i * n + j] += t.abs();
            }
        }
    }
    (sum, abs)
}

/// `got == base + alpha·sum` within f32 summation error: products of two half values are
/// exact in f32, and each of the ≤ k additions (then the scaling and the add to `base`)
/// rounds by at most 2⁻²⁴ of a partial sum bounded by `Σ|a·b|` — bounded here by
/// `(k + 3)·2⁻²³` of it (twice the classic bound), plus one rounding of `base` and the result.
fn assert_matches(
    got: &[f32],
    base: Option<&[f32]>,
    (sum, abs): &(Vec<f64>, Vec<f64>),
    alpha: f32,
    k: usize,
    what: &str,
) {
    assert_eq!(got.len(), sum.len(), "{what}: length");
    let u = f64::from(f32::EPSILON); // 2⁻²³
    for e in 0..got.len() {
        let b = base.map_or(0.0, |b| f64::from(b[e]));
        let want = b + f64::from(alpha) * sum[e];
        let tol = u * ((k as f64 + 3.0) * f64::from(alpha.abs()) * abs[e] + b.abs() + want.abs());
        let g = f64::from(got[e]);
        assert!(
            (g - want).abs() <= tol,
            "{what}: element {e}: {g} vs {want} (tolerance {tol:e})"
        );
    }
}

/// The paths whose kernels this CPU runs, with a note for those it lacks.
fn paths() -> Vec<(Path, &'static str)> {
    let mut paths = vec![(Path::Fallback, "fallback")];
    let cpu = cpu();
    if cpu.avx512 {
        paths.push((Path::Native(PackedRule::Always), "native"));
    }
    if !cpu.avx512bf16 {
        eprintln!(
            "note: this CPU lacks AVX512-BF16 (avx512 {}): the packed bf16 kernel is not tested \
             here, only the paths it has",
            cpu.avx512
        );
    }
    paths
}

const SHAPES: [[usize; 3]; 16] = [
    [1, 1, 1],
    [1, 7, 5],
    [2, 33, 70],
    [3, 64, 17],
    [4, 65, 40],
    [5, 3, 1],
    [1, 70, 33],
    [7, 1, 9],
    [13, 31, 33],
    [17, 64, 64],
    [40, 69, 31],
    [65, 66, 67],
    [9, 2, 100],
    [33, 129, 65],
    [8, 500, 40],
    [257, 129, 300],
];
