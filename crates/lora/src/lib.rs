//! PEFT-compatible LoRA for [`temper_llm_arch`] models.
//!
//! ```text
//! use temper_lora::{LoraConfig, LoraConfigExt};          // the schema is temper-formats'
//! let config = LoraConfig::new(16, 32.0);                 // all seven projections
//! let model = config.init(model, &device)?;               // adapters in, base frozen
//! // ... train: only adapter weights get gradients and optimiser state ...
//! save_adapter(&model, &config, "out/adapter")?;          // PEFT's two files
//! let (model, config) = load_adapter(base, "out/adapter", &device)?;
//! let merged = merge_and_unload(model)?;                  // plain model, same outputs
//! ```
//!
//! The adapter itself ([`LoraAdapter`]) lives in `temper-llm-arch`'s [`Projection`], because
//! the decoder's forward pass has to apply it; it computes `base(x) + scale·B(A(dropout(x)))`
//! as two thin matmuls and never builds the dense `[in, out]` update (burn's built-in
//! `apply_lora` does, every step).
//!
//! Semantics follow PEFT 0.21.2 (the config file and the matching rules are
//! `temper_formats::peft`'s, shared with `temper-merge`): `target_modules` matching,
//! `all-linear` (the seven projections, not `lm_head`), scale `α/r` or `α/√r` (rsLoRA), `rank_pattern` /
//! `alpha_pattern`, Kaiming-uniform / Gaussian init, adapter files
//! `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<path>.lora_A.weight` (`[r, in]`) and `.lora_B.weight` (`[out, r]`).
//! Not supported (rejected with [`LoraError::Unsupported`]): DoRA, bias training, PiSSA /
//! OLoRA / LoftQ init, adapters on `lm_head` / embeddings, several named adapters at once.

mod adapter;
mod adapter_dir;
mod error;
mod peft;
mod quantize;
mod supported;

pub use adapter::{
    adapter_paths, inject, inject_with_dtype, merge, merge_and_unload, num_trainable_params,
    projections, projections_mut, set_adapters_enabled, unload, unmerge, with_adapters_disabled,
};
pub use adapter_dir::{is_adapter_dir, load_merged_adapter, resolve_base_model};
pub use error::{LoraError, Result};
pub use peft::{adapter_tensors, load_adapter, save_adapter, save_merged};
pub use quantize::{QuantType, quantize_base};
pub use supported::LoraConfigExt;
/// The adapter files' schema, names and PEFT's module matching, from `temper-formats`.
pub use temper_formats::peft::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, ALL_LINEAR, InitLoraWeights, LoraConfig, PEFT_PREFIX,
    TargetModules,
};
pub use temper_llm_arch::{LoraAdapter, Projection};
