//! QLoRA's frozen base: the projections' weights kept block-quantized while adapters train on
//! top (PEFT + bitsandbytes' `load_in_4bit` with `bnb_4bit_quant_type="nf4"` and
//! `bnb_4bit_use_double_quant=True`).

use temper_llm_arch::LlamaForCausalLM;

pub use temper_backend::QuantType;

use crate::Result;
use crate::adapter::projections_mut;

/// Quantize every projection's base weight (the seven linear layers of each decoder layer) to
/// `ty`; the embedding, the norms and the LM head stay in their dtype, as in QLoRA. The
/// dense weights are dropped as each projection is quantized, so peak memory grows by one
/// projection, not by a model. Projections already quantized (a GGUF model's own blocks) are
/// left as they are.
///
/// # Errors
/// [`crate::LoraError::Backend`] naming the tensor: a non-finite weight, a type Temper only
/// reads (the ggml K-quants), a shape the encoding refuses.
pub fn quantize_base(mut model: LlamaForCausalLM, ty: QuantType) -> Result<LlamaForCausalLM> {
    for (path, proj) in projections_mut(&mut model) {
        proj.quantize_base(&format!("{path}.weight"), ty)?;
    }
    Ok(model)
}
