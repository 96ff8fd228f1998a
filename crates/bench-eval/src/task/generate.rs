//! `output_type: generate_until`, as lm-eval's `hf` model runs it: the context (few-shot
//! examples and the document's `doc_to_text`) is encoded without special tokens and
//! left-truncated to `max_length − max_gen_toks` tokens; the model decodes greedily (or
//! samples, when `do_sample` asks) until EOS, `max_gen_toks` tokens or a stop string; the
//! answer is the generated text (special tokens skipped) cut before the first stop string of
//! `until` + the EOS text. Each `filter_list` pipeline then maps the answer to the text that
//! `exact_match` compares with the gold answer(s): one metric per pipeline,
//! `exact_match,<pipeline name>`.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value, json};
use temper_llm_arch::{GenerationConfig, Pretrained, generate};

use super::config::TaskConfig;
use super::dataset::Doc;
use super::exact_match::ExactMatch;
use super::filter::FilterPipeline;
use super::prompt::Prompter;
use super::rolling::{MetricValues, prefix_token};
use super::run::{Sample, TaskSettings, max_length, mean_and_stderr};
use crate::{EvalError, Result};

/// lm-eval's default `max_gen_toks`.
pub const DEFAULT_MAX_GEN_TOKS: usize = 256;

/// The seed of sampled generation (lm-eval seeds torch with 1234; Temper's sampler is its
/// own, so sampled answers differ from torch's even with the same seed).
const SAMPLING_SEED: u64 = 1234;

/// What a `generate_until` task asks for.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// Stop strings (without the EOS text, which is added at run time).
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: f32,
    /// `generation_kwargs` as lm-eval passes them with each request (`until` filled in).
    pub kwargs: Value,
    pub filters: Vec<FilterPipeline>,
    pub exact_match: ExactMatch,
}

/// One document's generation, for `--log-samples`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSample {
    /// The gold answer(s).
    pub target: Vec<String>,
    /// The answer after cutting at the stop strings (lm-eval's `resps`).
    pub resp: String,
    /// Pipeline name → filtered answer (lm-eval's `filtered_resps`).
    pub filtered: Vec<(String, String)>,
}

fn error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn number(path: &Path, key: &str, v: &Value) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| error(path, key, format!("must be a number, is {v}")))
}

fn count(path: &Path, key: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| error(path, key, format!("must be a positive integer, is {v}")))
}

impl GenerateSpec {
    /// Read `generation_kwargs`, `filter_list` and exact_match's options from a task's merged
    /// YAML (`raw`); lm-eval's defaults where they are absent (`until`: the few-shot
    /// delimiter; greedy; 256 tokens; the `none` pipeline).
    ///
    /// # Errors
    /// Keys or values Temper does not run, each named.
    pub fn parse(path: &Path, raw: &Map<String, Value>, fewshot_delimiter: &str) -> Result<Self> {
        let mut spec = Self {
            until: vec![fewshot_delimiter.to_string()],
            max_gen_toks: DEFAULT_MAX_GEN_TOKS,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            kwargs: Value::Null,
            filters: FilterPipeline::parse_list(path, raw.get("filter_list"))?,
            exact_match: ExactMatch::default(),
        };
        let mut kwargs = match raw.get("generation_kwargs") {
            None | Some(Value::Null) => {
                let mut m = Map::new();
                m.insert("temperature".into(), json!(0.0));
                m.insert("do_sample".into(), json!(false));
                m.insert("max_gen_toks".into(), json!(DEFAULT_MAX_GEN_TOKS));
                m
            }
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(error(
                    path,
                    "generation_kwargs",
                    format!("must be a mapping, is {other}"),
                ));
            }
        };
        if !kwargs.contains_key("until") {
            kwargs.insert("until".into(), json!([fewshot_delimiter]));
        }
        let mut do_sample = None;
        // lm-eval's priority among the names of the token budget.
        let mut budget: Option<(usize, usize)> = None;
        for (k, v) in &kwargs {
            let key = format!("generation_kwargs.{k}");
            match k.as_str() {
                "until" => {
                    spec.until = match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => items
                            .iter()
                            .map(|x| {
                                x.as_str().map(str::to_string).ok_or_else(|| {
                                    error(path, &key, format!("{x} is not a string"))
                                })
                            })
                            .collect::<Result<_>>()?,
                        Value::Null => Vec::new(),
                        other => {
                            return Err(error(path, &key, format!("strings, not {other}")));
                        }
                    };
                }
                "max_gen_toks" | "max_new_tokens" | "max_tokens" | "max_completion_tokens" => {
                    let rank = ["max_gen_toks", "max_new_tokens", "max_tokens"]
                        .iter()
                        .position(|n| n == k)
                        .unwrap_or(3);
                    let n = count(path, &key, v)?;
                    if budget.is_none_or(|(r, _)| rank < r) {
                        budget = Some((rank, n));
                    }
                }
                "do_sample" => {
                    do_sample = Some(v.as_bool().ok_or_else(|| {
                        error(path, &key, format!("must be true or false, is {v}"))
                    })?);
                }
                "temperature" => spec.temperature = number(path, &key, v)? as f32,
                "top_p" => spec.top_p = Some(number(path, &key, v)? as f32),
                "top_k" => spec.top_k = Some(count(path, &key, v)?),
                "repetition_penalty" => spec.repetition_penalty = number(path, &key, v)? as f32,
                _ => {
                    return Err(error(
                        path,
                        &key,
                        "not supported (Temper reads until, max_gen_toks, do_sample, \
                         temperature, top_p, top_k, repetition_penalty)",
                    ));
                }
            }
        }
        if let Some((_, n)) = budget {
            spec.max_gen_toks = n;
        }
        // lm-eval: no `do_sample` means sampling exactly when the temperature is above 0;
        // `do_sample: false` means greedy whatever the temperature.
        if do_sample == Some(false) || (do_sample.is_none() && spec.temperature <= 0.0) {
            spec.temperature = 0.0;
        } else if spec.temperature <= 0.0 {
            // `do_sample: true` at temperature 0: HF samples at its default temperature 1.
            spec.temperature = 1.0;
        }
        spec.kwargs = Value::Object(kwargs);
        if let Some(Value::Array(items)) = raw.get("metric_list") {
            for (i, item) in items.iter().enumerate() {
                if let Some(entry) = item.as_object()
                    && entry.get("metric").and_then(Value::as_str) == Some("exact_match")
                {
                    spec.exact_match =
                        ExactMatch::parse(path, &format!("metric_list[{i}]"), entry)?;
                }
            }
        }
        if let Some(r) = raw.get("repeats")
            && r.as_u64() != Some(1)
        {
            return Err(error(
                path,
                "repeats",
                format!("{r}: Temper generates one answer per document"),
            ));
        }
        Ok(spec)
    }
}

/// lm-eval's `postprocess_generated_text`: cut at each non-empty stop string in turn.
pub fn cut_at_stops(text: &str, until: &[String]) -> String {
    let mut out = text;
    for term in until.iter().filter(|t| !t.is_empty()) {
        if let Some(at) = out.find(term.as_str()) {
            out = &out[..at];
        }
    }
    out.to_string()
}

/// Generate an answer for each document (`contexts[i]` is document `i`'s full prompt) and
/// score it with every pipeline.
///
/// # Errors
/// Tokenizer, model and filter errors; a `max_gen_toks` that leaves no room for a context.
pub(super) fn evaluate_generate_until(
    p: &Pretrained,
    config: &TaskConfig,
    spec: &GenerateSpec,
    settings: &TaskSettings,
    docs: &[Doc],
    contexts: &[String],
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Sample>, MetricValues)> {
    let prompter = Prompter::new(config)?;
    let max_len = max_length(p, settings);
    let max_ctx = max_len
        .checked_sub(spec.max_gen_toks)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            error(
                &config.path,
                "generation_kwargs.max_gen_toks",
                format!(
                    "{} tokens to generate leave no room for a context in max_length {max_len}",
                    spec.max_gen_toks
                ),
            )
        })?;
    // lm-eval adds the EOS text to the stop strings (and HF stops at the EOS id).
    let mut until = spec.until.clone();
    if let Some(&eos) = p.special.eos.first() {
        let text = p.tokenizer.decode(&[eos], false)?;
        if !until.contains(&text) {
            until.push(text);
        }
    }
    let mut prompts = Vec::with_capacity(contexts.len());
    for ctx in contexts {
        let mut ids = p.tokenizer.encode(ctx, false)?;
        if ids.is_empty() {
            ids.push(prefix_token(p, settings)?);
        }
        if ids.len() > max_ctx {
            ids.drain(..ids.len() - max_ctx);
        }
        prompts.push(ids);
    }
    let gen_config = GenerationConfig {
        max_new_tokens: spec.max_gen_toks,
        temperature: spec.temperature,
        top_k: spec.top_k,
        top_p: spec.top_p,
        repetition_penalty: spec.repetition_penalty,
        seed: SAMPLING_SEED,
        eos_token_ids: p.special.eos.clone(),
        stop_strings: until.iter().filter(|t| !t.is_empty()).cloned().collect(),
        pad_token_id: p
            .special
            .pad
            .or(p.special.eos.first().copied())
            .unwrap_or(0),
    };
    // Longest prompt first (lm-eval's order): a batch then holds prompts of similar length.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut answers = vec![String::new(); prompts.len()];
    let mut done = 0;
    for chunk in order.chunks(settings.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let outs = generate(&p.model, Some(&p.tokenizer), &batch, &gen_config, |_, _| {})?;
        for (&i, out) in chunk.iter().zip(outs) {
            let text = p.tokenizer.decode(&out.tokens, true)?;
            answers[i] = cut_at_stops(&text, &until);
        }
        done += chunk.len();
        progress(done, prompts.len());
    }

    let kwargs = spec.kwargs.to_string();
    let mut samples = Vec::with_capacity(docs.len());
    for (n, ((doc, ctx), resp)) in docs.iter().zip(contexts).zip(answers).enumerate() {
        let target = prompter.gold_texts(doc, n)?;
        let mut filtered = Vec::with_capacity(spec.filters.len());
        let mut metrics = Vec::with_capacity(spec.filters.len());
        for pipeline in &spec.filters {
            let text = pipeline
                .apply(&resp)
                .map_err(|e| error(&config.path, "filter_list", format!("document {n}: {e}")))?;
            metrics.push((
                format!("exact_match,{}", pipeline.name),
                spec.exact_match.score(&text, &target),
            ));
            filtered.push((pipeline.name.clone(), text));
        }
        samples.push(Sample {
            doc_id: n,
            doc: doc.clone(),
            target: None,
            arguments: vec![(ctx.clone(), kwargs.clone())],
            loglikelihoods: Vec::new(),
            unconditional: None,
            metrics,
            rolling: None,
            generation: Some(GenerationSample {
                target,
                resp,
                filtered,
            }),
        });
    }
    let metrics = spec
        .filters
        .iter()
        .map(|f| {
            let name = format!("exact_match,{}", f.name);
            let xs: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.metrics.iter().find(|(m, _)| *m == name).map(|(_, v)| *v))
                .collect();
            let (mean, se) = mean_and_stderr(&xs);
            (name, mean, se)
        })
        .collect();
    Ok((samples, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<GenerateSpec> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap_or(Value::Null);
        let raw = v.as_object().cloned().unwrap_or_default();
        GenerateSpec::parse(Path::new("t.yaml"), &raw, "\n\n")
    }

    #[test]
    fn defaults_are_lm_evals() {
        let s = spec("{}").ok();
        let s = s.as_ref();
        assert_eq!(s.map(|s| s.until.clone()), Some(vec!["\n\n".to_string()]));
        assert_eq!(s.map(|s| s.max_gen_toks), Some(256));
        assert_eq!(s.map(|s| s.temperature), Some(0.0));
        assert_eq!(s.map(|s| s.filters[0].name.as_str()), Some("none"));
        // `until` missing from given kwargs: the few-shot delimiter, and it is passed on.
        let s = spec("{generation_kwargs: {max_new_tokens: 9, max_gen_toks: 7, temperature: 0.7, do_sample: false}}").ok();
        let s = s.as_ref();
        assert_eq!(s.map(|s| s.max_gen_toks), Some(7));
        assert_eq!(s.map(|s| s.temperature), Some(0.0));
        assert_eq!(s.map(|s| s.kwargs["until"].clone()), Some(json!(["\n\n"])));
        let s = spec("{generation_kwargs: {until: 'Q:', temperature: 0.7}}").ok();
        assert_eq!(s.as_ref().map(|s| s.temperature), Some(0.7));
        assert_eq!(s.map(|s| s.until), Some(vec!["Q:".to_string()]));
    }

    #[test]
    fn unsupported_keys_are_named() {
        for (yaml, key) in [
            (
                "{generation_kwargs: {num_beams: 4}}",
                "generation_kwargs.num_beams",
            ),
            (
                "{generation_kwargs: {max_gen_toks: 0}}",
                "generation_kwargs.max_gen_toks",
            ),
            (
                "{generation_kwargs: {until: [1]}}",
                "generation_kwargs.until",
            ),
            ("{repeats: 5}", "repeats"),
            (
                "{metric_list: [{metric: exact_match, ignore_spaces: true}]}",
                "metric_list[0].ignore_spaces",
            ),
        ] {
            let e = spec(yaml).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn stops_cut_in_turn() {
        let until = ["\n".to_string(), String::new(), "Q:".to_string()];
        assert_eq!(cut_at_stops(" B\nQ: next", &until), " B");
        assert_eq!(cut_at_stops(" BQ: x\ny", &until), " B");
        assert_eq!(cut_at_stops("plain", &until), "plain");
    }
}
