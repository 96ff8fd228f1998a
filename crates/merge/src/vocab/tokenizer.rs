//! Writing the output tokenizer: the source model's files, extended or cut to the output
//! vocabulary.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::VocabPlan;
use super::read::json_id;
use crate::files::{read_json, write_json};
use crate::{MergeError, Result};

/// Tokenizer files an output takes from the model its tokenizer comes from (the base, or the
/// first model).
pub(crate) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// Copy the [`TOKENIZER_FILES`] that `src` has into `out_dir`.
///
/// # Errors
/// I/O errors naming the source file.
pub(crate) fn copy_tokenizer_files(src: &Path, out_dir: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let from = src.join(f);
        if from.is_file() {
            let to = out_dir.join(f);
            std::fs::copy(&from, &to).map_err(|e| MergeError::io(&from, e))?;
        }
    }
    Ok(())
}

/// Write the output tokenizer into `out_dir`: the source model's tokenizer files
/// ([`TOKENIZER_FILES`]), with `tokenizer.json` (and `tokenizer_config.json`'s
/// `added_tokens_decoder`, `added_tokens.json`) extended by `union`'s new tokens and cut to
/// the rows the model has.
///
/// # Errors
/// I/O errors, a source `tokenizer.json` (or config) that is not valid JSON.
pub(crate) fn write_tokenizer(plan: &VocabPlan, out_dir: &Path) -> Result<()> {
    copy_tokenizer_files(&plan.tokenizer_dir, out_dir)?;
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
