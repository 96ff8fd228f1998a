//! burn's gradient checkpointing applied to an already-built module.
//!
//! The trainer's `gradient_checkpointing` no longer uses it: burn's strategy recomputes
//! memory-bound ops but keeps the inputs of every product, which saves nothing on a decoder
//! (measured: a SmolLM2 QLoRA step's peak went up); the trainer checkpoints whole layers
//! instead (`temper_llm_arch::CheckpointTape`). This stays for modules outside the trainer.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{GradientCheckpointingStrategy, Tensor};

/// Puts every autodiff float parameter of `module` under burn's balanced gradient
/// checkpointing, keeping ids, values and which parameters require gradients.
///
/// In burn 0.22 the strategy travels with each tensor and is set by the device a parameter is
/// created on; `Module::to_device`/`fork` keep the tensors' own strategy, and `to_device` of
/// an initialized autodiff module is itself a differentiable op (the parameters become
/// non-leaf nodes: the second backward then fails with "graph tape has already been
/// consumed"). This re-roots each parameter as a leaf carrying the strategy instead.
/// Parameters already under it, or without autodiff, are left as they are.
pub fn with_gradient_checkpointing<M: Module>(module: M) -> M {
    struct Balanced;
    impl ModuleMapper for Balanced {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let strategy = GradientCheckpointingStrategy::Balanced;
                if !t.is_autodiff() || t.gradient_checkpointing_strategy() == Some(strategy) {
                    return t;
                }
                let require_grad = t.is_require_grad();
                let t = t.detach().with_gradient_checkpointing_strategy(strategy);
                if require_grad { t.require_grad() } else { t }
            })
        }
    }
    module.map(&mut Balanced)
}
