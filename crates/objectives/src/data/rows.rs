//! Tokenised training rows in the shape an objective reads, and reading them from JSONL by
//! [`RowKind`].

use std::path::Path;

use super::example::{Document, PreferenceRow, SftRow, UnpairedRow};
use super::jsonl::{DEFAULT_MAX_LINE_BYTES, ReadOptions, first_lines, read_jsonl};
use super::pack::{PackOptions, PackedBlock, pack_documents};
use super::pack_sft::{PackingStrategy, pack_sft};
use super::preprocessor::Preprocessor;
use super::tokenize::{PreferenceTokens, SftOptions, SftTokens, UnpairedTokens, text_byte_bound};
use crate::objective::RowKind;
use crate::{ObjectiveError, Result};

/// Tokenised rows, in the shape the objective needs.
#[derive(Debug, Clone)]
pub enum TrainRows {
    /// CPT/SFT sequences with their labels (`-100` where no loss is taken).
    Sequences(Vec<SftTokens>),
    /// Packed blocks: CPT documents, or SFT rows packed as TRL does (position ids restarting
    /// per row for `bfd`/`bfd_split`, which the forward pass turns into a block-diagonal mask).
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
    /// SFT: pack the rows into `max_length` blocks with this strategy (TRL `packing=True`,
    /// `packing_strategy`); `None`: one sequence per row. CPT documents are always packed.
    pub packing: Option<PackingStrategy>,
}

impl Default for RowOptions {
    fn default() -> Self {
        Self {
            max_length: Some(1024),
            completion_only_loss: true,
            packing: None,
        }
    }
}

/// Reads the JSONL file `path` as rows of `kind` and tokenises them with `pre`: documents are
/// packed into `max_length` blocks separated by EOS, SFT rows become sequences (or, with
/// [`RowOptions::packing`], blocks packed as TRL does, see [`pack_sft`]), pairs and unpaired
/// rows are tokenised with their prompt boundary.
///
/// # Errors
/// Unreadable or malformed JSONL (naming the line and field), tokenisation failures, no
/// usable rows, `packing` for rows other than SFT sequences or without `max_length`.
pub fn read_train_rows(
    path: &Path,
    kind: RowKind,
    pre: &Preprocessor,
    options: &RowOptions,
) -> Result<TrainRows> {
    let max_length = options.max_length;
    let packing = match (options.packing, kind) {
        (None, _) | (_, RowKind::Documents) => None,
        (Some(strategy), RowKind::Sequences) => Some((
            strategy,
            max_length.ok_or_else(|| {
                ObjectiveError::Invalid("packing needs a max_length (the block length)".into())
            })?,
        )),
        (Some(_), other) => {
            return Err(ObjectiveError::Invalid(format!(
                "packing applies to SFT rows, not to {}",
                other.name()
            )));
        }
    };
    // `bfd_split` and `wrapped` keep every token of a row: read and tokenise rows whole.
    let bound = match packing {
        Some((strategy, _)) if strategy.keeps_every_token() => None,
        _ => max_length,
    };
    let read = ReadOptions {
        max_line_bytes: line_byte_bound(kind, bound),
        ..ReadOptions::default()
    };
    // (rows, the line of each, rows dropped after tokenising, why they were dropped)
    let (rows, left_out, dropped, why) = match kind {
        RowKind::Documents => {
            let docs = read_jsonl::<Document>(path, &read)?;
            let ids = pre.prepare_documents(&docs.rows)?;
            let block = max_length.unwrap_or(1024);
            let rows = TrainRows::Packed(pack_documents(
                &ids,
                &PackOptions::new(block, Some(pre.eos_id())),
            )?);
            (rows, docs.left_out(read.max_line_bytes), Vec::new(), "")
        }
        RowKind::Sequences => {
            let loaded = read_jsonl::<SftRow>(path, &read)?;
            // `bfd` truncates rows to `max_length` as the unpacked path does; the other
            // strategies keep them whole (TRL skips its own truncation when packing).
            let sft = SftOptions {
                max_length: bound,
                completion_only_loss: options.completion_only_loss,
                ..SftOptions::default()
            };
            let prepared = pre.prepare_sft(&loaded.rows, &sft)?;
            let rows = match packing {
                Some((strategy, block)) => {
                    TrainRows::Packed(pack_sft(&prepared.rows, block, strategy)?)
                }
                None => TrainRows::Sequences(prepared.rows),
            };
            (
                rows,
                loaded.left_out(read.max_line_bytes),
                lines_of(&prepared.dropped, &loaded.row_lines),
                "no target token left within max_length",
            )
        }
        RowKind::PreferencePairs => {
            let loaded = read_jsonl::<PreferenceRow>(path, &read)?;
            let prepared = pre.prepare_preference(&loaded.rows, max_length)?;
            (
                TrainRows::Preference(prepared.rows),
                loaded.left_out(read.max_line_bytes),
                lines_of(&prepared.dropped, &loaded.row_lines),
                "prompt alone fills max_length",
            )
        }
        RowKind::Unpaired => {
            let loaded = read_jsonl::<UnpairedRow>(path, &read)?;
            let prepared = pre.prepare_unpaired(&loaded.rows, max_length)?;
            (
                TrainRows::Unpaired(prepared.rows),
                loaded.left_out(read.max_line_bytes),
                lines_of(&prepared.dropped, &loaded.row_lines),
                "prompt alone fills max_length",
            )
        }
    };
    if rows.is_empty() {
        let mut reasons = Vec::new();
        if !dropped.is_empty() {
            reasons.push(format!(
                "{} row(s) too long ({why}, max_length {}; first lines: {})",
                dropped.len(),
                max_length.map_or_else(|| "none".to_string(), |n| n.to_string()),
                first_lines(dropped.iter().copied())
            ));
        }
        if !left_out.is_empty() {
            reasons.push(left_out);
        }
        let reasons = if reasons.is_empty() {
            "the file has no rows".to_string()
        } else {
            reasons.join("; ")
        };
        return Err(ObjectiveError::Invalid(format!(
            "{}: no usable {}: {reasons}",
            path.display(),
            kind.name()
        )));
    }
    Ok(rows)
}

/// The longest JSONL line read for rows of `kind`: CPT documents are used whole (64 MiB, the
/// default cap); other rows only to [`text_byte_bound`] bytes of text, so a line 16 times that
/// (JSON escapes take up to 6 bytes per character, and a pair holds a prompt and two answers)
/// cannot hold a row that tokenises to anything more. Longer lines are dropped as too long.
pub fn line_byte_bound(kind: RowKind, max_length: Option<usize>) -> usize {
    match (kind, max_length) {
        (RowKind::Documents, _) | (_, None) => DEFAULT_MAX_LINE_BYTES,
        (_, Some(n)) => text_byte_bound(n)
            .saturating_mul(16)
            .min(DEFAULT_MAX_LINE_BYTES),
    }
}

/// The file lines of the rows at `indices`.
fn lines_of(indices: &[usize], row_lines: &[usize]) -> Vec<usize> {
    indices
        .iter()
        .filter_map(|&i| row_lines.get(i).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;
    use crate::data::preprocessor::tests::pre;

    fn file(lines: &[Vec<u8>]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            f.write_all(l).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f
    }

    fn row(prompt: &str, completion: &str) -> Vec<u8> {
        serde_json::json!({"prompt": prompt, "completion": completion})
            .to_string()
            .into_bytes()
    }

    const SMALL: RowOptions = RowOptions {
        max_length: Some(8),
        completion_only_loss: true,
        packing: None,
    };

    /// A 50 MB line is skipped unread (its line listed), the other rows are kept.
    #[test]
    fn huge_lines_are_dropped_before_tokenising() {
        let huge = row(&"the sky is blue . ".repeat(3_000_000), "yo");
        assert!(huge.len() > 50_000_000);
        let f = file(&[row("the sky", "is blue"), huge, row("hi", "yo")]);
        let rows = read_train_rows(f.path(), RowKind::Sequences, &pre(), &SMALL).unwrap();
        assert_eq!(rows.len(), 2);
    }

    /// A row over the text bound but under the line cap is cut before tokenising and keeps the
    /// same first `max_length` tokens (keep-start truncation, as before).
    #[test]
    fn long_rows_keep_their_first_tokens() {
        let long_text = format!("the sky is {}", "blue ".repeat(40_000));
        assert!(long_text.len() > text_byte_bound(8));
        let line = serde_json::json!({"text": long_text})
            .to_string()
            .into_bytes();
        let f = file(&[line]);
        let opts = RowOptions {
            completion_only_loss: false,
            ..SMALL
        };
        let TrainRows::Sequences(rows) =
            read_train_rows(f.path(), RowKind::Sequences, &pre(), &opts).unwrap()
        else {
            panic!("sequences expected");
        };
        assert_eq!(rows[0].input_ids, vec![1, 4, 5, 6, 7, 7, 7, 7]);
    }

    /// With `packing`, SFT rows come back as TRL's blocks of the same rows; other rows and a
    /// missing `max_length` are refused, naming `packing`.
    #[test]
    fn sft_rows_pack_when_asked_and_other_rows_refuse() {
        let f = file(&[
            row("the sky", "is blue"),
            row("hi", "yo"),
            row("the sky", "is"),
        ]);
        let plain_opts = RowOptions {
            max_length: Some(16),
            ..SMALL
        };
        let packed_opts = RowOptions {
            packing: Some(PackingStrategy::Bfd),
            ..plain_opts.clone()
        };
        let read = |kind, opts: &RowOptions| read_train_rows(f.path(), kind, &pre(), opts);
        let Ok(TrainRows::Sequences(plain)) = read(RowKind::Sequences, &plain_opts) else {
            panic!("sequences expected");
        };
        let Ok(TrainRows::Packed(blocks)) = read(RowKind::Sequences, &packed_opts) else {
            panic!("packed blocks expected");
        };
        assert!(blocks.len() < plain.len());
        assert_eq!(blocks, pack_sft(&plain, 16, PackingStrategy::Bfd).unwrap());
        for kind in [RowKind::PreferencePairs, RowKind::Unpaired] {
            let err = read(kind, &packed_opts).unwrap_err().to_string();
            assert!(err.contains("packing applies to SFT rows"), "{err}");
        }
        let no_length = RowOptions {
            max_length: None,
            ..packed_opts
        };
        let err = read(RowKind::Sequences, &no_length)
            .unwrap_err()
            .to_string();
        assert!(err.contains("packing needs a max_length"), "{err}");
    }

    /// "No usable rows" says why: rows too long after tokenising, lines over the cap,
    /// malformed lines are errors of their own, blank lines counted.
    #[test]
    fn no_usable_rows_says_why() {
        let cap = line_byte_bound(RowKind::Sequences, SMALL.max_length);
        let long_prompt = "the sky is blue . ".repeat(10);
        let f = file(&[
            row(&long_prompt, "yo"),
            Vec::new(),
            vec![b'x'; cap + 1],
            row(&long_prompt, "hi"),
        ]);
        let err = read_train_rows(f.path(), RowKind::Sequences, &pre(), &SMALL)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no usable"), "{err}");
        assert!(
            err.contains("2 row(s) too long") && err.contains("first lines: 1, 4"),
            "{err}"
        );
        assert!(
            err.contains(&format!("1 line(s) over {cap} bytes (first: 3)")),
            "{err}"
        );
        assert!(err.contains("1 blank"), "{err}");
    }
}
