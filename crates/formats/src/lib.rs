//! # temper-formats
//!
//! The files several Temper crates read or write, each in one place (issue 19, "one home per
//! file format"), without burn or the `tokenizers` crate, so every crate can depend on it:
//!
//! * [`atomic`] — write a file atomically (temporary sibling, fsync, rename), and
//!   [`staging`] — build a directory beside its destination and rename it into place, and
//!   [`stale`] — remove what interrupted writers left behind;
//! * [`mmap`] — the one read-only memory map (and the one `unsafe` call) of the workspace,
//!   and [`regular`] — open only regular files (a FIFO or a device would block or never end);
//! * [`safetensors`] — the layout of a safetensors file from its tensors' shapes, so writers
//!   stream the data one tensor at a time, and [`safetensors_check`] — reading one: the
//!   header and the shard index, checked naming the tensor;
//! * [`quant`] — block-quantized weight encodings (NF4 as bitsandbytes, Q8_0 and the GGUF
//!   blocks as ggml), each bit-exact with its peer;
//! * [`peft`] — PEFT's `adapter_config.json` and its module matching (`target_modules`,
//!   `rank_pattern`, `alpha_pattern`), as PEFT 0.21 applies them;
//! * [`tokenizer`] — `tokenizer_config.json` (special tokens, chat templates) and the
//!   tokenizer files of an HF directory;
//! * [`hub`] — models named by hub id (`org/name@revision`) found in the local Hugging Face
//!   cache, and (feature `download`) `hub_download` — fetched into it when missing.
//!
//! # Quick start
//!
//! Read a PEFT `adapter_config.json` and ask which modules get an adapter, with which rank
//! and scale, as PEFT would:
//!
//! ```
//! use std::path::Path;
//! use temper_formats::peft::{LayerKind, LoraConfig};
//!
//! # fn main() -> temper_formats::Result<()> {
//! let json = br#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16,
//!                 "target_modules": ["q_proj", "v_proj"],
//!                 "rank_pattern": {"layers.0.self_attn.q_proj": 4}}"#;
//! let config = LoraConfig::from_json_slice(json, Path::new("adapter_config.json"))?;
//! let matcher = config.target_matcher()?.expect("target_modules is set");
//! assert!(matcher.matches("model.layers.3.self_attn.q_proj", LayerKind::Linear));
//! assert!(!matcher.matches("model.layers.3.self_attn.o_proj", LayerKind::Linear));
//! // α / r, with the rank of layer 0's q_proj taken from `rank_pattern`.
//! assert_eq!(config.scale_for("model.layers.3.self_attn.q_proj"), 2.0);
//! assert_eq!(config.scale_for("model.layers.0.self_attn.q_proj"), 4.0);
//! # Ok(()) }
//! ```

pub mod atomic;
mod error;
pub mod hub;
#[cfg(feature = "download")]
pub mod hub_download;
pub mod mmap;
pub mod peft;
pub mod quant;
pub mod regular;
pub mod safetensors;
pub mod safetensors_check;
pub mod staging;
pub mod stale;
pub mod tokenizer;

pub use atomic::{AtomicFile, write_atomic};
pub use error::{FormatsError, Result};
pub use mmap::{Mmap, map_file};
pub use regular::{open_regular, read_regular, read_regular_to_string};
pub use staging::{StagingDir, check_output_dir};
pub use stale::{Sweep, sweep_stale_temps};
