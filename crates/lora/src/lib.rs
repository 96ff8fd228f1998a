//! PEFT-compatible LoRA for [`temper_llm_arch`] models.
//!
//! # Quick start
//!
//! Inject rank-2 adapters into every projection of a tiny decoder, save them as PEFT's two
//! files and load them back onto a fresh base:
//!
//! ```
//! use temper_backend::DeviceSpec;
//! use temper_llm_arch::{LlamaForCausalLM, ModelConfig};
//! use temper_lora::{
//!     ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, adapter_paths, inject, load_adapter,
//!     num_trainable_params, save_adapter,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = DeviceSpec::CPU.with_autodiff(true).device()?;
//! // vocabulary 16, hidden size 16 (MLP 32), 2 layers, 4 heads of 4 sharing 2 key/value heads
//! let config = ModelConfig::tiny(16, 16, 2, 4, 2);
//! let lora = LoraConfig::new(2, 4.0); // r = 2, α = 4: all seven projections
//! let model = inject(LlamaForCausalLM::init(&config, &device), &lora, &device)?;
//! assert_eq!(adapter_paths(&model).len(), 2 * 7);
//! // Only the adapters train: r·(in + out) per projection, q/o 16→16, k/v 16→8, MLP 16↔32.
//! assert_eq!(num_trainable_params(&model), 2 * 2 * (2 * 32 + 2 * 24 + 3 * 48));
//!
//! let dir = tempfile::tempdir()?;
//! save_adapter(&model, &lora, dir.path())?;
//! assert!(dir.path().join(ADAPTER_CONFIG).is_file());
//! assert!(dir.path().join(ADAPTER_WEIGHTS).is_file());
//! let base = LlamaForCausalLM::init(&config, &device);
//! let (reloaded, saved) = load_adapter(base, dir.path(), &device)?;
//! assert_eq!(saved.r, 2);
//! assert_eq!(adapter_paths(&reloaded), adapter_paths(&model));
//! # Ok(()) }
//! ```
//!
//! In a training run the adapted model goes to an optimiser; afterwards
//! [`merge_and_unload`] folds the adapters into the base weights (a plain model, same
//! outputs).
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
