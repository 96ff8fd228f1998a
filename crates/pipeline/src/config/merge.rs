//! `[merge]` and `[[merge.recipe]]`: the mergekit recipes each stage's result is merged with
//! the instruct parent under.

use serde::{Deserialize, Serialize};

use super::{StageSpec, default_true};
use crate::{PipelineError, Result};

/// The paper's SLERP recipe (mergekit's `gradient-slerp` example, the schedule the paper used):
/// `t = 0` keeps the instruct model, `t = 1` the fine-tuned one.
pub const PAPER_SLERP_YAML: &str = r#"slices:
  - sources:
      - model: "{finetuned}"
        layer_range: [0, {num_layers}]
      - model: "{instruct}"
        layer_range: [0, {num_layers}]
merge_method: slerp
base_model: "{instruct}"
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"#;

/// How each stage's result is merged with the instruct parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A mergekit YAML config in which `{finetuned}`, `{instruct}` and `{num_layers}` are
    /// replaced by the stage's model directory, the instruct model's directory and its layer
    /// count. Default: the paper's gradient SLERP, in float32 (see `docs/pipeline.md`: a
    /// bfloat16 merge would round away most of a short fine-tune's weight change).
    #[serde(default = "default_merge_yaml")]
    pub yaml: String,
    /// Suffix of merged variants' names (`Instruct-CPT-SLERP`).
    #[serde(default = "default_merge_label")]
    pub label: String,
    /// Further recipes (`[[merge.recipe]]`), each merged with the same parents and evaluated
    /// as its own variant (`Instruct-CPT-SFT-ORPO-SLERP_G`): the schedule sweep. `yaml` and
    /// `label` above stay the main recipe, the one the CPT-epochs sweep uses.
    #[serde(rename = "recipe", default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<MergeRecipe>,
}

/// One more merge recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRecipe {
    /// Suffix of its variants' names (`SLERP_G`): letters, digits, `-` and `_`.
    pub label: String,
    /// A mergekit YAML with the placeholders of `[merge] yaml`; or give `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
    /// One of the shipped SLERP schedules: `A` … `G` or `paper` (`crate::schedules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The stages whose results it merges (`["orpo"]`). Default: every merged stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<String>>,
}

/// A recipe as a merge step takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub label: String,
    pub yaml: String,
}

impl MergeRecipe {
    /// Its YAML: as given, or its schedule's.
    ///
    /// # Errors
    /// Neither or both of `yaml` and `schedule`, or an unknown schedule, naming the recipe.
    pub fn yaml_text(&self) -> Result<String> {
        let origin = format!("[[merge.recipe]] `{}`", self.label);
        match (&self.yaml, &self.schedule) {
            (Some(yaml), None) => Ok(yaml.clone()),
            (None, Some(name)) => crate::schedules::schedule(name)
                .map(crate::schedules::Schedule::yaml)
                .ok_or_else(|| {
                    PipelineError::config(
                        &origin,
                        format!("unknown `schedule` `{name}` (A … G or paper)"),
                    )
                }),
            _ => Err(PipelineError::config(
                &origin,
                "give exactly one of `yaml` and `schedule`",
            )),
        }
    }
}

impl MergeSettings {
    /// The recipes that merge `stage`'s result, the main one first; none when merging is off.
    ///
    /// # Errors
    /// A recipe without a valid YAML (checked when the config is loaded).
    pub fn recipes_for(&self, stage: &StageSpec) -> Result<Vec<Recipe>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if stage.merge {
            out.push(Recipe {
                label: self.label.clone(),
                yaml: self.yaml.clone(),
            });
        }
        for r in &self.recipes {
            let applies = match &r.stages {
                Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(&stage.name)),
                None => stage.merge,
            };
            if applies {
                out.push(Recipe {
                    label: r.label.clone(),
                    yaml: r.yaml_text()?,
                });
            }
        }
        Ok(out)
    }
}

fn default_merge_yaml() -> String {
    PAPER_SLERP_YAML.into()
}

fn default_merge_label() -> String {
    "SLERP".into()
}

impl Default for MergeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            yaml: default_merge_yaml(),
            label: default_merge_label(),
            recipes: Vec::new(),
        }
    }
}

impl MergeSettings {
    /// Every recipe: a valid label no other shares (they name directories), its placeholders,
    /// stages that exist.
    pub(crate) fn validate(&self, origin: &str, stages: &[StageSpec]) -> Result<()> {
        let mut labels = std::collections::BTreeMap::new();
        let main = [(
            "merge.yaml".to_string(),
            self.label.clone(),
            self.yaml.clone(),
        )];
        let mut all = main.to_vec();
        for r in &self.recipes {
            all.push((
                format!("[[merge.recipe]] `{}`", r.label),
                r.label.clone(),
                r.yaml_text()?,
            ));
            for name in r.stages.iter().flatten() {
                if !stages.iter().any(|s| s.name.eq_ignore_ascii_case(name)) {
                    return Err(PipelineError::config(
                        origin,
                        format!("[[merge.recipe]] `{}`: no stage named `{name}`", r.label),
                    ));
                }
            }
        }
        for (key, label, yaml) in all {
            let valid = !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(PipelineError::config(
                    origin,
                    format!("{key}: label `{label}`: use letters, digits, - and _"),
                ));
            }
            // Labels name the merge directories: two that differ only in case or in `-`/`_`
            // would share one.
            let dir = label.to_ascii_lowercase().replace('_', "-");
            if let Some(other) = labels.insert(dir, label.clone()) {
                return Err(PipelineError::config(
                    origin,
                    format!("{key}: label `{label}` collides with `{other}`"),
                ));
            }
            for placeholder in ["{finetuned}", "{instruct}"] {
                if !yaml.contains(placeholder) {
                    return Err(PipelineError::config(
                        origin,
                        format!("`{key}` must contain the placeholder {placeholder}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
