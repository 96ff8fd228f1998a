//! Vectorisable f32 math for the fused CPU kernels.
//!
//! [`dispatch`] runs a closure compiled for the widest SIMD level the CPU has (AVX-512,
//! AVX2 + FMA, else the baseline) through pulp, so the plain slice loops inside it are
//! auto-vectorised without `unsafe` or target flags. [`exp`] is a branch-free polynomial LLVM
//! can vectorise: libm's `expf` is a scalar call, and it was ≈ 5 % of a CPU training step
//! (SiLU and softmax). [`dot`] sums in 16 lanes, the order a vector unit can keep.

/// Runs `f` under the best target features of this CPU (runtime detection, once per process).
#[inline(always)]
pub(super) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `e^x` within 2 ulp of `f32::exp` for `-87 ≤ x ≤ 88`; 0 below (e⁻⁸⁷ ≈ 1.6·10⁻³⁸, so the
/// absolute error there is under 2·10⁻³⁸; `-inf` gives 0), `+inf` above, NaN for NaN.
///
/// Cody–Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, Cephes' minimax polynomial for `e^r`,
/// and `2^n` built in the exponent bits (the `1.5·2²³` shift rounds to an integer in the low
/// mantissa bits). No FMA is assumed: `n·C1` is exact, so plain products keep the accuracy.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2, high part (few mantissa bits: n·C1 is exact)
    const C2: f32 = -2.121_944_4e-4; // ln 2 − C1
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    let xc = x.clamp(LO, HI);
    let shifted = xc * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let r = xc - n * C1 - n * C2;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    // `shifted`'s low bits hold n; n + 127 ∈ [1, 254] is a normal exponent after the clamp.
    let bits = shifted
        .to_bits()
        .wrapping_sub(SHIFT.to_bits())
        .wrapping_add(127)
        << 23;
    let y = er * f32::from_bits(bits);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `Σ a·b` in 16 interleaved partial sums (vectorisable; the order differs from a sequential
/// sum by rounding only).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_on_a_dense_grid() {
        let mut worst = (0u32, 0.0f32);
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (dispatch(|| exp(x)), x.exp());
            let u = ulps(got, want);
            if u > worst.0 {
                worst = (u, x);
            }
            x += 0.000_731;
        }
        assert!(worst.0 <= 2, "exp({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-87.5) < 2e-38);
    }

    proptest! {
        #[test]
        fn exp_matches_std_in_range(x in -87.0f32..88.0) {
            prop_assert!(ulps(exp(x), x.exp()) <= 2, "x = {x}: {} vs {}", exp(x), x.exp());
        }

        #[test]
        fn dot_matches_f64_sum(v in proptest::collection::vec(-10.0f32..10.0, 0..200)) {
            let w: Vec<f32> = v.iter().map(|x| x * 0.5 - 1.0).collect();
            let want: f64 = v.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = v.iter().zip(&w).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1.0);
            prop_assert!(((dot(&v, &w) as f64 - want) / scale).abs() < 1e-5);
        }
    }
}
