//! Building the output vocabulary ([`VocabPlan`]) from the models' vocabularies.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::read::{Vocab, model_limit, read_vocab, tokens_by_id};
use super::{VocabPlan, VocabSource};
use crate::config::{ModelRef, resolve_model_path};
use crate::source::ModelSource;
use crate::{MergeError, Result};

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
pub(crate) fn build_vocab_plan(
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
