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
//!   ([`crate::output::TOKENIZER_FILES`]). `union`: the same files of the base model, with the
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::config::{ModelRef, resolve_model_path};
use crate::output::TOKENIZER_FILES;
use crate::source::{InputTensor, ModelSource};
use crate::{DType, MergeError, Result};

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
/// from. Built once per merge by [`build_vocab_plan`]; applied per tensor by
/// [`permute_rows`]; the output tokenizer is written by [`write_tokenizer`].
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

/// One model's vocabulary, read from its `tokenizer.json`.
struct Vocab {
    label: String,
    dir: PathBuf,
    /// Token → id (ids below the model's row limit only).
    ids: HashMap<String, usize>,
    /// `(id, token)` sorted by id (then token).
    entries: Vec<(usize, String)>,
    /// The `added_tokens` entries kept, by content.
    added: HashMap<String, Value>,
    /// Tokens dropped for having no row.
    stripped: usize,
    /// The row limit applied.
    limit: Option<usize>,
}

fn vocab_error(path: &Path, label: &str, msg: impl fmt::Display) -> MergeError {
    MergeError::checkpoint(path, format!("tokenizer of model {label}: {msg}"))
}

fn json_id(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// Read `dir/tokenizer.json`, keeping tokens with ids below `limit`.
fn read_vocab(dir: Option<&Path>, label: &str, limit: Option<usize>) -> Result<Vocab> {
    let Some(dir) = dir else {
        return Err(MergeError::Config(format!(
            "model {label} has no tokenizer.json (it is not a model directory); \
             `tokenizer`/`tokenizer_source` needs every model's tokenizer"
        )));
    };
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(MergeError::checkpoint(
            &path,
            format!(
                "model {label} has no tokenizer.json, which `tokenizer`/`tokenizer_source` \
                 needs for every model (save the tokenizer with transformers to create it)"
            ),
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| MergeError::io(&path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| vocab_error(&path, label, format!("invalid JSON: {e}")))?;
    let mut ids: HashMap<String, usize> = HashMap::new();
    match json.get("model").and_then(|m| m.get("vocab")) {
        Some(Value::Object(map)) => {
            for (tok, id) in map {
                let id = json_id(id).ok_or_else(|| {
                    vocab_error(&path, label, format!("model.vocab[{tok:?}] is not an id"))
                })?;
                ids.insert(tok.clone(), id);
            }
        }
        Some(Value::Array(list)) => {
            for (id, entry) in list.iter().enumerate() {
                let tok = entry
                    .get(0)
                    .and_then(Value::as_str)
                    .or_else(|| entry.as_str())
                    .ok_or_else(|| {
                        vocab_error(&path, label, format!("model.vocab[{id}] is not a piece"))
                    })?;
                ids.entry(tok.to_string()).or_insert(id);
            }
        }
        _ => {
            return Err(vocab_error(
                &path,
                label,
                "no `model.vocab` map or list (unsupported tokenizer model)",
            ));
        }
    }
    let mut added = HashMap::new();
    if let Some(list) = json.get("added_tokens") {
        let list = list
            .as_array()
            .ok_or_else(|| vocab_error(&path, label, "`added_tokens` is not a list"))?;
        for (i, entry) in list.iter().enumerate() {
            let id = entry.get("id").and_then(json_id);
            let content = entry.get("content").and_then(Value::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                return Err(vocab_error(
                    &path,
                    label,
                    format!("added_tokens[{i}] lacks an `id` or `content`"),
                ));
            };
            ids.insert(content.to_string(), id);
            added.insert(content.to_string(), entry.clone());
        }
    }
    let before = ids.len();
    if let Some(limit) = limit {
        ids.retain(|_, id| *id < limit);
        added.retain(|tok, _| ids.contains_key(tok));
    }
    let stripped = before - ids.len();
    let mut entries: Vec<(usize, String)> = ids.iter().map(|(t, i)| (*i, t.clone())).collect();
    entries.sort_unstable();
    Ok(Vocab {
        label: label.to_string(),
        dir: dir.to_path_buf(),
        ids,
        entries,
        added,
        stripped,
        limit,
    })
}

/// The rows a model's vocabulary tensors have: its embedding's (else `lm_head`'s) rows, or its
/// config's `vocab_size` when smaller (mergekit's limit).
fn model_limit(model: &ModelSource) -> Option<usize> {
    let rows = ["model.embed_tokens.weight", "lm_head.weight"]
        .iter()
        .find_map(|n| model.shape(n).and_then(|s| s.first().copied()));
    let config = model
        .config()
        .and_then(|c| c.get("vocab_size"))
        .and_then(json_id);
    match (rows, config) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    }
}

/// The token of each id in `0..=max id` (the first token in sort order where ids repeat).
fn tokens_by_id(vocab: &Vocab) -> Vec<Option<String>> {
    let n = vocab.entries.last().map_or(0, |(id, _)| id + 1);
    let mut out = vec![None; n];
    for (id, tok) in &vocab.entries {
        if out[*id].is_none() {
            out[*id] = Some(tok.clone());
        }
    }
    out
}

/// An `added_tokens` entry for an ordinary token, as HF's `add_tokens` makes it.
fn plain_added_token(id: usize, content: &str) -> Value {
    serde_json::json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": true,
        "special": false,
    })
}

/// Resolve `source` (`base`, `union`, or a model) and build the output vocabulary and each
/// model's row map. `models` and `refs` are the merge's models (aligned); `base` is the index
/// of `base_model` among them; `config_dir` resolves a tokenizer source that is not one of the
/// merged models.
///
/// # Errors
/// A model without a readable `tokenizer.json` (naming it), an unsupported tokenizer model,
/// `pad_to_multiple_of: 0`, a tokenizer source that is neither a merged model nor a directory
/// with a tokenizer, or (for `union`) a base vocabulary whose ids are not `0..n`.
pub fn build_vocab_plan(
    source: &str,
    models: &[ModelSource],
    refs: &[ModelRef],
    base: Option<usize>,
    pad_to_multiple_of: Option<usize>,
    config_dir: Option<&Path>,
) -> Result<VocabPlan> {
    if models.len() != refs.len() || models.is_empty() {
        return Err(MergeError::Config(format!(
            "tokenizer: {} models opened for {} referenced",
            models.len(),
            refs.len()
        )));
    }
    if pad_to_multiple_of == Some(0) {
        return Err(MergeError::Config(
            "tokenizer.pad_to_multiple_of must be at least 1".into(),
        ));
    }
    if base.is_some_and(|b| b >= models.len()) {
        return Err(MergeError::Config(
            "tokenizer: base model index out of range".into(),
        ));
    }
    let source = source.trim();
    if source.is_empty() {
        return Err(MergeError::Config(
            "tokenizer source is empty (give base, union or a model)".into(),
        ));
    }
    let vocabs = models
        .iter()
        .zip(refs)
        .map(|(m, r)| read_vocab(m.dir(), &r.to_string(), model_limit(m)))
        .collect::<Result<Vec<_>>>()?;
    let vocab_base = base.unwrap_or(0);

    let (source, tokens, tokenizer_dir, strip_at, appended) = match source {
        "base" => {
            let v = &vocabs[vocab_base];
            let strip = (v.stripped > 0).then_some(v.limit).flatten();
            (
                VocabSource::Base,
                tokens_by_id(v),
                v.dir.clone(),
                strip,
                Vec::new(),
            )
        }
        "union" => {
            let (tokens, appended) = union_vocab(&vocabs, vocab_base)?;
            let v = &vocabs[vocab_base];
            let strip = (v.stripped > 0).then_some(v.limit).flatten();
            (VocabSource::Union, tokens, v.dir.clone(), strip, appended)
        }
        other => {
            let index = find_model(other, models, refs, config_dir);
            match index {
                Some(i) => {
                    let v = &vocabs[i];
                    let strip = (v.stripped > 0).then_some(v.limit).flatten();
                    (
                        VocabSource::Model {
                            label: other.to_string(),
                            index: Some(i),
                        },
                        tokens_by_id(v),
                        v.dir.clone(),
                        strip,
                        Vec::new(),
                    )
                }
                None => {
                    let dir = resolve_model_path(other, config_dir);
                    if !dir.join("tokenizer.json").is_file() {
                        return Err(MergeError::Config(format!(
                            "tokenizer source `{other}` is not base, union, a merged model, or a \
                             directory with a tokenizer.json ({} has none)",
                            dir.display()
                        )));
                    }
                    let v = read_vocab(Some(&dir), other, None)?;
                    (
                        VocabSource::Model {
                            label: other.to_string(),
                            index: None,
                        },
                        tokens_by_id(&v),
                        dir,
                        None,
                        Vec::new(),
                    )
                }
            }
        }
    };

    let rows = match pad_to_multiple_of {
        Some(m) => tokens.len().div_ceil(m) * m,
        None => tokens.len(),
    };
    let own = vocabs
        .iter()
        .map(|v| {
            tokens
                .iter()
                .map(|t| t.as_ref().and_then(|t| v.ids.get(t).copied()))
                .collect()
        })
        .collect();
    Ok(VocabPlan {
        source,
        tokens,
        rows,
        own,
        labels: vocabs.into_iter().map(|v| v.label).collect(),
        base,
        tokenizer_dir,
        strip_at,
        appended,
    })
}

/// A tokenizer source naming one of the merged models: by its config name, its path, or the
/// same directory.
fn find_model(
    source: &str,
    models: &[ModelSource],
    refs: &[ModelRef],
    config_dir: Option<&Path>,
) -> Option<usize> {
    refs.iter()
        .position(|r| r.to_string() == source)
        .or_else(|| refs.iter().position(|r| r.path == source))
        .or_else(|| {
            let want = resolve_model_path(source, config_dir).canonicalize().ok()?;
            models
                .iter()
                .position(|m| m.dir().and_then(|d| d.canonicalize().ok()).as_ref() == Some(&want))
        })
}

/// `union`: the base's tokens at their ids, then the other models' ordinary tokens, then their
/// added tokens. Returns the tokens by output row and the `added_tokens` entries appended.
fn union_vocab(vocabs: &[Vocab], base: usize) -> Result<(Vec<Option<String>>, Vec<Value>)> {
    let b = &vocabs[base];
    let mut tokens = tokens_by_id(b);
    let distinct: HashSet<usize> = b.entries.iter().map(|(id, _)| *id).collect();
    if tokens.iter().any(Option::is_none) || distinct.len() != tokens.len() {
        return Err(MergeError::checkpoint(
            b.dir.join("tokenizer.json"),
            format!(
                "tokenizer of model {}: `union` needs the base vocabulary's ids to be 0..n \
                 without gaps ({} ids used up to {})",
                b.label,
                distinct.len(),
                tokens.len()
            ),
        ));
    }
    let order: Vec<&Vocab> = std::iter::once(b)
        .chain(
            vocabs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != base)
                .map(|(_, v)| v),
        )
        .collect();
    let added_anywhere: HashSet<&str> = order
        .iter()
        .flat_map(|v| v.added.keys().map(String::as_str))
        .collect();
    let mut seen: HashSet<String> = b.ids.keys().cloned().collect();
    let mut appended = Vec::new();
    // Ordinary tokens first, as mergekit adds them before the added tokens.
    for v in &order {
        for (_, tok) in &v.entries {
            if !added_anywhere.contains(tok.as_str()) && seen.insert(tok.clone()) {
                appended.push(plain_added_token(tokens.len(), tok));
                tokens.push(Some(tok.clone()));
            }
        }
    }
    for v in &order {
        for (_, tok) in &v.entries {
            let Some(entry) = v.added.get(tok) else {
                continue;
            };
            if seen.insert(tok.clone()) {
                let mut entry = entry.clone();
                if let Some(obj) = entry.as_object_mut() {
                    obj.insert("id".into(), tokens.len().into());
                }
                appended.push(entry);
                tokens.push(Some(tok.clone()));
            }
        }
    }
    Ok((tokens, appended))
}

/// Where a default row (for models lacking the token) comes from.
enum Fill {
    Zero,
    /// Input index and its row.
    Copy(usize, usize),
    /// Index into the computed mean rows.
    Mean(usize),
}

fn permute_error(msg: String) -> MergeError {
    MergeError::tensor("vocabulary (embed_tokens/lm_head)", msg)
}

/// Rows per parallel block of the padding-row mean (fixed, so sums do not depend on threads).
const MEAN_BLOCK: usize = 1024;

/// Re-lay out one vocabulary tensor of each input (`inputs[k]` is of model `input_models[k]`)
/// to the output vocabulary: `[plan.rows(), ...]`, row `i` holding token `i` (see the module
/// docs for the rows of tokens a model lacks and for padding). Values are read through
/// [`InputTensor::read`], so the load dtype is honoured; the results keep the stored dtype
/// and the load dtype. An input already in output order is returned as is (no copy).
///
/// # Errors
/// Inputs and models of different lengths, an unknown model index, inputs whose rows differ in
/// shape, or an input with fewer rows than its tokenizer's ids need.
pub fn permute_rows<'a>(
    plan: &VocabPlan,
    inputs: &[InputTensor<'a>],
    input_models: &[usize],
) -> Result<Vec<InputTensor<'a>>> {
    if inputs.len() != input_models.len() {
        return Err(permute_error(format!(
            "{} inputs for {} models",
            inputs.len(),
            input_models.len()
        )));
    }
    let Some(first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let tail: Vec<usize> = first.shape().get(1..).unwrap_or(&[]).to_vec();
    let width: usize = tail.iter().product();
    for (input, &m) in inputs.iter().zip(input_models) {
        let label = plan
            .labels
            .get(m)
            .ok_or_else(|| permute_error(format!("model index {m} is not in the merge")))?;
        let shape = input.shape();
        if shape.is_empty() || shape[1..] != tail[..] {
            return Err(permute_error(format!(
                "rows differ in shape: {} has {shape:?}, {} has {:?}",
                label,
                plan.labels[input_models[0]],
                first.shape()
            )));
        }
        let need = plan.rows_needed(m);
        if shape[0] < need {
            return Err(permute_error(format!(
                "model {label} has {} rows but its tokenizer uses ids up to {}",
                shape[0],
                need - 1
            )));
        }
    }
    let dtype = first.dtype();
    let read_row = |k: usize, row: usize, out: &mut [f32]| {
        inputs[k].read(row * width..(row + 1) * width, out);
    };

    // Distinct models among the inputs, with the first input holding each.
    let mut distinct: Vec<(usize, usize)> = Vec::new();
    for (k, &m) in input_models.iter().enumerate() {
        if !distinct.iter().any(|(_, d)| *d == m) {
            distinct.push((k, m));
        }
    }
    let base = plan
        .base
        .and_then(|b| distinct.iter().find(|(_, m)| *m == b).copied());

    // Default rows for tokens some input lacks, shared by every model lacking them.
    let n_tokens = plan.tokens.len();
    let mut defaults: HashMap<usize, Fill> = HashMap::new();
    let mut means: Vec<Vec<f32>> = Vec::new();
    for r in 0..n_tokens {
        if plan.tokens[r].is_none() || distinct.iter().all(|(_, m)| plan.own[*m][r].is_some()) {
            continue;
        }
        let present: Vec<(usize, usize)> = distinct
            .iter()
            .filter_map(|(k, m)| plan.own[*m][r].map(|row| (*k, row)))
            .collect();
        let base_row = base.and_then(|(k, m)| plan.own[m][r].map(|row| (k, row)));
        let d = match (base_row, present.as_slice()) {
            (Some((k, row)), _) | (None, &[(k, row)]) => Fill::Copy(k, row),
            (None, []) => Fill::Zero,
            (None, many) => {
                let mut acc = vec![0f32; width];
                let mut buf = vec![0f32; width];
                for (k, row) in many {
                    read_row(*k, *row, &mut buf);
                    for (a, v) in acc.iter_mut().zip(&buf) {
                        *a = dtype.round(*a + v);
                    }
                }
                let count = many.len() as f32;
                acc.iter_mut().for_each(|a| *a = dtype.round(*a / count));
                means.push(acc);
                Fill::Mean(means.len() - 1)
            }
        };
        defaults.insert(r, d);
    }

    inputs
        .iter()
        .zip(input_models)
        .map(|(input, &m)| {
            let own = &plan.own[m];
            let identity = plan.rows == n_tokens
                && input.shape()[0] == plan.rows
                && own.iter().enumerate().all(|(r, o)| *o == Some(r));
            if identity {
                return Ok(input.clone());
            }
            let mut data = vec![0f32; plan.rows * width];
            if width > 0 {
                data.par_chunks_mut(width)
                    .take(n_tokens)
                    .enumerate()
                    .for_each(|(r, out)| {
                        if plan.tokens[r].is_none() {
                            return;
                        }
                        match (own[r], defaults.get(&r)) {
                            (Some(row), _) => input.read(row * width..(row + 1) * width, out),
                            (None, Some(Fill::Copy(k, row))) => read_row(*k, *row, out),
                            (None, Some(Fill::Mean(i))) => out.copy_from_slice(&means[*i]),
                            (None, Some(Fill::Zero) | None) => {}
                        }
                    });
                fill_non_token_rows(plan, &mut data, width, dtype);
            }
            let mut shape = Vec::with_capacity(tail.len() + 1);
            shape.push(plan.rows);
            shape.extend_from_slice(&tail);
            Ok(InputTensor::owned(shape, input.stored_dtype(), data)
                .with_load_dtype(Some(input.dtype())))
        })
        .collect()
}

/// Padding rows and unused ids: the mean of the token rows (f64 sums over fixed blocks, one
/// rounding to `dtype`).
fn fill_non_token_rows(plan: &VocabPlan, data: &mut [f32], width: usize, dtype: DType) {
    let n_tokens = plan.tokens.len();
    let holes = plan.tokens.iter().any(Option::is_none);
    if plan.rows == n_tokens && !holes {
        return;
    }
    let count = plan.tokens.iter().flatten().count();
    let mean: Vec<f32> = if count == 0 {
        vec![0.0; width]
    } else {
        let token_data = &data[..n_tokens * width];
        let partials: Vec<Vec<f64>> = token_data
            .par_chunks(MEAN_BLOCK * width)
            .enumerate()
            .map(|(b, block)| {
                let mut acc = vec![0f64; width];
                for (i, row) in block.chunks(width).enumerate() {
                    if plan.tokens[b * MEAN_BLOCK + i].is_some() {
                        for (a, v) in acc.iter_mut().zip(row) {
                            *a += f64::from(*v);
                        }
                    }
                }
                acc
            })
            .collect();
        let mut sum = vec![0f64; width];
        for p in &partials {
            for (s, v) in sum.iter_mut().zip(p) {
                *s += v;
            }
        }
        sum.iter()
            .map(|s| dtype.round((s / count as f64) as f32))
            .collect()
    };
    for (r, row) in data.chunks_mut(width).enumerate() {
        if r >= n_tokens || plan.tokens[r].is_none() {
            row.copy_from_slice(&mean);
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| MergeError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| MergeError::checkpoint(path, format!("invalid JSON: {e}")))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| MergeError::checkpoint(path, e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| MergeError::io(path, e))
}

/// Write the output tokenizer into `out_dir`: the source model's tokenizer files
/// ([`TOKENIZER_FILES`]), with `tokenizer.json` (and `tokenizer_config.json`'s
/// `added_tokens_decoder`, `added_tokens.json`) extended by `union`'s new tokens and cut to
/// the rows the model has.
///
/// # Errors
/// I/O errors, a source `tokenizer.json` (or config) that is not valid JSON.
pub fn write_tokenizer(plan: &VocabPlan, out_dir: &Path) -> Result<()> {
    let src = &plan.tokenizer_dir;
    for f in TOKENIZER_FILES {
        let from = src.join(f);
        if from.is_file() {
            let to = out_dir.join(f);
            std::fs::copy(&from, &to).map_err(|e| MergeError::io(&from, e))?;
        }
    }
    if plan.strip_at.is_none() && plan.appended.is_empty() {
        return Ok(());
    }

    let tj = out_dir.join("tokenizer.json");
    let mut json = read_json(&tj)?;
    if let Some(limit) = plan.strip_at {
        strip_tokenizer(&mut json, limit);
    }
    if let Some(obj) = json.as_object_mut() {
        let list = obj
            .entry("added_tokens")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            list.extend(plan.appended.iter().cloned());
        }
    }
    write_json(&tj, &json)?;

    let keep = |id: usize| plan.strip_at.is_none_or(|l| id < l);
    let tc = out_dir.join("tokenizer_config.json");
    if tc.is_file() {
        let mut cfg = read_json(&tc)?;
        if let Some(decoder) = cfg
            .get_mut("added_tokens_decoder")
            .and_then(Value::as_object_mut)
        {
            decoder.retain(|id, _| id.parse::<usize>().is_ok_and(keep));
            for e in &plan.appended {
                let (Some(id), Some(obj)) = (e.get("id").and_then(json_id), e.as_object()) else {
                    continue;
                };
                let mut info = obj.clone();
                info.remove("id");
                decoder.insert(id.to_string(), Value::Object(info));
            }
            write_json(&tc, &cfg)?;
        }
    }
    let at = out_dir.join("added_tokens.json");
    if at.is_file() {
        let mut added = read_json(&at)?;
        if let Some(map) = added.as_object_mut() {
            map.retain(|_, id| json_id(id).is_some_and(keep));
            for e in &plan.appended {
                if let (Some(id), Some(content)) = (
                    e.get("id").and_then(json_id),
                    e.get("content").and_then(Value::as_str),
                ) {
                    map.insert(content.to_string(), id.into());
                }
            }
            write_json(&at, &added)?;
        }
    }
    Ok(())
}

/// Drop tokens with ids `>= limit` from a `tokenizer.json`, and BPE merges involving them.
fn strip_tokenizer(json: &mut Value, limit: usize) {
    let mut removed: HashSet<String> = HashSet::new();
    if let Some(list) = json.get_mut("added_tokens").and_then(Value::as_array_mut) {
        list.retain(|e| {
            let keep = e.get("id").and_then(json_id).is_some_and(|id| id < limit);
            if !keep && let Some(c) = e.get("content").and_then(Value::as_str) {
                removed.insert(c.to_string());
            }
            keep
        });
    }
    let Some(model) = json.get_mut("model").and_then(Value::as_object_mut) else {
        return;
    };
    match model.get_mut("vocab") {
        Some(Value::Object(map)) => {
            map.retain(|tok, id| {
                let keep = json_id(id).is_some_and(|id| id < limit);
                if !keep {
                    removed.insert(tok.clone());
                }
                keep
            });
        }
        Some(Value::Array(list)) => {
            for e in list.iter().skip(limit) {
                if let Some(t) = e.get(0).and_then(Value::as_str) {
                    removed.insert(t.to_string());
                }
            }
            list.truncate(limit);
        }
        _ => {}
    }
    if let Some(merges) = model.get_mut("merges").and_then(Value::as_array_mut) {
        merges.retain(|m| {
            let parts: Option<(String, String)> = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) => match (
                    p.first().and_then(Value::as_str),
                    p.get(1).and_then(Value::as_str),
                ) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            match parts {
                Some((a, b)) => {
                    !(removed.contains(&a)
                        || removed.contains(&b)
                        || removed.contains(&format!("{a}{b}")))
                }
                None => true,
            }
        });
    }
}
