//! Global-norm gradient clipping (PyTorch's `clip_grad_norm_`, HF's `max_grad_norm`).
//!
//! burn's `GradientClipping::Norm` clips each parameter tensor separately; HF clips the
//! concatenation of all gradients: `total = sqrt(Σ_p ‖g_p‖²)`, then every gradient is scaled
//! by `min(1, max_norm / (total + 1e-6))`. The norm is reduced on the device in f32 and read
//! back once.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};

/// Sums `‖g‖²` of every float parameter's gradient.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let sq = g.cast(DType::F32).square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
    seen: Vec<ParamId>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // A parameter shared between modules is visited twice; scale it once.
        if self.seen.contains(&param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
            self.seen.push(param.id);
        }
    }
}

/// The global L2 norm of the gradients of `module`'s parameters (0 when there are none).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, total: None };
    module.visit(&mut v);
    v.total
        .map(|t| t.sqrt().into_scalar::<f64>())
        .unwrap_or(0.0)
}

/// Multiplies every gradient of `module`'s parameters by `factor` (the loss scaler's unscale).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut v = Scale {
        grads,
        factor,
        seen: Vec::new(),
    };
    module.visit(&mut v);
}

/// Clips the gradients to a global norm of `max_norm` and returns the norm *before* clipping
/// (what HF logs as `grad_norm`). Gradients are left untouched when the factor is ≥ 1.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(module, grads);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        scale_grads(module, grads, factor);
    }
    norm
}
