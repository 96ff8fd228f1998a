//! Layer-wise gradient checkpointing, as HF's `gradient_checkpointing_enable()`: the forward
//! keeps only each decoder layer's input, and the backward recomputes one layer at a time.
//!
//! burn's own checkpointing (`Device::gradient_checkpointing`) recomputes memory-bound ops
//! but keeps every input of the compute-bound ones (the products), so a decoder's activations
//! stay in memory — measured on SmolLM2 QLoRA its peak was *higher* than without it. What
//! makes an 8B model trainable on a small machine is dropping the layers' insides entirely.
//!
//! How, with burn's public autodiff API only:
//! 1. Forward ([`LlamaForCausalLM::forward_hidden`] on a model carrying a [`CheckpointTape`]):
//!    the embedding and the layers run without autodiff (their `valid()` copies); each layer's
//!    input is recorded, and the last layer's output re-enters autodiff as a fresh leaf that
//!    the final norm, the LM head and the loss are recorded on.
//! 2. `loss.backward()` stops at that leaf: its gradient is the gradient of the last layer's
//!    output.
//! 3. [`CheckpointTape::backward`] walks the layers backwards: it recomputes layer `i` from
//!    its recorded input (a leaf requiring grad) with autodiff, back-propagates
//!    `sum(output · gradient)` — whose gradients are the layer's parameter gradients and its
//!    input's gradient — and hands each pass's gradients to the caller to accumulate. The
//!    embedding lookup comes last, when its table trains.
//!
//! The recomputed forward is the same computation as the recorded one, so the loss and the
//! gradients are those of the plain run. Dropout (a LoRA adapter's `lora_dropout`) draws
//! again in the recomputation, as it does in PEFT without RNG-state preservation; Temper's
//! default dropout is 0.

use std::sync::{Arc, Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::{Gradients, Int, Tensor};

use crate::llama::{LayerMasks, LlamaForCausalLM};
use crate::{Error, Result};

/// One checkpointed forward pass.
#[derive(Debug)]
struct Segment {
    input_ids: Tensor<2, Int>,
    /// Layer inputs `[batch, seq, hidden]`, without autodiff.
    inputs: Vec<Tensor<3>>,
    /// The last layer's output as an autodiff leaf: where `loss.backward()` stops.
    output: Tensor<3>,
    cos: Tensor<3>,
    sin: Tensor<3>,
    masks: LayerMasks,
}

/// The layer inputs of the checkpointed forward passes since the last
/// [`backward`](Self::backward). Shared by the clones of a model (an optimizer step returns a
/// new model carrying the same tape).
#[derive(Debug, Clone, Default)]
pub struct CheckpointTape {
    segments: Arc<Mutex<Vec<Segment>>>,
}

impl CheckpointTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checkpointed forward passes recorded and not yet back-propagated.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops what was recorded (a forward whose loss is not back-propagated, e.g. an
    /// evaluation that ran with autodiff).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The forward of the decoder layers under checkpointing: `x` is the embedding output
    /// (without autodiff); returns the last layer's output as an autodiff leaf.
    pub(crate) fn record(
        &self,
        model: &LlamaForCausalLM,
        input_ids: Tensor<2, Int>,
        x: Tensor<3>,
        cos: Tensor<3>,
        sin: Tensor<3>,
        masks: LayerMasks,
    ) -> Tensor<3> {
        let mut x = x.inner();
        let (cos_i, sin_i) = (cos.clone().inner(), sin.clone().inner());
        let mut inputs = Vec::with_capacity(model.model.layers.len());
        for (i, layer) in model.model.layers.iter().enumerate() {
            inputs.push(x.clone());
            let mask = masks.of(model.config(), i);
            x = layer
                .valid()
                .forward(x, cos_i.clone(), sin_i.clone(), mask, None);
        }
        let output = Tensor::from_inner(x).require_grad();
        self.lock().push(Segment {
            input_ids,
            inputs,
            output: output.clone(),
            cos,
            sin,
            masks,
        });
        output
    }

    /// After `loss.backward()` produced `grads`: back-propagates through the recorded layers
    /// of every pending forward pass (last first), calling `accumulate` with the gradients of
    /// each layer's recomputation (and of the embedding lookup when its table trains). The
    /// tape is empty afterwards. A pass the loss did not depend on is dropped.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `model` has fewer layers than a recorded pass.
    pub fn backward(
        &self,
        model: &LlamaForCausalLM,
        grads: &mut Gradients,
        mut accumulate: impl FnMut(Gradients),
    ) -> Result<()> {
        let segments = std::mem::take(&mut *self.lock());
        for seg in segments.into_iter().rev() {
            if seg.inputs.len() != model.model.layers.len() {
                return Err(Error::InvalidInput(format!(
                    "a checkpointed forward recorded {} layers, the model has {}",
                    seg.inputs.len(),
                    model.model.layers.len()
                )));
            }
            let Some(mut grad) = seg.output.grad_remove(grads) else {
                continue;
            };
            for (i, (layer, input)) in model.model.layers.iter().zip(seg.inputs).enumerate().rev() {
                let x = Tensor::from_inner(input).require_grad();
                let out = layer.forward(
                    x.clone(),
                    seg.cos.clone(),
                    seg.sin.clone(),
                    seg.masks.of(model.config(), i),
                    None,
                );
                let mut layer_grads = (out * Tensor::from_inner(grad)).sum().backward();
                grad = x.grad_remove(&mut layer_grads).ok_or_else(|| {
                    Error::InvalidInput("a recomputed layer did not reach its input".into())
                })?;
                accumulate(layer_grads);
            }
            let embedded = model.embed(seg.input_ids);
            if embedded.is_tracked() {
                accumulate((embedded * Tensor::from_inner(grad)).sum().backward());
            }
        }
        Ok(())
    }
}
