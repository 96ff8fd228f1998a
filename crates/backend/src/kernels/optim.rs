//! Optimizer updates as one fused op per parameter.
//!
//! [`adamw_update`] is the arithmetic of `burn::optim::AdamW` (decoupled weight decay, bias
//! correction, ε added to `√v̂`): one parallel in-place pass on Flex (f32), burn's tensor-op
//! composition elsewhere. Both give the same bits on Flex, so an optimizer built on it can share
//! burn's `AdamWState` record with `burn::optim::AdamW`.

use burn::tensor::{DType, Tensor};

use super::{FusedOp, KernelPath, kernel_path_for};

/// The scalars of one AdamW update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step.
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta_1: f32,
    /// Second-moment decay β₂.
    pub beta_2: f32,
    /// ε added to `√v̂`.
    pub epsilon: f32,
    /// Decoupled weight decay (the parameter is scaled by `1 − lr · weight_decay`).
    pub weight_decay: f32,
    /// 1-based step count of this parameter's moments, after this update (bias correction).
    pub time: usize,
}

impl AdamWStep {
    /// `(1 − β₁ᵗ, 1 − β₂ᵗ)`, in f32 as burn computes them.
    pub(crate) fn bias_corrections(&self) -> (f32, f32) {
        let t = i32::try_from(self.time).unwrap_or(i32::MAX);
        (1.0 - self.beta_1.powi(t), 1.0 - self.beta_2.powi(t))
    }

    /// The factor the parameter is multiplied by before the update; `None` without decay.
    pub(crate) fn decay_factor(&self) -> Option<f32> {
        let rate = self.lr * f64::from(self.weight_decay);
        (rate != 0.0).then_some((1.0 - rate) as f32)
    }
}

/// One AdamW update: returns `(param, m, v)` after the step. `moments` is `None` on a
/// parameter's first step (the moments are then initialised from `grad`, as burn does).
/// `param` and `grad` are plain tensors (no autodiff), of the same shape.
///
/// On Flex with f32 tensors the update is one parallel in-place pass (when `param` and the
/// moments are not shared; otherwise they are copied first). `TEMPER_KERNELS=reference:adamw`
/// forces the tensor-op composition.
pub fn adamw_update<const D: usize>(
    step: &AdamWStep,
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let device = param.device();
    let fused = kernel_path_for(FusedOp::AdamW, &device, param.dtype()) == KernelPath::Fused
        && !super::is_gpu(&device)
        && !device.is_autodiff()
        && grad.dtype() == DType::F32
        && param.dims() == grad.dims()
        && moments.as_ref().is_none_or(|(m, v)| {
            m.dtype() == DType::F32
                && v.dtype() == DType::F32
                && m.dims() == param.dims()
                && v.dims() == param.dims()
        });
    #[cfg(feature = "flex")]
    if fused {
        return super::flex::adamw_update(step, param, grad, moments);
    }
    let _ = fused;
    reference_adamw_update(step, param, grad, moments)
}

/// [`adamw_update`] as burn tensor ops, in `burn::optim::AdamW`'s order.
pub fn reference_adamw_update<const D: usize>(
    step: &AdamWStep,
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (factor_1, factor_2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let (m, v) = match moments {
        Some((m, v)) => (
            m.mul_scalar(step.beta_1)
                .add(grad.clone().mul_scalar(factor_1)),
            v.mul_scalar(step.beta_2)
                .add(grad.square().mul_scalar(factor_2)),
        ),
        None => (
            grad.clone().mul_scalar(factor_1),
            grad.square().mul_scalar(factor_2),
        ),
    };
    let (correction_1, correction_2) = step.bias_corrections();
    let delta = m.clone().div_scalar(correction_1).div(
        v.clone()
            .div_scalar(correction_2)
            .sqrt()
            .add_scalar(step.epsilon),
    );
    let decayed = match step.decay_factor() {
        Some(d) => param.mul_scalar(d),
        None => param,
    };
    (decayed - delta.mul_scalar(step.lr), m, v)
}
