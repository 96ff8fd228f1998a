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
//!   cache.

pub mod atomic;
mod error;
pub mod hub;
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
