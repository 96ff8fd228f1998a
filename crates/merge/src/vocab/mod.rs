//! Output vocabularies: mergekit's `tokenizer: {source: base | union | <model>,
//! pad_to_multiple_of: N}` (and the legacy `tokenizer_source: ...`).
//!
//! When a tokenizer source is set, the output vocabulary is built from the input models'
//! `tokenizer.json` files and every vocabulary-axis tensor (`model.embed_tokens.weight`,
//! `lm_head.weight`: one row per token) of every input is re-laid-out to it before merging,
//! so that row `i` of every input means the same token. Models may then have different
//! vocabularies, in size and in order.
//!
//! * **Vocabularies.** A model's vocabulary is `model.vocab` of its `tokenizer.json` (a
//!   `{token: id}` map — BPE, WordPiece, WordLevel — or Unigram's `[[piece, score], ...]` list,
//!   where the id is the position) plus its `added_tokens` (`[{id, content, ...}]`; an added
//!   token's id wins over a `model.vocab` entry of the same content). Tokens whose id is not
//!   below the model's row count (its embedding rows, or `vocab_size` of its `config.json`
//!   when smaller) have no row and are ignored, with their merges.
//! * **Sources.** `base`: the base model's vocabulary (the first model's without
//!   `base_model`). `union`: the base model's tokens at their own ids, then the tokens only
//!   other models have, in model order: first their ordinary (`model.vocab`) tokens by id,
//!   then their added tokens by id (a token that is an added token in any model is added with
//!   the first such model's settings). `<model>`: that model's vocabulary; the model may be one
//!   of the merged models (by the name used in the config, or by its path) or any directory
//!   with a `tokenizer.json` (`base` and `union` are keywords, never model names).
//!   `pad_to_multiple_of: N` rounds the row count up to a multiple of `N`.
//! * **Rows** (per input model, per vocabulary tensor): a token the model has gets its own
//!   row. A token it lacks gets one default row shared by all the models lacking it: the base
//!   model's row if the base model is an input of the tensor and has the token, else the row
//!   of the single input model that has it, else the mean of the rows of the input models that
//!   have it (accumulated in input order in the load dtype, as torch would), else zeros.
//!   Padding rows (and ids no token uses) get the mean of the model's own token rows, as
//!   mergekit does (after <https://nlp.stanford.edu/~johnhew/vocab-expansion.html>).
//! * **Output tokenizer.** `base` / `<model>`: that model's tokenizer files are copied
//!   ([`tokenizer::TOKENIZER_FILES`]). `union`: the same files of the base model, with the
//!   extra tokens appended to `tokenizer.json`'s `added_tokens` (ids = their output rows;
//!   ordinary tokens as HF's `add_tokens` adds them: `special: false, normalized: true`, no
//!   strip, not single-word), and to `tokenizer_config.json`'s `added_tokens_decoder` and
//!   `added_tokens.json` where those exist. The output `config.json` gets
//!   `vocab_size` = the output row count.
//!
//! Deviations from mergekit 0.1.5 (`mergekit/tokenizer/`):
//! * Tokenizers are read from `tokenizer.json` only (no `AutoTokenizer`): a model without one
//!   (an in-memory model, a `tokenizer.model`-only checkpoint) is an error naming it, where
//!   mergekit logs the failure and assumes the base model's tokenizer.
//! * The order of `union`'s new tokens is deterministic (id order within each model);
//!   mergekit walks `get_vocab()` dictionaries, whose order for fast tokenizers is a hash
//!   order. The base model's ids are kept, so the base rows line up either way.
//! * `union` requires the base vocabulary's ids to be exactly `0..n` (the `tokenizers` library
//!   renumbers appended tokens from the end of the vocabulary, so a vocabulary with holes would
//!   load with other ids than the rows written).
//! * Token ids beyond a model's rows are dropped for every model and every source; mergekit
//!   strips the base tokenizer only (for `base` and `union`), and keeps them for `<model>`.
//!   When the output tokenizer is stripped, BPE merges whose parts *or result* were dropped
//!   are removed too (mergekit checks the parts only, which can leave a file that does not
//!   load).
//! * The base model's row fills a missing token only when the base model is an input of the
//!   tensor (for `linear`, list it among the models); mergekit adds `base_model` to the donors
//!   even when the method does not take it. Means sum in input order (mergekit: set order).
//! * Per-token overrides (`tokens: {tok: {source, force}}`) are not supported (an unknown key
//!   of `tokenizer:`). Slow-tokenizer files (`tokenizer.model`, `vocab.json`, `merges.txt`)
//!   are copied unchanged, and a rewritten `tokenizer.json` has its keys in sorted order;
//!   mergekit re-serialises the whole tokenizer with `save_pretrained`.

mod build;
mod permute;
mod read;
mod tokenizer;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub(crate) use build::build_vocab_plan;
pub(crate) use permute::permute_rows;
pub(crate) use tokenizer::{copy_tokenizer_files, write_tokenizer};

/// Where the output vocabulary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabSource {
    /// The base model's (the first model's without `base_model`).
    Base,
    /// The base model's, extended with every other model's tokens.
    Union,
    /// A model's tokenizer: `index` among the merge's models when it is one of them.
    Model { label: String, index: Option<usize> },
}

impl fmt::Display for VocabSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base => f.write_str("base"),
            Self::Union => f.write_str("union"),
            Self::Model { label, .. } => f.write_str(label),
        }
    }
}

/// The output vocabulary of a merge and, for every input model, where each output row comes
/// from. Built once per merge by `build_vocab_plan`; applied per tensor by `permute_rows`;
/// the output tokenizer is written by `write_tokenizer`.
pub struct VocabPlan {
    source: VocabSource,
    /// The token of each output row before padding (`None`: an id no token uses).
    tokens: Vec<Option<String>>,
    /// Output rows, padding included.
    rows: usize,
    /// Per model (aligned with the merge's models): its row for each entry of `tokens`.
    own: Vec<Vec<Option<usize>>>,
    labels: Vec<String>,
    /// The base model (index among the merge's models), the first donor for missing tokens.
    base: Option<usize>,
    /// Where the output's tokenizer files are copied from.
    tokenizer_dir: PathBuf,
    /// Drop tokens with ids at or above this from the copied `tokenizer.json`.
    strip_at: Option<usize>,
    /// `added_tokens` entries appended to the copied `tokenizer.json` (`union`).
    appended: Vec<Value>,
}

impl fmt::Debug for VocabPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VocabPlan")
            .field("source", &self.source)
            .field("tokens", &self.len())
            .field("rows", &self.rows)
            .field("models", &self.labels)
            .field("base", &self.base)
            .field("tokenizer_dir", &self.tokenizer_dir)
            .field("strip_at", &self.strip_at)
            .field("appended", &self.appended.len())
            .finish()
    }
}

impl VocabPlan {
    /// Where the vocabulary comes from.
    pub fn source(&self) -> &VocabSource {
        &self.source
    }

    /// Output rows of the vocabulary tensors (the output `vocab_size`), padding included.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of tokens in the output vocabulary.
    pub fn len(&self) -> usize {
        self.tokens.iter().flatten().count()
    }

    /// Whether the output vocabulary has no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token of output row `row` (`None` for padding).
    pub fn token(&self, row: usize) -> Option<&str> {
        self.tokens.get(row).and_then(Option::as_deref)
    }

    /// The row of model `model` (index among the merge's models) holding the token of output
    /// row `row`, if that model has the token.
    pub fn model_row(&self, model: usize, row: usize) -> Option<usize> {
        self.own
            .get(model)
            .and_then(|o| o.get(row))
            .copied()
            .flatten()
    }

    /// Rows model `model`'s vocabulary tensors need (its largest id used, plus one).
    pub fn rows_needed(&self, model: usize) -> usize {
        self.own
            .get(model)
            .and_then(|o| o.iter().flatten().max())
            .map_or(0, |m| m + 1)
    }

    /// The tokens appended to the base tokenizer (`union`), in output row order.
    pub fn added_tokens(&self) -> impl Iterator<Item = &str> {
        self.appended
            .iter()
            .filter_map(|e| e.get("content").and_then(Value::as_str))
    }

    /// The directory the output tokenizer files are copied from.
    pub fn tokenizer_dir(&self) -> &Path {
        &self.tokenizer_dir
    }
}
