//! Numerically stable element-wise functions the losses are built from.
//!
//! Both are written so that neither the value nor the autodiff gradient produces NaN/∞ for
//! inputs inside their domain, including the tails.

use burn::tensor::Tensor;
use burn::tensor::activation::softplus;

/// `log σ(x) = −softplus(−x) = −log(1 + e^{−x})`, PyTorch's `F.logsigmoid`.
///
/// Why not `log(sigmoid(x))`: σ(x) underflows to 0 for x ≲ −88 in f32 (→ −∞), and
/// `1 − σ` loses every digit for large x. burn's `softplus` evaluates `log1p(e^{βx})` below a
/// threshold (accurate as e^{−x} → 0) and returns the identity above it, so both tails are
/// exact to rounding and the gradient `σ(−x)` never sees an overflow.
pub fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg(), 1.0).neg()
}

/// `log(1 − eˣ)` for `x ≤ 0` (a log-probability), as TRL's ORPO computes it since
/// huggingface/trl#4763:
///
/// * `x < −ln 2`: `log1p(−eˣ)` — eˣ < ½, so `1 − eˣ` has no cancellation;
/// * `x ≥ −ln 2`: `log(−expm1(x))` — near 0, `1 − eˣ` would cancel catastrophically
///   (and give −∞ for `x > −6e−8` in f32). burn has no `expm1`, so this branch uses the exact
///   identity `−expm1(x) = −2·e^{x/2}·sinh(x/2)`, i.e. `x/2 + log(−2·sinh(x/2))`, which is
///   accurate because `sinh` is (libm's on the CPU backend).
///
/// Each branch is evaluated on its input clamped into its own domain, so the branch that is
/// *not* selected never produces an ∞ whose zero-weighted gradient would turn into NaN.
/// At exactly `x = 0` the value is −∞ (as it should be); `x > 0` is outside the domain.
pub fn log1mexp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const NEG_LN2: f64 = -std::f64::consts::LN_2;
    let far = x.clone().lower_elem(NEG_LN2);
    let far_value = x.clone().clamp_max(NEG_LN2).exp().neg().log1p();
    let half = x.clamp_min(NEG_LN2).div_scalar(2.0);
    let near_value = half.clone() + half.sinh().mul_scalar(-2.0).log();
    near_value.mask_where(far, far_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values(t: Tensor<1>) -> Vec<f64> {
        t.into_data().iter::<f64>().collect()
    }

    #[test]
    fn log_sigmoid_matches_f64_in_both_tails() {
        let device = Device::flex();
        let xs = [-200.0f64, -30.0, -1.0, 0.0, 0.5, 30.0, 200.0];
        let x = Tensor::<1>::from_data(
            TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]),
            &device,
        );
        for (got, x) in values(log_sigmoid(x)).into_iter().zip(xs) {
            let want = -(-x).exp().ln_1p();
            let want = if x < -30.0 { x } else { want };
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-30) + 1e-30,
                "ls({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn log1mexp_is_accurate_on_both_sides_of_the_switch() {
        let device = Device::flex();
        let xs = [
            -1e-30f64,
            -1e-7,
            -1e-3,
            -0.5,
            -std::f64::consts::LN_2,
            -0.7,
            -2.0,
            -50.0,
            -1e4,
        ];
        let x = Tensor::<1>::from_data(
            TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]),
            &device,
        );
        for (got, x) in values(log1mexp(x)).into_iter().zip(xs) {
            let x32 = f64::from(x as f32);
            let want = if x32 < -std::f64::consts::LN_2 {
                (-x32.exp()).ln_1p()
            } else {
                (-x32.exp_m1()).ln()
            };
            assert!(got.is_finite(), "log1mexp({x}) = {got}");
            assert!(
                (got - want).abs() <= 2e-6 * want.abs().max(1e-38),
                "log1mexp({x}) = {got}, want {want}"
            );
        }
    }
}
