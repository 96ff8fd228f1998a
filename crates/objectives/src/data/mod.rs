//! Data preparation for the objectives, following TRL 1.16's dataset handling.
//!
//! Pipeline: read JSONL rows ([`jsonl`], row types in [`example`]) → tokenise them as TRL does
//! ([`Preprocessor`]: chat template, EOS, prompt/completion boundary, truncation,
//! dropping) → pack CPT documents ([`pack`]) and, when asked, SFT rows
//! ([`pack_sft`](mod@pack_sft)) → collate batches with padding, masks and labels ([`collate`];
//! packed rows kept apart by [`packed_mask`]) → burn tensors ([`collate::Batch::to_tensors`]).
//!
//! ```no_run
//! use temper_objectives::data::*;
//! # fn main() -> temper_objectives::Result<()> {
//! let pre = Preprocessor::from_hf_dir("SmolLM2-135M-Instruct")?;
//! let pairs = read_jsonl::<PreferenceRow>("prefs.jsonl", &ReadOptions::default())?;
//! let prepared = pre.prepare_preference(&pairs.rows, Some(1024))?;
//! let batch = collate_preference(&prepared.rows[..2], Some(1024), &PadOptions::new(pre.pad_id()))?;
//! // batch.batch.to_tensors(&device): input_ids/attention_mask/labels/completion_mask [4, T]
//! # Ok(()) }
//! ```

pub mod chat;
pub mod collate;
pub mod example;
pub mod jsonl;
pub mod lines;
pub mod pack;
pub mod pack_sft;
pub mod packed_mask;
pub mod preprocessor;
pub mod rows;
pub mod tokenize;

pub use chat::ChatFormat;
pub use collate::{
    Batch, BatchTensors, PadOptions, PreferenceBatch, UnpairedBatch, collate_packed,
    collate_preference, collate_sft, collate_unpaired,
};
pub use example::{
    Content, Document, PreferenceRow, PromptCompletion, SftRow, UnpairedRow, extract_prompt,
    unpair_preferences,
};
pub use jsonl::{
    DEFAULT_MAX_LINE_BYTES, JsonRow, Loaded, ReadOptions, SkippedLine, parse_jsonl, read_jsonl,
};
pub use pack::{BlockPacker, PackOptions, PackedBlock, pack_documents};
pub use pack_sft::{PackingStrategy, TRL_MAP_BATCH_SIZE, pack_sft, pack_sft_in_batches};
pub use preprocessor::Preprocessor;
pub use rows::{RowOptions, TrainRows, read_train_rows};
pub use tokenize::{
    PreferenceTokens, Prepared, SftOptions, SftTokens, UnpairedTokens, common_prefix_length,
};
