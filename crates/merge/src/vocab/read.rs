//! Reading one model's vocabulary from its `tokenizer.json`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::source::ModelSource;
use crate::{MergeError, Result};

/// One model's vocabulary, read from its `tokenizer.json`.
pub(super) struct Vocab {
    pub(super) label: String,
    pub(super) dir: PathBuf,
    /// Token → id (ids below the model's row limit only).
    pub(super) ids: HashMap<String, usize>,
    /// `(id, token)` sorted by id (then token).
    pub(super) entries: Vec<(usize, String)>,
    /// The `added_tokens` entries kept, by content.
    pub(super) added: HashMap<String, Value>,
    /// Tokens dropped for having no row.
    pub(super) stripped: usize,
    /// The row limit applied.
    pub(super) limit: Option<usize>,
}

fn vocab_error(path: &Path, label: &str, msg: impl fmt::Display) -> MergeError {
    MergeError::checkpoint(path, format!("tokenizer of model {label}: {msg}"))
}

pub(super) fn json_id(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// Read `dir/tokenizer.json`, keeping tokens with ids below `limit`.
pub(super) fn read_vocab(dir: Option<&Path>, label: &str, limit: Option<usize>) -> Result<Vocab> {
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
    let text =
        temper_formats::read_regular_to_string(&path).map_err(|e| MergeError::io(&path, e))?;
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
pub(super) fn model_limit(model: &ModelSource) -> Option<usize> {
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
pub(super) fn tokens_by_id(vocab: &Vocab) -> Vec<Option<String>> {
    let n = vocab.entries.last().map_or(0, |(id, _)| id + 1);
    let mut out = vec![None; n];
    for (id, tok) in &vocab.entries {
        if out[*id].is_none() {
            out[*id] = Some(tok.clone());
        }
    }
    out
}
