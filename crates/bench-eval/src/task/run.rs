//! Running a task. Multiple choice: documents → contexts (with few-shot examples) → one
//! log-likelihood request per choice → lm-eval's per-document metrics → mean and standard
//! error (lm-eval's `mean_stderr`: the sample standard deviation, n − 1, over √n).
//! `loglikelihood_rolling` tasks are scored by [`super::rolling`].

use serde::Serialize;
use serde_json::{Value, json};
use temper_llm_arch::Pretrained;

use super::chat::document_context;
use super::config::{OutputType, Sampler, TaskConfig};
use super::dataset::{Doc, load_split};
use super::generate::{GenerationSample, evaluate_generate_until};
use super::prompt::Prompter;
use super::rolling::{MetricValues, RollingCounts, evaluate_rolling, prefix_token};
use super::sampler::PyRandom;
use crate::loglik::{EncodedPair, LoglikConfig, encode_pair};
use crate::shared_context::score_pairs_shared;
use crate::{EvalError, Result};

/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u64 = 1234;

/// How a task is run (lm-eval's command-line options).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Overrides the YAML's `num_fewshot`.
    pub num_fewshot: Option<usize>,
    /// Evaluate the first `limit` documents only.
    pub limit: Option<usize>,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// The default sampler's seed.
    pub fewshot_seed: u64,
    /// Tokens a rolling window may hold (lm-eval's `max_length` model argument); `None`: the
    /// model's `max_position_embeddings`, as lm-eval resolves it for a Llama config.
    pub max_length: Option<usize>,
    /// The token before an empty context and the first rolling window (lm-eval's
    /// `prefix_token_id` model argument); `None`: the tokenizer's BOS, else EOS.
    pub prefix_token_id: Option<u32>,
    /// Render contexts through the model's chat template (lm-eval's
    /// `--apply_chat_template`; multiple-choice continuations then drop the target
    /// delimiter).
    pub apply_chat_template: bool,
    /// With a chat template, few-shot examples as user / assistant turns (lm-eval's default
    /// then) rather than one user message.
    pub fewshot_as_multiturn: bool,
    /// Put before the description in the system turn (lm-eval's `--system_instruction`).
    pub system_instruction: Option<String>,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            num_fewshot: None,
            limit: None,
            batch_size: 8,
            fewshot_seed: FEWSHOT_SEED,
            max_length: None,
            prefix_token_id: None,
            apply_chat_template: false,
            fewshot_as_multiturn: true,
            system_instruction: None,
        }
    }
}

/// One document's requests and scores (lm-eval's `--log_samples` line).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub doc_id: usize,
    pub doc: Doc,
    /// The gold choice index (`None`: the target is not among the choices, or a rolling
    /// task).
    pub target: Option<usize>,
    /// `(context, continuation)` of each request (rolling: `("", text)`).
    pub arguments: Vec<(String, String)>,
    /// Summed continuation log-likelihood of each choice (rolling: of the whole text).
    pub loglikelihoods: Vec<f64>,
    /// With `acc_mutual_info`: each choice's log-likelihood after an empty context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unconditional: Option<Vec<f64>>,
    /// Metric name → 0 or 1 (multiple choice; `exact_match,<filter>` for generation).
    pub metrics: Vec<(String, f64)>,
    /// A rolling task's word and byte counts (the perplexities' weights) and windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling: Option<RollingCounts>,
    /// A `generate_until` task's gold answers, answer and filtered answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSample>,
}

/// A task's outcome.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub config: TaskConfig,
    pub num_fewshot: usize,
    /// Documents in the split before `limit`.
    pub original: usize,
    pub samples: Vec<Sample>,
    /// Metric name → (value, standard error; NaN where lm-eval has none: `"N/A"`).
    pub metrics: Vec<(String, f64, f64)>,
}

fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    // np.argmax: the first of equal maxima.
    let mut best = (0usize, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 || (i == 0) {
            best = (i, x);
        }
    }
    best.0
}

/// Tokens a sequence may hold: `--max-length`, else the model's `max_position_embeddings`
/// (lm-eval's `max_length` as it resolves it for a Llama config).
pub(super) fn max_length(p: &Pretrained, settings: &TaskSettings) -> usize {
    settings
        .max_length
        .unwrap_or(p.model.config().max_position_embeddings)
}

/// lm-eval's `mean` and `mean_stderr`.
pub fn mean_and_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / n.sqrt())
}

fn few_shots<'d>(
    config: &TaskConfig,
    sampler: &mut PyRandom,
    pool: &'d [Doc],
    doc: &Doc,
    n: usize,
) -> Result<Vec<(usize, &'d Doc)>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // lm-eval leaves the evaluated document out when the examples come from its own split.
    let exclude = config.fewshot_split == config.test_split;
    let picked: Vec<usize> = match config.sampler {
        Sampler::FirstN => {
            let pool: Vec<usize> = (0..pool.len())
                .filter(|&i| !(exclude && pool[i] == *doc))
                .collect();
            if pool.len() < n {
                return Err(EvalError::Task {
                    path: config.path.clone(),
                    key: "num_fewshot".into(),
                    reason: format!("{n} examples asked, the few-shot split has {}", pool.len()),
                });
            }
            pool[..n].to_vec()
        }
        Sampler::Default => {
            if !exclude {
                sampler.sample(pool.len(), n)
            } else {
                let mut got: Vec<usize> = sampler
                    .sample(pool.len(), n + 1)
                    .into_iter()
                    .filter(|&i| pool[i] != *doc)
                    .take(n)
                    .collect();
                if got.len() < n {
                    let rest: Vec<usize> = (0..pool.len()).filter(|&i| pool[i] != *doc).collect();
                    got = sampler
                        .sample(rest.len(), n)
                        .into_iter()
                        .map(|i| rest[i])
                        .collect();
                }
                got
            }
        }
    };
    if picked.len() < n {
        return Err(EvalError::Task {
            path: config.path.clone(),
            key: "num_fewshot".into(),
            reason: format!("{n} examples asked, the few-shot split has {}", pool.len()),
        });
    }
    Ok(picked.into_iter().map(|i| (i, &pool[i])).collect())
}

/// Run `config` on a loaded model.
///
/// # Errors
/// Task, data, template, tokenizer and model errors, each naming its source.
pub fn evaluate_task(
    p: &Pretrained,
    config: &TaskConfig,
    settings: &TaskSettings,
    mut progress: impl FnMut(usize, usize),
) -> Result<TaskResult> {
    let split = config.eval_split()?;
    let mut docs = load_split(config, split)?;
    let original = docs.len();
    if let Some(limit) = settings.limit {
        docs.truncate(limit);
    }
    if docs.is_empty() {
        return Err(EvalError::Task {
            path: config.path.clone(),
            key: split.to_string(),
            reason: "the split has no documents: nothing to evaluate".into(),
        });
    }
    let num_fewshot = settings.num_fewshot.unwrap_or(config.num_fewshot);
    let result = |(samples, metrics): (Vec<Sample>, MetricValues)| TaskResult {
        config: config.clone(),
        num_fewshot,
        original,
        samples,
        metrics,
    };
    if config.output_type == OutputType::LoglikelihoodRolling {
        // The request is the text alone: lm-eval builds no context for it, so few-shot
        // examples (if asked for) change nothing.
        return evaluate_rolling(p, config, settings, &docs, progress).map(result);
    }
    let pool = if num_fewshot > 0 {
        let fs = config.fewshot_split().unwrap_or(split);
        load_split(config, fs)?
    } else {
        Vec::new()
    };
    let prompter = Prompter::new(config)?;
    let mut rnd = PyRandom::new(settings.fewshot_seed);
    if let Some(spec) = &config.generation {
        let contexts = docs
            .iter()
            .enumerate()
            .map(|(n, doc)| {
                let shots = few_shots(config, &mut rnd, &pool, doc, num_fewshot)?;
                document_context(p, &prompter, settings, doc, n, &shots)
            })
            .collect::<Result<Vec<_>>>()?;
        return evaluate_generate_until(p, config, spec, settings, &docs, &contexts, progress)
            .map(result);
    }
    let choice_spec = config.doc_to_choice.clone().unwrap_or(Value::Null);
    let mutual = config.metrics.iter().any(|m| m == "acc_mutual_info");
    // With a chat template the answer opens the assistant's turn: no delimiter before it.
    let target_delimiter = if settings.apply_chat_template {
        ""
    } else {
        config.target_delimiter.as_str()
    };

    // Requests of all documents, in document order.
    let mut samples = Vec::with_capacity(docs.len());
    let mut pairs: Vec<EncodedPair> = Vec::new();
    let mut choices_of = Vec::with_capacity(docs.len());
    for (n, doc) in docs.iter().enumerate() {
        let shots = few_shots(config, &mut rnd, &pool, doc, num_fewshot)?;
        let ctx = document_context(p, &prompter, settings, doc, n, &shots)?;
        let choices = prompter.choices(&choice_spec, doc, n)?;
        let target = prompter.gold(doc, n, &choices)?;
        let mut arguments = Vec::with_capacity(choices.len());
        for c in &choices {
            let cont = format!("{target_delimiter}{c}");
            pairs.push(encode_pair(&p.tokenizer, &ctx, &cont)?);
            arguments.push((ctx.clone(), cont));
        }
        if mutual {
            for c in &choices {
                let cont = format!("{target_delimiter}{c}");
                pairs.push(encode_pair(&p.tokenizer, "", &cont)?);
            }
        }
        choices_of.push(choices);
        samples.push(Sample {
            doc_id: n,
            doc: doc.clone(),
            target,
            arguments,
            loglikelihoods: Vec::new(),
            unconditional: None,
            metrics: Vec::new(),
            rolling: None,
            generation: None,
        });
    }

    let pad = p
        .special
        .pad
        .or(p.special.eos.first().copied())
        .unwrap_or(0);
    let loglik = LoglikConfig {
        batch_size: settings.batch_size,
        pad_token_id: pad,
        // lm-eval's `prefix_token_id` (the tokenizer's BOS even where encoding adds none).
        empty_context_token: prefix_token(p, settings).ok(),
        ..LoglikConfig::default()
    };
    // Each document's context runs once for all its choices (and the unconditional requests
    // of `acc_mutual_info` share their one-token context); scores come back in request order.
    let scores = score_pairs_shared(&p.model, &pairs, &loglik, &mut progress)?;

    let mut at = 0;
    for (sample, choices) in samples.iter_mut().zip(&choices_of) {
        let k = choices.len();
        let lls = scores[at..at + k].to_vec();
        at += k;
        let unconditional = mutual.then(|| {
            let u = scores[at..at + k].to_vec();
            at += k;
            u
        });
        let gold = sample.target;
        let hit = |pred: usize| f64::from(u8::from(Some(pred) == gold));
        for m in &config.metrics {
            let pred = match m.as_str() {
                "acc" => argmax(lls.iter().copied()),
                "acc_norm" => argmax(
                    lls.iter()
                        .zip(choices)
                        .map(|(l, c)| l / c.chars().count() as f64),
                ),
                "acc_bytes" => argmax(lls.iter().zip(choices).map(|(l, c)| l / c.len() as f64)),
                "acc_mutual_info" => argmax(
                    lls.iter()
                        .zip(unconditional.as_deref().unwrap_or(&[]))
                        .map(|(l, u)| l - u),
                ),
                _ => continue,
            };
            sample.metrics.push((m.clone(), hit(pred)));
        }
        sample.loglikelihoods = lls;
        sample.unconditional = unconditional;
    }
    let metrics = config
        .metrics
        .iter()
        .map(|m| {
            let xs: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.metrics.iter().find(|(n, _)| n == m).map(|(_, v)| *v))
                .collect();
            let (mean, se) = mean_and_stderr(&xs);
            (m.clone(), mean, se)
        })
        .collect();
    Ok(TaskResult {
        config: config.clone(),
        num_fewshot,
        original,
        samples,
        metrics,
    })
}

impl TaskResult {
    /// This task's part of lm-eval's results JSON: `results[task]` with `"acc,none"`,
    /// `"acc_stderr,none"` and `"alias"`, and the `configs`, `versions`, `n-shot` and
    /// `n-samples` entries.
    pub fn to_lm_eval_json(&self) -> Value {
        let c = &self.config;
        let mut results = serde_json::Map::new();
        results.insert(
            "alias".into(),
            Value::String(c.alias.clone().unwrap_or_else(|| c.task.clone())),
        );
        for (m, mean, se) in &self.metrics {
            // Generation metrics carry their filter (`exact_match,strict-match`); the others
            // are lm-eval's `none` filter.
            let (metric, filter) = m.split_once(',').unwrap_or((m.as_str(), "none"));
            results.insert(format!("{metric},{filter}"), json!(mean));
            let se = if se.is_finite() {
                json!(se)
            } else {
                json!("N/A")
            };
            results.insert(format!("{metric}_stderr,{filter}"), se);
        }
        json!({
            "results": { c.task.clone(): results },
            "configs": { c.task.clone(): c.raw },
            "versions": { c.task.clone(): c.version.clone().unwrap_or(Value::Null) },
            "n-shot": { c.task.clone(): self.num_fewshot },
            "n-samples": { c.task.clone(): {
                "original": self.original,
                "effective": self.samples.len(),
            }},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_lm_evals_sample_formula() {
        let (m, se) = mean_and_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        // sqrt(((0.25² · 3) + 0.75²) / 3) / 2
        let expected = ((0.0625 * 3.0 + 0.5625) / 3.0f64).sqrt() / 2.0;
        assert!((se - expected).abs() < 1e-15);
        assert!(mean_and_stderr(&[1.0]).1.is_nan());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
        assert_eq!(
            argmax([f64::NEG_INFINITY, f64::NEG_INFINITY].into_iter()),
            0
        );
    }
}
