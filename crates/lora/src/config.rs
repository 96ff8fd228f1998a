//! [`LoraConfig`]: PEFT's `LoraConfig` as stored in `adapter_config.json`.
//!
//! The fields Temper acts on are typed; every other key of a PEFT file is kept in
//! [`LoraConfig::extra`] and written back unchanged, so loading and re-saving a PEFT adapter
//! does not lose settings Temper does not know about.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{LoraError, Result};

/// The adapter's configuration file name (PEFT).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The seven decoder projections, which is what PEFT's `all-linear` selects on a Llama (it
/// excludes the output layer, `lm_head`).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which modules get an adapter (PEFT `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names or full paths: a module matches if its path equals one or ends with
    /// `.name` (PEFT's rule), e.g. `q_proj` or `model.layers.0.self_attn.q_proj`.
    Names(Vec<String>),
    /// `all-linear`, or a regular expression that must match the whole module path (PEFT uses
    /// `re.fullmatch`), e.g. `.*\.layers\.[01]\..*(q|v)_proj`.
    Pattern(String),
}

impl TargetModules {
    /// PEFT's `all-linear`: the seven projections.
    pub fn all_linear() -> Self {
        Self::Pattern("all-linear".into())
    }

    /// A list of module names.
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        Self::Names(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// A compiled matcher over module paths.
    ///
    /// # Errors
    /// An invalid regular expression.
    pub fn matcher(&self) -> Result<TargetMatcher> {
        Ok(match self {
            Self::Pattern(p) if p == "all-linear" => TargetMatcher::AllLinear,
            Self::Pattern(p) => TargetMatcher::Regex(
                Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| LoraError::InvalidConfig(format!("target_modules regex: {e}")))?,
            ),
            Self::Names(names) => TargetMatcher::Names(names.clone()),
        })
    }
}

/// [`TargetModules`] ready to test module paths.
#[derive(Debug, Clone)]
pub enum TargetMatcher {
    AllLinear,
    Regex(Regex),
    Names(Vec<String>),
}

impl TargetMatcher {
    /// Whether the module at `path` (e.g. `model.layers.0.self_attn.q_proj`) is targeted.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::AllLinear => ALL_LINEAR.iter().any(|n| suffix_match(path, n)),
            Self::Regex(re) => re.is_match(path),
            Self::Names(names) => names.iter().any(|n| suffix_match(path, n)),
        }
    }
}

/// PEFT's list rule: `path == name or path.endswith("." + name)`.
pub(crate) fn suffix_match(path: &str, name: &str) -> bool {
    path == name
        || (path.len() > name.len()
            && path.ends_with(name)
            && path.as_bytes()[path.len() - name.len() - 1] == b'.')
}

/// How new adapters are initialised (PEFT `init_lora_weights`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A Kaiming-uniform (a = √5, i.e. U(±1/√in), `nn.Linear`'s default), B zero, so
    /// the adapted model starts equal to the base. `false`: B random too (tests only).
    Bool(bool),
    /// `"gaussian"`: A ~ N(0, (1/r)²), B zero. Other PEFT methods (`pissa`, `olora`, `loftq`,
    /// ...) parse but are rejected by [`LoraConfig::validate`].
    Method(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        Self::Bool(true)
    }
}

fn default_bias() -> String {
    "none".into()
}

fn default_peft_type() -> String {
    "LORA".into()
}

/// PEFT's `LoraConfig`, (de)serialised exactly as `adapter_config.json`.
///
/// Build one with [`LoraConfig::new`] and the `with_*` setters, then [`LoraConfig::init`]
/// (or [`crate::inject`]) to add adapters to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is `lora_alpha / r · B·A` (`/ √r` with rsLoRA).
    pub lora_alpha: f64,
    /// Dropout on the adapter input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// `None` (JSON null) targets nothing and is an error at injection.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// rsLoRA: scale `lora_alpha / √r`, which keeps the update's magnitude independent of r.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA is not implemented; `true` is rejected.
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// Modules trained and saved whole (`lm_head`, `embed_tokens`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank overrides: key = pattern matched against the end of the module path.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides, same matching as `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only `"none"` is supported (the projections of Llama have no bias).
    #[serde(default = "default_bias")]
    pub bias: String,
    /// GPT-2 `Conv1D` layout; never true for Llama.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Every other key of the file, written back as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LoraConfig {
    /// Rank `r`, `lora_alpha`, all seven projections, no dropout, PEFT's default init.
    pub fn new(r: usize, lora_alpha: f64) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: Some(TargetModules::all_linear()),
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::default(),
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            bias: default_bias(),
            fan_in_fan_out: false,
            peft_type: default_peft_type(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            extra: serde_json::Map::new(),
        }
    }

    pub fn with_lora_dropout(mut self, p: f64) -> Self {
        self.lora_dropout = p;
        self
    }

    pub fn with_target_modules(mut self, t: TargetModules) -> Self {
        self.target_modules = Some(t);
        self
    }

    pub fn with_use_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }

    pub fn with_init_lora_weights(mut self, init: InitLoraWeights) -> Self {
        self.init_lora_weights = init;
        self
    }

    pub fn with_modules_to_save<S: AsRef<str>>(mut self, modules: &[S]) -> Self {
        self.modules_to_save = Some(modules.iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    pub fn with_base_model_name_or_path(mut self, name: impl Into<String>) -> Self {
        self.base_model_name_or_path = Some(name.into());
        self
    }

    /// Reject what Temper cannot reproduce exactly, before any weight is touched.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] or [`LoraError::Unsupported`], naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(LoraError::Unsupported(format!(
                "peft_type {:?} (only LORA)",
                self.peft_type
            )));
        }
        if self.r == 0 || self.rank_pattern.values().any(|&r| r == 0) {
            return Err(LoraError::InvalidConfig("r must be positive".into()));
        }
        if !self.lora_alpha.is_finite() {
            return Err(LoraError::InvalidConfig("lora_alpha must be finite".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(LoraError::InvalidConfig(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            )));
        }
        if self.use_dora {
            return Err(LoraError::Unsupported("use_dora (DoRA)".into()));
        }
        if self.bias != "none" {
            return Err(LoraError::Unsupported(format!(
                "bias {:?} (only \"none\")",
                self.bias
            )));
        }
        if self.fan_in_fan_out {
            return Err(LoraError::Unsupported("fan_in_fan_out".into()));
        }
        match &self.init_lora_weights {
            InitLoraWeights::Bool(_) => {}
            InitLoraWeights::Method(m) if m == "gaussian" => {}
            InitLoraWeights::Method(m) => {
                return Err(LoraError::Unsupported(format!("init_lora_weights {m:?}")));
            }
        }
        for key in [
            "layers_to_transform",
            "layer_replication",
            "target_parameters",
        ] {
            if self.extra.get(key).is_some_and(|v| !v.is_null()) {
                return Err(LoraError::Unsupported(key.into()));
            }
        }
        if self
            .extra
            .get("lora_bias")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            return Err(LoraError::Unsupported("lora_bias".into()));
        }
        for m in self.modules_to_save.iter().flatten() {
            if !matches!(
                m.as_str(),
                "lm_head" | "embed_tokens" | "model.embed_tokens"
            ) {
                return Err(LoraError::Unsupported(format!(
                    "modules_to_save {m:?} (only lm_head and embed_tokens)"
                )));
            }
        }
        if let Some(TargetModules::Names(names)) = &self.target_modules
            && let Some(n) = names
                .iter()
                .find(|n| suffix_match("lm_head", n) || n.ends_with("embed_tokens"))
        {
            return Err(LoraError::Unsupported(format!(
                "an adapter on {n:?} (only the seven decoder projections)"
            )));
        }
        self.target_modules
            .as_ref()
            .map(TargetModules::matcher)
            .transpose()?;
        Ok(())
    }

    /// The rank of the module at `path` (`rank_pattern` first, like PEFT).
    pub fn rank_for(&self, path: &str) -> usize {
        pattern_value(&self.rank_pattern, path).unwrap_or(self.r)
    }

    /// The alpha of the module at `path`.
    pub fn alpha_for(&self, path: &str) -> f64 {
        pattern_value(&self.alpha_pattern, path).unwrap_or(self.lora_alpha)
    }

    /// The scale of the update of the module at `path`: `alpha / r`, or `alpha / √r`.
    pub fn scale_for(&self, path: &str) -> f64 {
        let (r, alpha) = (self.rank_for(path) as f64, self.alpha_for(path));
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Read `adapter_config.json` from an adapter directory (or the file itself).
    ///
    /// # Errors
    /// I/O and JSON errors naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join(ADAPTER_CONFIG);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| LoraError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| LoraError::Json { path, source })
    }

    /// The JSON PEFT writes, pretty-printed.
    ///
    /// # Errors
    /// Serialisation failure (not expected for valid configs).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|source| LoraError::Json {
            path: ADAPTER_CONFIG.into(),
            source,
        })
    }
}

/// PEFT's `get_pattern_key`: the first key `k` with `re.match(rf"(.*\.)?({k})$", path)`;
/// a key that is not a valid regex is compared as a plain suffix.
fn pattern_value<V: Copy>(patterns: &BTreeMap<String, V>, path: &str) -> Option<V> {
    patterns.iter().find_map(|(k, v)| {
        let hit = match Regex::new(&format!("^(?:.*\\.)?(?:{k})$")) {
            Ok(re) => re.is_match(path),
            Err(_) => suffix_match(path, k),
        };
        hit.then_some(*v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_config_round_trips_with_unknown_keys() {
        let json = r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "use_rslora": false, "init_lora_weights": true, "modules_to_save": null,
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "eva_config": null, "lora_bias": false}"#;
        let c: LoraConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(c.r, 4);
        assert_eq!(
            c.target_modules,
            Some(TargetModules::names(&["q_proj", "v_proj"]))
        );
        assert!(c.extra.contains_key("eva_config"));
        c.validate().expect("valid");
        let back: LoraConfig =
            serde_json::from_slice(&c.to_json_bytes().expect("json")).expect("reparse");
        assert_eq!(back, c);
    }

    #[test]
    fn matching_follows_peft() {
        let names = TargetModules::names(&["q_proj"]).matcher().expect("m");
        assert!(names.matches("model.layers.0.self_attn.q_proj"));
        assert!(!names.matches("model.layers.0.self_attn.xq_proj"));
        let all = TargetModules::all_linear().matcher().expect("m");
        assert!(all.matches("model.layers.3.mlp.down_proj"));
        assert!(!all.matches("lm_head"));
        let re = TargetModules::Pattern(r".*layers\.1\..*_proj".into())
            .matcher()
            .expect("m");
        assert!(re.matches("model.layers.1.mlp.up_proj"));
        assert!(!re.matches("model.layers.10.mlp.up_proj"));
    }

    #[test]
    fn scales_and_patterns() {
        let mut c = LoraConfig::new(4, 8.0);
        assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
        c.rank_pattern.insert("v_proj".into(), 16);
        assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 16);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 4);
        c.use_rslora = true;
        assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj"), 4.0);
    }

    #[test]
    fn unsupported_settings_are_rejected() {
        let mut c = LoraConfig::new(4, 8.0);
        c.use_dora = true;
        assert!(matches!(c.validate(), Err(LoraError::Unsupported(_))));
        let c =
            LoraConfig::new(4, 8.0).with_init_lora_weights(InitLoraWeights::Method("pissa".into()));
        assert!(matches!(c.validate(), Err(LoraError::Unsupported(_))));
        let c = LoraConfig::new(0, 8.0);
        assert!(matches!(c.validate(), Err(LoraError::InvalidConfig(_))));
    }
}
