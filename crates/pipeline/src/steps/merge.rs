//! A merge: a stage's result and the instruct parent under a mergekit recipe, in
//! `OUT/merges/NAME/`, with its per-tensor statistics.

use std::time::Instant;

use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};

use super::{MARKER, ModelRef, Runner, num_hidden_layers, read_marker, slug, write_marker};
use crate::config::{Recipe, StageSpec};
use crate::fingerprint::Fingerprint;
use crate::report::{MergeResult, TensorStat};
use crate::{PipelineError, Result};

impl Runner<'_> {
    /// Merge `finetuned` (stage `stage`'s result, or with `epoch` that epoch's model) with
    /// the instruct parent under `recipe`, into `OUT/merges/STAGE[-epochE]-LABEL/`.
    pub(crate) fn merge(
        &self,
        stage: &StageSpec,
        epoch: Option<usize>,
        recipe: &Recipe,
        finetuned: &ModelRef,
        instruct: &ModelRef,
        variant: &str,
    ) -> Result<(ModelRef, MergeResult)> {
        let source = match epoch {
            Some(e) => format!("{}-epoch{e}", stage.name),
            None => stage.name.clone(),
        };
        let name = format!("{source}-{}", slug(&recipe.label));
        let dir = self.out().join("merges").join(&name);
        let num_layers = num_hidden_layers(&instruct.dir)?;
        let fingerprint = Fingerprint::new("merge")
            .str("yaml", &recipe.yaml)
            .str("finetuned", &finetuned.fingerprint)
            .str("instruct", &instruct.fingerprint)
            .finish();
        let model = ModelRef {
            dir: dir.clone(),
            fingerprint: fingerprint.clone(),
        };
        if let Some(mut done) = read_marker::<MergeResult>(&dir.join(MARKER), &fingerprint) {
            self.step(&format!("merge {name}: up to date, skipped"));
            done.skipped = true;
            return Ok((model, done));
        }
        let yaml = recipe
            .yaml
            .replace("{finetuned}", &finetuned.dir.display().to_string())
            .replace("{instruct}", &instruct.dir.display().to_string())
            .replace("{num_layers}", &num_layers.to_string());
        let merge_err = |source| PipelineError::Merge {
            name: name.clone(),
            source: Box::new(source),
        };
        let merge_config = MergeConfig::from_yaml(&yaml, "merge.yaml").map_err(merge_err)?;
        self.step(&format!("merge {name}: {variant}"));
        let t0 = Instant::now();
        let options = MergeOptions {
            overwrite: true,
            ..MergeOptions::default()
        };
        let summary = run_merge(&merge_config, Some(&yaml), &dir, &options, &NoProgress)
            .map_err(merge_err)?;
        let seconds = t0.elapsed().as_secs_f64();
        let tensors: Vec<TensorStat> = summary
            .reports
            .iter()
            .map(|r| TensorStat {
                name: r.name.clone(),
                t: r.method.t,
                cosine: r.method.cosine,
                linear_fallback: r.method.linear_fallback,
            })
            .collect();
        let result = MergeResult::new(
            name.clone(),
            variant.to_string(),
            stage.name.clone(),
            seconds,
            tensors,
        );
        write_marker(&dir.join(MARKER), &fingerprint, &result)?;
        Ok((model, result))
    }
}
