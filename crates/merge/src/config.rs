//! mergekit's YAML configuration, accepted as users write it.
//!
//! Both syntaxes are supported: `models:` (every layer of every model) and `slices:` (layer
//! ranges, for stacking). Unknown keys are errors naming the key — mergekit ignores some of
//! them silently, which hides typos such as `weigth:`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{DType, MergeError, Result};

mod ranges;

/// A whole merge configuration (`mergekit-yaml` file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// The method's registry name (`slerp`, `ties`, ...).
    pub merge_method: String,
    /// The model whose parameters anchor the merge (SLERP's `t = 0` end, task vectors' origin).
    #[serde(default)]
    pub base_model: Option<ModelRef>,
    /// `models:` syntax: every layer of each model.
    #[serde(default)]
    pub models: Option<Vec<InputModel>>,
    /// `slices:` syntax: output layers built from layer ranges of the sources.
    #[serde(default)]
    pub slices: Option<Vec<OutputSlice>>,
    /// Global parameters (lowest precedence).
    #[serde(default)]
    pub parameters: Parameters,
    /// Load/compute dtype; inputs are cast to it when read.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Dtype of the saved tensors (defaults to `dtype`, then to the inputs' dtype).
    #[serde(default)]
    pub out_dtype: Option<String>,
    /// Legacy spelling of `tokenizer.source`.
    #[serde(default)]
    pub tokenizer_source: Option<String>,
    /// Output vocabulary: `source: base | union | <model>`.
    #[serde(default)]
    pub tokenizer: Option<TokenizerConfig>,
    /// A chat template for the output (`auto`, a known name, or a Jinja template).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// A name for the merge (mergekit-multi); only recorded in the model card.
    #[serde(default)]
    pub name: Option<String>,
}

/// One entry of `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    pub model: ModelRef,
    #[serde(default)]
    pub parameters: Parameters,
}

/// One entry of `slices:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    pub sources: Vec<SliceSource>,
    #[serde(default)]
    pub base_model: Option<ModelRef>,
    #[serde(default)]
    pub parameters: Parameters,
}

/// One source of a slice: a model and a half-open layer range `[start, end)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSource {
    pub model: ModelRef,
    pub layer_range: [usize; 2],
    #[serde(default)]
    pub parameters: Parameters,
}

/// `tokenizer:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// `base`, `union`, or a model reference.
    pub source: String,
    /// Pad the output vocabulary (embedding rows) to a multiple of this.
    #[serde(default)]
    pub pad_to_multiple_of: Option<usize>,
}

/// A model path, optionally with a LoRA adapter to apply first (`base+path/to/lora`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub path: String,
    pub lora: Option<String>,
}

impl ModelRef {
    /// Parse `path` or `path+lora_path`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('+') {
            Some((path, lora)) if !path.is_empty() && !lora.is_empty() => Self {
                path: path.to_string(),
                lora: Some(lora.to_string()),
            },
            _ => Self {
                path: s.to_string(),
                lora: None,
            },
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lora {
            Some(l) => write!(f, "{}+{}", self.path, l),
            None => f.write_str(&self.path),
        }
    }
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(String),
            // mergekit also accepts `{model: {path: ...}, lora: {path: ...}}`.
            Full {
                model: PathOnly,
                #[serde(default)]
                lora: Option<PathOnly>,
            },
        }
        #[derive(Deserialize)]
        struct PathOnly {
            path: String,
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Plain(s) => Self::parse(&s),
            Raw::Full { model, lora } => Self {
                path: model.path,
                lora: lora.map(|l| l.path),
            },
        })
    }
}

/// Named parameters at one level of precedence.
pub type Parameters = BTreeMap<String, ParamValue>;

/// A parameter's value: a scalar, a gradient, or filter conditions (first match wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Number(f64),
    /// Values interpolated across layer depth.
    Gradient(Vec<f64>),
    /// `[{filter: self_attn, value: ...}, {value: ...}]`.
    Conditions(Vec<Condition>),
}

/// One `{filter, value}` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub filter: Option<String>,
    pub value: ParamValue,
}

impl ParamValue {
    /// The value for tensor `name` at layer fraction `x` (mergekit's rules: substring filters,
    /// first match wins, gradients interpolated linearly in f64). `None` if no condition
    /// matches, so the next precedence level is consulted.
    pub fn evaluate(&self, name: &str, x: f64) -> Option<f64> {
        match self {
            Self::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Self::Number(v) => Some(*v),
            Self::Gradient(values) => gradient_at(values, x),
            Self::Conditions(conds) => conds
                .iter()
                .find(|c| match c.filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => name.contains(f),
                })
                .and_then(|c| c.value.evaluate(name, x)),
        }
    }
}

/// A gradient of `n` values at fraction `x ∈ [0, 1]`: `s = x·(n−1)`, linear between
/// `v[floor(s)]` and the next value.
pub fn gradient_at(values: &[f64], x: f64) -> Option<f64> {
    let n = values.len();
    match n {
        0 => None,
        1 => Some(values[0]),
        _ => {
            let s = x * (n - 1) as f64;
            // Truncation like Python's int() on a non-negative float.
            let i0 = (s.max(0.0) as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let f = s - i0 as f64;
            Some((1.0 - f) * values[i0] + f * values[i1])
        }
    }
}

impl MergeConfig {
    /// Parse YAML text. `origin` names the file in errors.
    ///
    /// # Errors
    /// Malformed YAML or an unknown key (the message names it and its position).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let cfg: Self = serde_yaml_ng::from_str(text)
            .map_err(|e| MergeError::Config(format!("{origin}: {e}")))?;
        cfg.validate_shape()?;
        cfg.validate_parameters(origin)?;
        Ok(cfg)
    }

    /// Read and parse a YAML file.
    ///
    /// # Errors
    /// I/O errors and everything [`MergeConfig::from_yaml`] rejects.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            temper_formats::read_regular_to_string(path).map_err(|e| MergeError::io(path, e))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    fn validate_shape(&self) -> Result<()> {
        match (&self.models, &self.slices) {
            (Some(_), Some(_)) => Err(MergeError::Config(
                "give either `models` or `slices`, not both".into(),
            )),
            (None, None) => Err(MergeError::Config(
                "one of `models` or `slices` is required".into(),
            )),
            (Some(m), None) if m.is_empty() => Err(MergeError::Config("`models` is empty".into())),
            (None, Some(s)) if s.is_empty() => Err(MergeError::Config("`slices` is empty".into())),
            (None, Some(slices)) => {
                for (i, s) in slices.iter().enumerate() {
                    if s.sources.is_empty() {
                        return Err(MergeError::Config(format!("slices[{i}] has no sources")));
                    }
                    for src in &s.sources {
                        let [a, b] = src.layer_range;
                        if a > b {
                            return Err(MergeError::Config(format!(
                                "slices[{i}]: layer_range [{a}, {b}] of {} is reversed",
                                src.model
                            )));
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The load/compute dtype, if set.
    ///
    /// # Errors
    /// An unknown dtype name.
    pub fn load_dtype(&self) -> Result<Option<DType>> {
        self.dtype.as_deref().map(str::parse).transpose()
    }

    /// The save dtype, if set (`out_dtype`, else `dtype`).
    ///
    /// # Errors
    /// An unknown dtype name.
    pub fn save_dtype(&self) -> Result<Option<DType>> {
        match self.out_dtype.as_deref() {
            Some(s) => Ok(Some(s.parse()?)),
            None => self.load_dtype(),
        }
    }

    /// The requested tokenizer source (`tokenizer.source`, else `tokenizer_source`).
    pub fn tokenizer_source(&self) -> Option<&str> {
        self.tokenizer
            .as_ref()
            .map(|t| t.source.as_str())
            .or(self.tokenizer_source.as_deref())
    }

    /// Every distinct model referenced, in first-mention order (base model first if it is
    /// mentioned only as `base_model`... it is appended last, as mergekit does).
    pub fn referenced_models(&self) -> Vec<ModelRef> {
        let mut out: Vec<ModelRef> = Vec::new();
        let mut push = |m: &ModelRef| {
            if !out.contains(m) {
                out.push(m.clone());
            }
        };
        if let Some(models) = &self.models {
            models.iter().for_each(|m| push(&m.model));
        }
        if let Some(slices) = &self.slices {
            for s in slices {
                s.sources.iter().for_each(|src| push(&src.model));
                if let Some(b) = &s.base_model {
                    push(b);
                }
            }
        }
        if let Some(b) = &self.base_model {
            push(b);
        }
        out
    }
}

/// Resolve a model path as mergekit does (relative to the working directory), falling back
/// to the configuration file's directory so a config can travel with its models, then — for
/// a hub id such as `org/name` that is neither — to its snapshot in the local Hugging Face
/// cache (a miss is logged with where it looked; the path is returned as written and the
/// loader reports it missing).
pub fn resolve_model_path(path: &str, config_dir: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() || p.exists() {
        return p;
    }
    match config_dir {
        Some(dir) if dir.join(&p).exists() => dir.join(p),
        _ => temper_formats::hub::resolve_model(&p).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            p
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRADIENT: &str = r"
models:
  - model: a
  - model: b
merge_method: slerp
base_model: a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
";

    #[test]
    fn gradient_config_resolves_like_mergekit() -> Result<()> {
        let cfg = MergeConfig::from_yaml(GRADIENT, "test")?;
        let t = &cfg.parameters["t"];
        let q = "model.layers.1.self_attn.q_proj.weight";
        let v = t.evaluate(q, 1.0 / 3.0).unwrap_or(f64::NAN);
        assert!((v - 0.433_333_333_333_333_3).abs() < 1e-12, "{v}");
        let m = t.evaluate("model.layers.2.mlp.up_proj.weight", 2.0 / 3.0);
        assert!(m.is_some_and(|m| (m - 0.433_333_333_333_333_3).abs() < 1e-12));
        assert_eq!(t.evaluate("model.norm.weight", 0.0), Some(0.5));
        assert_eq!(cfg.load_dtype()?, Some(DType::BF16));
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GRADIENT.replace("dtype: bfloat16", "dtpye: bfloat16");
        let err = MergeConfig::from_yaml(&text, "cfg.yml")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("dtpye")),
            "{err:?}"
        );
    }

    #[test]
    fn lora_reference_is_split() {
        let m = ModelRef::parse("base/model+adapters/x");
        assert_eq!(m.path, "base/model");
        assert_eq!(m.lora.as_deref(), Some("adapters/x"));
    }
}
