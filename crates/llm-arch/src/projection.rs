//! The seven linear projections of a decoder layer (`{q,k,v,o}_proj`, `{gate,up,down}_proj`),
//! with room for an optional low-rank adapter.
//!
//! A [`Projection`] keeps burn's `Linear` fields (`weight` `[in, out]`, `bias`) at the same
//! record paths as before, so HF names map one to one onto burn paths
//! (`model.layers.0.self_attn.q_proj.weight`). The adapter lives here rather than in
//! `temper-lora` because the forward pass has to know about it: wrapping the model from the
//! outside would mean re-implementing every layer's forward. Everything else about LoRA
//! (configuration, initialisation, PEFT files, merging) lives in `temper-lora`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, Linear};
use burn::tensor::{DType, Tensor, TensorData};
use temper_backend::kernels::{linear, lora_linear, quant_linear};
use temper_backend::{QuantType, QuantizedWeight};

/// A low-rank adapter `scale · B(A(dropout(x)))` on a projection, in burn's layout: `lora_a`
/// `[in, r]` (PEFT `lora_A.weight` transposed) and `lora_b` `[r, out]` (PEFT `lora_B.weight`
/// transposed).
///
/// The update is applied as two thin matmuls and never as the dense `[in, out]` delta: at
/// rank 16 on a 576×1536 projection that is ~17× fewer multiply-adds per token, and autodiff
/// keeps only `[tokens, r]` activations instead of a weight-sized gradient.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// `[r, out]`.
    pub lora_b: Param<Tensor<2>>,
    /// `lora_alpha / r` (or `lora_alpha / √r` with rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input only (PEFT's `lora_dropout`); active on an autodiff
    /// device while the module is in training mode.
    pub dropout: Dropout,
    /// `false`: the projection behaves like its base layer (the "adapters disabled" reference
    /// forward of DPO, without a second copy of the model).
    pub enabled: bool,
    /// The update has been added into the base weight; the forward must not add it again.
    pub merged: bool,
}

impl LoraAdapter {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.val().dims()[1]
    }

    /// The low-rank update alone: `[..., in]` → `[..., out]`.
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = self.dropout.forward(x);
        linear(linear(x, self.lora_a.val(), None), self.lora_b.val(), None) * self.scale
    }

    /// The dense update `scale · A·B`, `[in, out]`, for merging (not used by the forward).
    pub fn dense_delta(&self) -> Tensor<2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }

    /// Whether the forward adds the update.
    pub fn is_active(&self) -> bool {
        self.enabled && !self.merged
    }
}

/// A linear projection (`Linear`'s fields) with an optional [`LoraAdapter`].
#[derive(Module, Debug)]
pub struct Projection {
    /// `[in, out]` (the transpose of PyTorch's `[out, in]`); an empty `[in, 0]` placeholder
    /// (in the compute dtype) while the base is [`quantized`](Self::quantized).
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, when one is injected.
    pub lora: Option<LoraAdapter>,
    /// The frozen base weight kept block-quantized (QLoRA's NF4 base, a GGUF file's blocks):
    /// the forward decodes it inside its products, and no dense copy exists. Not a parameter
    /// (never trained, never in a record).
    #[module(skip)]
    pub quantized: Option<QuantizedWeight>,
}

impl Projection {
    /// A projection without adapter.
    pub fn new(weight: Param<Tensor<2>>, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            quantized: None,
        }
    }

    /// Replace the base weight by its `ty` encoding (`name` for errors, e.g.
    /// `model.layers.0.self_attn.q_proj.weight`): NF4 as bitsandbytes' `quantize_4bit`, Q8_0
    /// as ggml. `weight` becomes an `[in, 0]` placeholder, so the dense weight's memory is
    /// freed once nothing else holds it. A projection already quantized is left as it is.
    ///
    /// # Errors
    /// [`temper_backend::BackendError`] naming the tensor (a non-finite value, a type Temper
    /// only reads).
    pub fn quantize_base(
        &mut self,
        name: &str,
        ty: QuantType,
    ) -> Result<(), temper_backend::BackendError> {
        if self.quantized.is_some() {
            return Ok(());
        }
        let w = self.weight.val();
        let [d_in, d_out] = w.dims();
        let (device, dtype) = (w.device(), w.dtype());
        // `[out, in]` row-major: PyTorch's layout, the one the blocks run along.
        let values = w
            .transpose()
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| temper_backend::BackendError::InvalidDType(format!("{name}: {e:?}")))?;
        self.quantized = Some(QuantizedWeight::quantize(name, &values, [d_out, d_in], ty)?);
        self.weight = Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(Vec::<f32>::new(), [d_in, 0]), &device)
                .cast(dtype),
        )
        .set_require_grad(false);
        Ok(())
    }

    /// A projection over an already-quantized frozen weight (`[out, in]`, e.g. a GGUF tensor's
    /// blocks), with a placeholder `weight` in `dtype` on `device`.
    pub fn from_quantized(
        weight: QuantizedWeight,
        bias: Option<Param<Tensor<1>>>,
        dtype: DType,
        device: &burn::tensor::Device,
    ) -> Self {
        let [_, d_in] = weight.shape();
        let placeholder =
            Tensor::<2>::from_data(TensorData::new(Vec::<f32>::new(), [d_in, 0]), device)
                .cast(dtype);
        Self {
            weight: Param::from_tensor(placeholder).set_require_grad(false),
            bias,
            lora: None,
            quantized: Some(weight),
        }
    }

    /// The base weight `[in, out]` as a dense tensor: `weight`, or the quantized base decoded
    /// (in f32, on `weight`'s device) — for saving and merging, never for the forward.
    pub fn dense_weight(&self) -> Tensor<2> {
        match &self.quantized {
            None => self.weight.val(),
            Some(q) => {
                let [d_out, d_in] = q.shape();
                Tensor::<2>::from_data(
                    TensorData::new(q.dequantize(), [d_out, d_in]),
                    &self.weight.val().device(),
                )
                .transpose()
            }
        }
    }

    /// Make the base dense again (`weight` = the decoded base in the placeholder's dtype),
    /// dropping the quantized blocks: merging an adapter into a quantized base writes a dense model, never a
    /// re-quantized one (the QLoRA merge pitfall, peft#1080).
    pub fn dequantize_base(&mut self) {
        if self.quantized.is_some() {
            // In the placeholder's dtype (the run's compute dtype): a merged 8B model in bf16
            // is half the memory of one in f32, and it is saved in that dtype anyway.
            let dtype = self.weight.val().dtype();
            let dense = self.dense_weight();
            let dense = if dense.dtype() == dtype {
                dense
            } else {
                dense.cast(dtype)
            };
            self.weight = Param::from_tensor(dense).set_require_grad(false);
            self.quantized = None;
        }
    }

    /// `[..., in]` → `[..., out]`: the base layer, plus the adapter's update when it is
    /// present, enabled and not merged.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.quantized.is_some() {
            // A quantized base has its own product; the adapter adds its update beside it.
            return match &self.lora {
                Some(lora) if lora.is_active() => self.forward_base(x.clone()) + lora.delta(x),
                _ => self.forward_base(x),
            };
        }
        match &self.lora {
            // Without dropout the base and the update read the same input: one fused node.
            Some(lora) if lora.is_active() && lora.dropout.prob == 0.0 => lora_linear(
                x,
                self.weight.val(),
                self.bias.as_ref().map(Param::val),
                lora.lora_a.val(),
                lora.lora_b.val(),
                lora.scale,
            ),
            Some(lora) if lora.is_active() => self.forward_base(x.clone()) + lora.delta(x),
            _ => self.forward_base(x),
        }
    }

    /// The base layer only, whatever the adapter.
    pub fn forward_base<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        match &self.quantized {
            Some(q) => quant_linear(x, q, bias),
            None => linear(x, self.weight.val(), bias),
        }
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(q) = &self.quantized {
            let [d_out, d_in] = q.shape();
            return (d_in, d_out);
        }
        let [d_in, d_out] = self.weight.val().dims();
        (d_in, d_out)
    }
}

impl From<Linear> for Projection {
    fn from(l: Linear) -> Self {
        Self::new(l.weight, l.bias)
    }
}

impl From<Projection> for Linear {
    /// Drops the adapter (merge it first to keep its effect); a quantized base is decoded.
    fn from(mut p: Projection) -> Self {
        p.dequantize_base();
        Linear {
            weight: p.weight,
            bias: p.bias,
        }
    }
}
