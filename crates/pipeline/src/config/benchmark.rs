//! `[benchmark]`: which benchmark, how it is scored, under which protocols.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use temper_backend::FloatPrecision;
use temper_bench_eval::results::Metric;
use temper_bench_eval::{EvalMode, EvalSettings};

use crate::Result;
use crate::fingerprint::{Fingerprint, file_sha256};

/// Which benchmark and how it is scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSettings {
    /// JSONL benchmark (`temper-bench-eval`'s format).
    pub file: PathBuf,
    /// `loglik` or `generate` (the paper's protocol): the primary protocol, the one the
    /// variant table, the merge analysis and the plots use.
    #[serde(default)]
    pub mode: EvalMode,
    /// Further protocols every variant is also evaluated under (`["generate"]`), each with
    /// its own records, fingerprints and accuracy table in the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<EvalMode>,
    /// The metric the variant table, the merge analysis and the plots use: `acc`,
    /// `acc_norm` or `acc_bytes` (generation has `acc` only).
    #[serde(default)]
    pub metric: Metric,
    /// Evaluate only the first N questions.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Log-likelihood: wrap the context in the chat template.
    #[serde(default)]
    pub chat: bool,
    /// `f32`, `bf16` or `f16`: the dtype every variant's weights are loaded in for its
    /// evaluation (on the CPU the activations stay f32 and products accumulate in f32). Part
    /// of the evaluations' fingerprint, so changing it re-evaluates.
    #[serde(default, with = "precision_name")]
    pub dtype: FloatPrecision,
    /// Generation: tokens generated per question.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Paired bootstrap resamples of the merge analysis.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_eval_batch() -> usize {
    8
}

fn default_max_new_tokens() -> usize {
    8
}

fn default_resamples() -> usize {
    2000
}

impl BenchmarkSettings {
    /// The settings `temper-bench-eval` takes.
    pub fn eval_settings(&self) -> EvalSettings {
        self.eval_settings_for(self.mode)
    }

    /// The protocols evaluated: the primary `mode` first, then `also`.
    pub fn protocols(&self) -> Vec<EvalMode> {
        std::iter::once(self.mode)
            .chain(self.also.iter().copied())
            .collect()
    }

    /// The metric a protocol is analysed under: the configured one, or `acc` for generation
    /// (which has no other).
    pub fn metric_for(&self, mode: EvalMode) -> Metric {
        match mode {
            EvalMode::Generate => Metric::Acc,
            EvalMode::Loglik => self.metric,
        }
    }

    /// [`eval_settings`](Self::eval_settings) under protocol `mode`.
    pub fn eval_settings_for(&self, mode: EvalMode) -> EvalSettings {
        EvalSettings {
            mode,
            batch_size: self.batch_size,
            chat: self.chat,
            max_new_tokens: self.max_new_tokens,
        }
    }

    /// What the evaluations' records depend on: the benchmark's bytes, the
    /// [`eval_settings`](Self::eval_settings), the limit and the dtype (the metric and the
    /// test settings only change the analysis).
    ///
    /// # Errors
    /// The benchmark file cannot be read.
    pub fn records_fingerprint(&self) -> Result<String> {
        self.records_fingerprint_for(self.mode)
    }

    /// [`records_fingerprint`](Self::records_fingerprint) under protocol `mode`.
    ///
    /// # Errors
    /// The benchmark file cannot be read.
    pub fn records_fingerprint_for(&self, mode: EvalMode) -> Result<String> {
        let mut f = Fingerprint::new("bench");
        f.str("file", &file_sha256(&self.file)?)
            .json("settings", &self.eval_settings_for(mode))
            .json("limit", &self.limit);
        // f32 adds no part, so evaluations made before the key existed (all in f32) stay
        // valid; any other dtype re-evaluates every variant.
        if self.dtype != FloatPrecision::F32 {
            f.str("dtype", &self.dtype.to_string());
        }
        Ok(f.finish())
    }
}

/// A protocol's name as the config writes it (`loglik`, `generate`).
pub fn mode_key(mode: EvalMode) -> &'static str {
    match mode {
        EvalMode::Loglik => "loglik",
        EvalMode::Generate => "generate",
    }
}

/// [`FloatPrecision`] as its name in TOML (`"bf16"`), parsed with its `FromStr`.
mod precision_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use temper_backend::FloatPrecision;

    pub fn serialize<S: Serializer>(p: &FloatPrecision, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FloatPrecision, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}
