//! A collated micro-batch as objectives receive it.

use crate::data::{
    Batch, PadOptions, PreferenceBatch, TrainRows, UnpairedBatch, collate_packed,
    collate_preference, collate_sft, collate_unpaired,
};
use crate::{ObjectiveError, Result};

/// How rows are collated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollateOptions {
    /// Padding (its value never reaches a loss).
    pub pad: PadOptions,
    /// Truncate sequences (and each side of a pair) to this many tokens.
    pub max_length: Option<usize>,
}

impl CollateOptions {
    /// Padding with `pad_id`, truncation to `max_length`.
    pub fn new(pad_id: u32, max_length: Option<usize>) -> Self {
        Self {
            pad: PadOptions::new(pad_id),
            max_length,
        }
    }
}

/// The host-side tensors of a micro-batch, by row shape.
#[derive(Debug, Clone)]
pub enum BatchData {
    /// CPT/SFT sequences or packed blocks.
    Sequences(Batch),
    /// `[chosen rows; rejected rows]`.
    Preference(PreferenceBatch),
    /// KTO rows (and, for KTO losses that need it, the mismatched KL batch).
    Unpaired(UnpairedBatch),
}

/// One collated micro-batch: which rows it holds and their padded tensors.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Indices of the rows in the row set they came from (for precomputed reference caches).
    pub rows: Vec<usize>,
    /// The padded rows.
    pub data: BatchData,
}

impl MicroBatch {
    /// Collates the rows of `rows` at `indices`: sequences are truncated to
    /// `options.max_length` and right-padded, packed blocks keep their per-document position
    /// ids, pairs become `[chosen; rejected]`; `with_kl` adds KTO's KL batch (each prompt with
    /// another row's completion).
    ///
    /// # Errors
    /// Empty rows or indices, a pair or row that does not fit `max_length`.
    pub fn collate(
        rows: &TrainRows,
        indices: &[usize],
        options: &CollateOptions,
        with_kl: bool,
    ) -> Result<Self> {
        let max_length = options.max_length;
        let pad = &options.pad;
        let data = match rows.select(indices) {
            TrainRows::Sequences(mut seqs) => {
                if let Some(n) = max_length {
                    seqs.iter_mut().for_each(|s| s.truncate(n));
                }
                BatchData::Sequences(collate_sft(&seqs, pad)?)
            }
            TrainRows::Packed(blocks) => BatchData::Sequences(collate_packed(&blocks, pad)?),
            TrainRows::Preference(pairs) => {
                BatchData::Preference(collate_preference(&pairs, max_length, pad)?)
            }
            TrainRows::Unpaired(rows) => {
                BatchData::Unpaired(collate_unpaired(&rows, max_length, pad, with_kl)?)
            }
        };
        Ok(Self {
            rows: indices.to_vec(),
            data,
        })
    }

    /// The sequences (every row), whatever the shape.
    pub fn batch(&self) -> &Batch {
        match &self.data {
            BatchData::Sequences(b) => b,
            BatchData::Preference(p) => &p.batch,
            BatchData::Unpaired(u) => &u.batch,
        }
    }

    /// Attended (non-padding) tokens.
    pub fn tokens(&self) -> usize {
        self.batch()
            .attention_mask
            .iter()
            .flatten()
            .filter(|&&a| a != 0)
            .count()
    }

    /// Target tokens (labels other than `-100`).
    pub fn targets(&self) -> usize {
        self.batch().num_targets()
    }

    /// The sequences of a CPT/SFT micro-batch.
    ///
    /// # Errors
    /// Another shape; the message names `objective`.
    pub fn sequences(&self, objective: &str) -> Result<&Batch> {
        match &self.data {
            BatchData::Sequences(b) => Ok(b),
            _ => Err(self.wrong_shape(objective)),
        }
    }

    /// The pairs of a preference micro-batch.
    ///
    /// # Errors
    /// Another shape; the message names `objective`.
    pub fn preference(&self, objective: &str) -> Result<&PreferenceBatch> {
        match &self.data {
            BatchData::Preference(p) => Ok(p),
            _ => Err(self.wrong_shape(objective)),
        }
    }

    /// The rows of a KTO micro-batch.
    ///
    /// # Errors
    /// Another shape; the message names `objective`.
    pub fn unpaired(&self, objective: &str) -> Result<&UnpairedBatch> {
        match &self.data {
            BatchData::Unpaired(u) => Ok(u),
            _ => Err(self.wrong_shape(objective)),
        }
    }

    fn wrong_shape(&self, objective: &str) -> ObjectiveError {
        let shape = match &self.data {
            BatchData::Sequences(_) => "sequences",
            BatchData::Preference(_) => "preference pairs",
            BatchData::Unpaired(_) => "unpaired rows",
        };
        ObjectiveError::Invalid(format!("objective `{objective}` cannot train on {shape}"))
    }
}
