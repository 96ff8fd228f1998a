//! A variant benchmarked: `OUT/eval/VARIANT/records.jsonl` (per question) and
//! `summary.json`, reused while the model and the benchmark settings are unchanged.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use temper_backend::DeviceSpec;
use temper_bench_eval::results::{QuestionRecord, Summary, read_records, summarize, write_records};
use temper_bench_eval::{EvalMode, Question, evaluate_model};
use temper_formats::write_atomic;
use temper_llm_arch::Pretrained;

use super::{MARKER, Runner, Variant, create_dir, read_marker, remove_dir, slug, write_marker};
use crate::config::mode_key;
use crate::fingerprint::Fingerprint;
use crate::report::VariantResult;
use crate::{PipelineError, Result};

impl Runner<'_> {
    /// Benchmark `variant` under protocol `mode` (`bench_fingerprint`: that protocol's
    /// records fingerprint), into `OUT/eval/VARIANT/` for the primary protocol and
    /// `OUT/eval-MODE/VARIANT/` for each further one.
    pub(crate) fn evaluate(
        &self,
        variant: &Variant,
        questions: &[Question],
        mode: EvalMode,
        bench_fingerprint: &str,
    ) -> Result<(VariantResult, Vec<QuestionRecord>)> {
        let bench = &self.config.benchmark;
        let (folder, label) = if mode == bench.mode {
            ("eval".to_string(), String::new())
        } else {
            (
                format!("eval-{}", mode_key(mode)),
                format!(" ({})", mode_key(mode)),
            )
        };
        let dir = self.out().join(folder).join(slug(&variant.name));
        let fingerprint = Fingerprint::new("eval")
            .str("model", &variant.model.fingerprint)
            .str("bench", bench_fingerprint)
            .finish();
        let records_path = dir.join("records.jsonl");
        let eval_err = |source| PipelineError::Eval {
            variant: variant.name.clone(),
            source: Box::new(source),
        };
        let (records, seconds, skipped) =
            match read_marker::<EvalDone>(&dir.join(MARKER), &fingerprint) {
                Some(done) if records_path.exists() => {
                    self.step(&format!(
                        "eval {}{label}: up to date, skipped",
                        variant.name
                    ));
                    (
                        read_records(&records_path).map_err(eval_err)?,
                        done.seconds,
                        true,
                    )
                }
                _ => {
                    remove_dir(&dir)?;
                    create_dir(&dir)?;
                    self.step(&format!(
                        "eval {}{label}: {} questions",
                        variant.name,
                        questions.len()
                    ));
                    let device = self.config.device.parse::<DeviceSpec>()?.device()?;
                    let t0 = Instant::now();
                    let p = Pretrained::load(&variant.model.dir, &device, bench.dtype).map_err(
                        |source| PipelineError::Model {
                            path: variant.model.dir.clone(),
                            source: Box::new(source),
                        },
                    )?;
                    let bar = if self.options.progress {
                        indicatif::ProgressBar::new(questions.len() as u64)
                    } else {
                        indicatif::ProgressBar::hidden()
                    };
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} {bar:30} {pos}/{len} questions [{elapsed} < {eta}]",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_message(variant.name.clone());
                    let records =
                        evaluate_model(&p, questions, &bench.eval_settings_for(mode), |done, _| {
                            bar.set_position(done as u64);
                        })
                        .map_err(eval_err)?;
                    bar.finish_and_clear();
                    let seconds = t0.elapsed().as_secs_f64();
                    write_records(&records_path, &records).map_err(eval_err)?;
                    let summaries: std::collections::BTreeMap<&str, Summary> = mode
                        .metrics()
                        .iter()
                        .map(|(n, m)| (*n, summarize(&records, *m)))
                        .collect();
                    let text = serde_json::to_string_pretty(&summaries)
                        .map_err(|e| PipelineError::Report(e.to_string()))?;
                    write_atomic(&dir.join("summary.json"), text.as_bytes())?;
                    write_marker(&dir.join(MARKER), &fingerprint, EvalDone { seconds })?;
                    (records, seconds, false)
                }
            };
        let summaries = mode
            .metrics()
            .iter()
            .map(|(n, m)| ((*n).to_string(), summarize(&records, *m)))
            .collect();
        let result = VariantResult {
            name: variant.name.clone(),
            kind: variant.kind,
            model_dir: variant.model.dir.clone(),
            fingerprint: variant.model.fingerprint.clone(),
            parents: variant.parents.clone(),
            seconds,
            skipped,
            summary: summarize(&records, bench.metric_for(mode)),
            summaries,
            vs_instruct: None,
            stage: variant.stage.clone(),
            epoch: variant.epoch,
            recipe: variant.recipe.clone(),
        };
        Ok((result, records))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EvalDone {
    seconds: f64,
}
