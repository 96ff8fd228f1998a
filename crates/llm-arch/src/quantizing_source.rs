//! [`QuantizingSource`]: a [`TensorSource`] that hands the loader its projection weights
//! already block-quantized, one tensor at a time.
//!
//! QLoRA on a model larger than memory in f32 (an 8B checkpoint is 32 GB in f32, 16 GB in bf16)
//! must never hold the dense model: bitsandbytes quantizes each `Linear` as it is moved to the
//! device. Here the loader asks for each projection's weight through
//! [`TensorSource::take_quantized`]; this source reads that one tensor from the wrapped source
//! (a safetensors shard, a GGUF's decoded tensors), encodes it and drops the dense values
//! before the next is read, so peak memory is the quantized model plus one dense tensor.

use std::path::Path;

use temper_backend::{FloatPrecision, QuantType, QuantizedWeight};

use crate::Result;
use crate::checkpoint::{HostTensor, TensorSource};

/// Wraps a source so that the projections it holds arrive encoded as `ty` (NF4 as
/// bitsandbytes, Q8_0 as ggml); every other tensor (embedding, norms, LM head, biases) passes
/// through dense. Weights the inner source already keeps quantized (a GGUF's own blocks) are
/// passed on as they are.
#[derive(Debug)]
pub struct QuantizingSource<S> {
    inner: S,
    ty: QuantType,
    round_to: FloatPrecision,
}

impl<S: TensorSource> QuantizingSource<S> {
    /// Quantize `inner`'s projection weights to `ty` as they are taken.
    pub fn new(inner: S, ty: QuantType) -> Self {
        Self {
            inner,
            ty,
            round_to: FloatPrecision::F32,
        }
    }

    /// Round each weight to `precision` before encoding it, as transformers does when a
    /// model is loaded with `torch_dtype=bfloat16` and `load_in_4bit`: the blocks then equal
    /// those of the model loaded in `precision` and quantized afterwards.
    pub fn rounding_to(mut self, precision: FloatPrecision) -> Self {
        self.round_to = precision;
        self
    }

    /// The wrapped source.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: TensorSource> TensorSource for QuantizingSource<S> {
    fn origin(&self) -> &Path {
        self.inner.origin()
    }

    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        self.inner.take(name)
    }

    fn remaining(&self) -> Vec<String> {
        self.inner.remaining()
    }

    /// The loader calls this for projection weights only (`…_proj.weight`), which is what
    /// makes the embedding and LM head stay dense, as in QLoRA.
    fn take_quantized(&mut self, name: &str) -> Result<Option<QuantizedWeight>> {
        if let Some(kept) = self.inner.take_quantized(name)? {
            return Ok(Some(kept));
        }
        let Some(mut dense) = self.inner.take(name)? else {
            return Ok(None);
        };
        let &[rows, cols] = dense.shape.as_slice() else {
            return Err(crate::Error::InvalidInput(format!(
                "{}: tensor `{name}` has shape {:?}, a projection weight is 2-D",
                self.origin().display(),
                dense.shape
            )));
        };
        match self.round_to {
            FloatPrecision::F32 => {}
            FloatPrecision::BF16 => dense
                .data
                .iter_mut()
                .for_each(|x| *x = half::bf16::from_f32(*x).to_f32()),
            FloatPrecision::F16 => dense
                .data
                .iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        }
        // The backend error names the tensor (a non-finite value, a shape NF4 refuses).
        Ok(Some(QuantizedWeight::quantize(
            name,
            &dense.data,
            [rows, cols],
            self.ty,
        )?))
    }
}
