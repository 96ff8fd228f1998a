//! Tokenised training rows in the shape an objective reads, and reading them from JSONL by
//! [`RowKind`].

use std::path::Path;

use super::example::{Document, PreferenceRow, SftRow, UnpairedRow};
use super::jsonl::{ReadOptions, read_jsonl};
use super::pack::{PackOptions, PackedBlock, pack_documents};
use super::preprocessor::Preprocessor;
use super::tokenize::{PreferenceTokens, SftOptions, SftTokens, UnpairedTokens};
use crate::objective::RowKind;
use crate::{ObjectiveError, Result};

/// Tokenised rows, in the shape the objective needs.
#[derive(Debug, Clone)]
pub enum TrainRows {
    /// CPT/SFT sequences with their labels (`-100` where no loss is taken).
    Sequences(Vec<SftTokens>),
    /// CPT packed blocks (carry position ids restarting per document).
    Packed(Vec<PackedBlock>),
    /// DPO/ORPO/SimPO/CPO pairs.
    Preference(Vec<PreferenceTokens>),
    /// KTO rows.
    Unpaired(Vec<UnpairedTokens>),
}

impl TrainRows {
    /// Number of rows (pairs for preference data).
    pub fn len(&self) -> usize {
        match self {
            Self::Sequences(r) => r.len(),
            Self::Packed(r) => r.len(),
            Self::Preference(r) => r.len(),
            Self::Unpaired(r) => r.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The longest row in tokens: the sequence length a batch is padded to at most (a pair's
    /// prompt with its longer answer).
    pub fn longest(&self) -> usize {
        match self {
            Self::Sequences(r) => r.iter().map(|s| s.input_ids.len()).max(),
            Self::Packed(r) => r.iter().map(|b| b.input_ids.len()).max(),
            Self::Preference(r) => r
                .iter()
                .map(|p| p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len()))
                .max(),
            Self::Unpaired(r) => r
                .iter()
                .map(|u| u.prompt_ids.len() + u.completion_ids.len())
                .max(),
        }
        .unwrap_or(0)
    }

    /// Sequences a row puts through the model in one step: 2 for a preference pair (chosen
    /// and rejected) and for a KTO row (its completion and a mismatched one for the KL term).
    pub fn sequences_per_row(&self) -> usize {
        match self {
            Self::Sequences(_) | Self::Packed(_) => 1,
            Self::Preference(_) | Self::Unpaired(_) => 2,
        }
    }

    /// The name of the row shape, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sequences(_) => "sequences",
            Self::Packed(_) => "packed blocks",
            Self::Preference(_) => "preference pairs",
            Self::Unpaired(_) => "unpaired (KTO) rows",
        }
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        fn pick<T: Clone>(rows: &[T], idx: &[usize]) -> Vec<T> {
            idx.iter().filter_map(|&i| rows.get(i).cloned()).collect()
        }
        match self {
            Self::Sequences(r) => Self::Sequences(pick(r, indices)),
            Self::Packed(r) => Self::Packed(pick(r, indices)),
            Self::Preference(r) => Self::Preference(pick(r, indices)),
            Self::Unpaired(r) => Self::Unpaired(pick(r, indices)),
        }
    }
}

/// How [`read_train_rows`] tokenises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOptions {
    /// Sequences (each side of a pair) longer than this are truncated or dropped as TRL does;
    /// documents are packed into blocks of this many tokens (default 1024 when `None`).
    pub max_length: Option<usize>,
    /// SFT: only completion/assistant tokens are targets.
    pub completion_only_loss: bool,
}

impl Default for RowOptions {
    fn default() -> Self {
        Self {
            max_length: Some(1024),
            completion_only_loss: true,
        }
    }
}

/// Reads the JSONL file `path` as rows of `kind` and tokenises them with `pre`: documents are
/// packed into `max_length` blocks separated by EOS, SFT rows become sequences, pairs and
/// unpaired rows are tokenised with their prompt boundary.
///
/// # Errors
/// Unreadable or malformed JSONL (naming the line and field), tokenisation failures, no
/// usable rows.
pub fn read_train_rows(
    path: &Path,
    kind: RowKind,
    pre: &Preprocessor,
    options: &RowOptions,
) -> Result<TrainRows> {
    let read = ReadOptions::default();
    let max_length = options.max_length;
    let rows = match kind {
        RowKind::Documents => {
            let docs = read_jsonl::<Document>(path, &read)?.rows;
            let ids = pre.prepare_documents(&docs)?;
            let block = max_length.unwrap_or(1024);
            TrainRows::Packed(pack_documents(
                &ids,
                &PackOptions::new(block, Some(pre.eos_id())),
            )?)
        }
        RowKind::Sequences => {
            let rows = read_jsonl::<SftRow>(path, &read)?.rows;
            let sft = SftOptions {
                max_length,
                completion_only_loss: options.completion_only_loss,
                ..SftOptions::default()
            };
            TrainRows::Sequences(pre.prepare_sft(&rows, &sft)?.rows)
        }
        RowKind::PreferencePairs => {
            let rows = read_jsonl::<PreferenceRow>(path, &read)?.rows;
            TrainRows::Preference(pre.prepare_preference(&rows, max_length)?.rows)
        }
        RowKind::Unpaired => {
            let rows = read_jsonl::<UnpairedRow>(path, &read)?.rows;
            TrainRows::Unpaired(pre.prepare_unpaired(&rows, max_length)?.rows)
        }
    };
    if rows.is_empty() {
        return Err(ObjectiveError::Invalid(format!(
            "{}: no usable {}",
            path.display(),
            kind.name()
        )));
    }
    Ok(rows)
}
