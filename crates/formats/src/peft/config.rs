//! [`LoraConfig`]: PEFT's `LoraConfig` as stored in `adapter_config.json`, read and written.
//!
//! The fields Temper acts on are typed; every other key of a PEFT file is kept in
//! [`LoraConfig::extra`] and written back unchanged, so loading and re-saving a PEFT adapter
//! does not lose settings Temper does not know about. Absent or `null` typed keys take PEFT's
//! defaults (`r` 8, `lora_alpha` 8, ...). Errors name the file and the key.
//!
//! What a consumer can do with a config is its own check: `temper-lora` rejects DoRA, biases
//! and other initialisations; `temper-merge` rejects DoRA but merges `fan_in_fan_out` adapters.

use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::ADAPTER_CONFIG;
use super::targets::{
    PatternMap, TargetMatcher, TargetModules, full_match_regex, pattern_key_regex,
};
use crate::atomic::write_atomic;
use crate::{FormatsError, Result};

/// How new adapters are initialised (PEFT `init_lora_weights`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A Kaiming-uniform (a = √5, i.e. U(±1/√in), `nn.Linear`'s default), B zero, so
    /// the adapted model starts equal to the base. `false`: B random too (tests only).
    Bool(bool),
    /// `"gaussian"`: A ~ N(0, (1/r)²), B zero; or another PEFT method (`pissa`, `olora`,
    /// `loftq`, ...), which a consumer may reject.
    Method(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        Self::Bool(true)
    }
}

/// A LoRA alpha as the file spells it. PEFT's files hold Python numbers — `8` from
/// `lora_alpha=8`, `6.0` from `lora_alpha=6.0` — and a round trip keeps the spelling (mergekit
/// and PEFT write integers, Temper's own adapters have floats). Compares as an `f64`.
#[derive(Debug, Clone, Copy)]
pub enum Alpha {
    Int(i64),
    Float(f64),
}

impl Alpha {
    /// The value.
    pub fn value(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
        }
    }
}

impl From<f64> for Alpha {
    fn from(f: f64) -> Self {
        Self::Float(f)
    }
}

impl From<i64> for Alpha {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<i32> for Alpha {
    fn from(i: i32) -> Self {
        Self::Int(i.into())
    }
}

impl From<usize> for Alpha {
    fn from(n: usize) -> Self {
        i64::try_from(n).map_or(Self::Float(n as f64), Self::Int)
    }
}

impl From<Alpha> for f64 {
    fn from(a: Alpha) -> Self {
        a.value()
    }
}

impl PartialEq for Alpha {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl PartialEq<f64> for Alpha {
    fn eq(&self, other: &f64) -> bool {
        self.value() == *other
    }
}

impl std::fmt::Display for Alpha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x:?}"),
        }
    }
}

impl Serialize for Alpha {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            Self::Int(i) => serializer.serialize_i64(i),
            Self::Float(f) => serializer.serialize_f64(f),
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Num;
        impl Visitor<'_> for Num {
            type Value = Alpha;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Alpha, E> {
                Ok(Alpha::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Alpha, E> {
                Ok(i64::try_from(v).map_or(Alpha::Float(v as f64), Alpha::Int))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Alpha, E> {
                Ok(Alpha::Float(v))
            }
        }
        deserializer.deserialize_any(Num)
    }
}

/// PEFT's default rank and alpha (`LoraConfig.r`, `LoraConfig.lora_alpha`).
const DEFAULT_R: usize = 8;
const DEFAULT_ALPHA: i64 = 8;

/// PEFT's `LoraConfig`, (de)serialised exactly as `adapter_config.json`.
///
/// Build one with [`LoraConfig::new`] and the `with_*` setters; read one with
/// [`LoraConfig::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank (default 8).
    pub r: usize,
    /// Scale numerator: the update is `lora_alpha / r · B·A` (`/ √r` with rsLoRA). Default 8.
    pub lora_alpha: f64,
    /// Whether `lora_alpha` was given as an integer, so that it is written back as one (when
    /// it still is integral).
    lora_alpha_is_int: bool,
    /// Dropout on the adapter input during training.
    pub lora_dropout: f64,
    /// Which modules get an adapter; `None` (JSON null) names none.
    pub target_modules: Option<TargetModules>,
    /// Modules never adapted, even when `target_modules` selects them (written only when set).
    pub exclude_modules: Option<TargetModules>,
    /// rsLoRA: scale `lora_alpha / √r`, which keeps the update's magnitude independent of r.
    pub use_rslora: bool,
    /// DoRA (a magnitude vector per module).
    pub use_dora: bool,
    pub init_lora_weights: InitLoraWeights,
    /// Modules trained and saved whole (`lm_head`, `embed_tokens`).
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank overrides, in file order; keys are regular expressions matched against
    /// the end of the module path (see [`crate::peft::targets`]).
    pub rank_pattern: PatternMap<usize>,
    /// Per-module alpha overrides, same matching as `rank_pattern`.
    pub alpha_pattern: PatternMap<Alpha>,
    /// Which biases are trained (`"none"`, `"all"`, `"lora_only"`).
    pub bias: String,
    /// The base layer stores its weight `[in, out]` (GPT-2's `Conv1D`).
    pub fan_in_fan_out: bool,
    pub peft_type: String,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    /// Every other key of the file, written back as read (after the typed keys, sorted).
    pub extra: Map<String, Value>,
}

/// A key that could not be read, before the file's path is known.
#[derive(Debug)]
struct KeyError {
    key: String,
    reason: String,
}

/// Reads the keys of an `adapter_config.json` object in file order (so that `rank_pattern`
/// keeps its order), typed keys into their fields, every other key into `extra`. The first
/// key that fails is also left in `failed`, so that callers can name it.
struct ConfigVisitor<'a> {
    failed: &'a mut Option<KeyError>,
}

impl<'de> Visitor<'de> for ConfigVisitor<'_> {
    type Value = LoraConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object (PEFT's adapter_config.json)")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut access: A,
    ) -> std::result::Result<LoraConfig, A::Error> {
        let failed = self.failed;
        let mut c = LoraConfig::new(DEFAULT_R, DEFAULT_ALPHA);
        // A file states its targets and task; absent keys mean PEFT's defaults (None).
        c.target_modules = None;
        c.task_type = None;
        while let Some(key) = access.next_key::<String>()? {
            // `null` is "unset" for every typed key: the default stays.
            macro_rules! read {
                ($field:expr) => {
                    match access.next_value::<Option<_>>() {
                        Ok(v) => {
                            if let Some(v) = v {
                                $field = v;
                            }
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            let msg = format!("`{key}`: {reason}");
                            *failed = Some(KeyError { key, reason });
                            return Err(serde::de::Error::custom(msg));
                        }
                    }
                };
            }
            match key.as_str() {
                "r" => read!(c.r),
                "lora_alpha" => {
                    let mut alpha = Alpha::Int(DEFAULT_ALPHA);
                    read!(alpha);
                    c.set_lora_alpha(alpha);
                }
                "lora_dropout" => read!(c.lora_dropout),
                "target_modules" => read!(c.target_modules),
                "exclude_modules" => read!(c.exclude_modules),
                "use_rslora" => read!(c.use_rslora),
                "use_dora" => read!(c.use_dora),
                "init_lora_weights" => read!(c.init_lora_weights),
                "modules_to_save" => read!(c.modules_to_save),
                "rank_pattern" => read!(c.rank_pattern),
                "alpha_pattern" => read!(c.alpha_pattern),
                "bias" => read!(c.bias),
                "fan_in_fan_out" => read!(c.fan_in_fan_out),
                "peft_type" => read!(c.peft_type),
                "task_type" => read!(c.task_type),
                "base_model_name_or_path" => read!(c.base_model_name_or_path),
                _ => {
                    let v: Value = access.next_value()?;
                    c.extra.insert(key, v);
                }
            }
        }
        if let Err(e) = c.check_keys() {
            let msg = format!("`{}`: {}", e.key, e.reason);
            *failed = Some(e);
            return Err(serde::de::Error::custom(msg));
        }
        Ok(c)
    }
}

impl LoraConfig {
    /// Rank `r`, `lora_alpha` (`8.0` is written `8.0`, `8` is written `8`), `all-linear`
    /// targets, no dropout, PEFT's default init.
    pub fn new(r: usize, lora_alpha: impl Into<Alpha>) -> Self {
        let alpha = lora_alpha.into();
        Self {
            r,
            lora_alpha: alpha.value(),
            lora_alpha_is_int: matches!(alpha, Alpha::Int(_)),
            lora_dropout: 0.0,
            target_modules: Some(TargetModules::all_linear()),
            exclude_modules: None,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::default(),
            modules_to_save: None,
            rank_pattern: PatternMap::new(),
            alpha_pattern: PatternMap::new(),
            bias: "none".into(),
            fan_in_fan_out: false,
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            extra: Map::new(),
        }
    }

    /// Set `lora_alpha`, spelled as given (see [`Alpha`]).
    pub fn set_lora_alpha(&mut self, alpha: impl Into<Alpha>) {
        let alpha = alpha.into();
        self.lora_alpha = alpha.value();
        self.lora_alpha_is_int = matches!(alpha, Alpha::Int(_));
    }

    /// `lora_alpha` as it is written: an integer when it was given as one and still is one.
    pub fn lora_alpha_spelled(&self) -> Alpha {
        let a = self.lora_alpha;
        if self.lora_alpha_is_int && a.fract() == 0.0 && a.abs() < 9.0e15 {
            Alpha::Int(a as i64)
        } else {
            Alpha::Float(a)
        }
    }

    /// Set `lora_dropout`.
    pub fn with_lora_dropout(mut self, p: f64) -> Self {
        self.lora_dropout = p;
        self
    }

    /// Set `target_modules`.
    pub fn with_target_modules(mut self, t: TargetModules) -> Self {
        self.target_modules = Some(t);
        self
    }

    /// Set `use_rslora`.
    pub fn with_use_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }

    /// Set `init_lora_weights`.
    pub fn with_init_lora_weights(mut self, init: InitLoraWeights) -> Self {
        self.init_lora_weights = init;
        self
    }

    /// Set `modules_to_save`.
    pub fn with_modules_to_save<S: AsRef<str>>(mut self, modules: &[S]) -> Self {
        self.modules_to_save = Some(modules.iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Set `base_model_name_or_path`.
    pub fn with_base_model_name_or_path(mut self, name: impl Into<String>) -> Self {
        self.base_model_name_or_path = Some(name.into());
        self
    }

    /// What every reader of the file needs: positive ranks, a finite alpha, and patterns that
    /// are regular expressions.
    fn check_keys(&self) -> std::result::Result<(), KeyError> {
        let bad = |key: &str, reason: String| KeyError {
            key: key.into(),
            reason,
        };
        if self.r == 0 {
            return Err(bad("r", "is 0, expected a positive rank".into()));
        }
        if !self.lora_alpha.is_finite() {
            return Err(bad(
                "lora_alpha",
                format!("is {}, expected a finite number", self.lora_alpha),
            ));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(bad(
                "rank_pattern",
                format!("{k:?} is 0, expected a positive rank"),
            ));
        }
        if let Some((k, a)) = self
            .alpha_pattern
            .iter()
            .find(|(_, a)| !a.value().is_finite())
        {
            return Err(bad(
                "alpha_pattern",
                format!("{k:?} is {a}, expected a finite number"),
            ));
        }
        for (key, map) in [
            (
                "rank_pattern",
                self.rank_pattern.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ),
            (
                "alpha_pattern",
                self.alpha_pattern.iter().map(|(k, _)| k).collect(),
            ),
        ] {
            for k in map {
                pattern_key_regex(k).map_err(|e| {
                    bad(
                        key,
                        format!("{k:?} is not a usable regular expression: {e}"),
                    )
                })?;
            }
        }
        let target_regex = self.target_modules.as_ref().filter(|t| !t.is_all_linear());
        for (key, t) in [
            ("target_modules", target_regex),
            ("exclude_modules", self.exclude_modules.as_ref()),
        ] {
            if let Some(TargetModules::Pattern(p)) = t {
                full_match_regex(p).map_err(|e| {
                    bad(
                        key,
                        format!("{p:?} is not a usable regular expression: {e}"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Check what every reader needs (see [`LoraConfig::load`]) on a config built in code.
    ///
    /// # Errors
    /// [`FormatsError::InvalidKey`] naming the key (the file as `adapter_config.json`).
    pub fn check(&self) -> Result<()> {
        self.check_keys()
            .map_err(|e| FormatsError::key(ADAPTER_CONFIG, e.key, e.reason))
    }

    /// Parse the contents of an `adapter_config.json`; `path` names it in errors.
    ///
    /// # Errors
    /// Invalid JSON, not an object, a key of the wrong type, a zero rank, or a pattern that is
    /// not a regular expression.
    pub fn from_json_slice(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut failed = None;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = de
            .deserialize_map(ConfigVisitor {
                failed: &mut failed,
            })
            .and_then(|c| de.end().map(|()| c));
        parsed.map_err(|source| match failed {
            Some(e) => FormatsError::key(path, e.key, e.reason),
            None if source.is_data() => FormatsError::key(path, "(top level)", source.to_string()),
            None => FormatsError::Json {
                path: path.to_path_buf(),
                source,
            },
        })
    }

    /// Read the `adapter_config.json` at `path`.
    ///
    /// # Errors
    /// An unreadable file, and everything [`LoraConfig::from_json_slice`] rejects.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::regular::read_regular(path).map_err(|e| FormatsError::io(path, e))?;
        Self::from_json_slice(&bytes, path)
    }

    /// Read `adapter_config.json` from an adapter directory (or the file itself).
    ///
    /// # Errors
    /// As [`LoraConfig::from_file`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_file(&path.join(ADAPTER_CONFIG))
        } else {
            Self::from_file(path)
        }
    }

    /// The JSON PEFT writes, pretty-printed.
    ///
    /// # Errors
    /// Serialisation failure (not expected for valid configs).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|source| FormatsError::Json {
            path: ADAPTER_CONFIG.into(),
            source,
        })
    }

    /// Write `dir/adapter_config.json` atomically; returns its path.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let path = dir.as_ref().join(ADAPTER_CONFIG);
        write_atomic(&path, &self.to_json_bytes()?)?;
        Ok(path)
    }

    /// The rank of the module at `path` (`rank_pattern` first, like PEFT).
    pub fn rank_for(&self, path: &str) -> usize {
        self.rank_pattern.value_for(path).copied().unwrap_or(self.r)
    }

    /// The alpha of the module at `path` (`alpha_pattern` first).
    pub fn alpha_for(&self, path: &str) -> f64 {
        self.alpha_pattern
            .value_for(path)
            .map_or(self.lora_alpha, |a| a.value())
    }

    /// The scale of the update of the module at `path`: `alpha / r`, or `alpha / √r`.
    pub fn scale_for(&self, path: &str) -> f64 {
        lora_scale(self.alpha_for(path), self.rank_for(path), self.use_rslora)
    }

    /// `target_modules` minus `exclude_modules` and `modules_to_save`, ready to test module
    /// paths; `None` when `target_modules` is null.
    ///
    /// # Errors
    /// A pattern that is not a regular expression, naming the key.
    pub fn target_matcher(&self) -> Result<Option<TargetMatcher>> {
        let Some(targets) = &self.target_modules else {
            return Ok(None);
        };
        let saved = self.modules_to_save.as_deref().unwrap_or_default();
        TargetMatcher::with_exclusions(targets, self.exclude_modules.as_ref(), saved)
            .map(Some)
            .map_err(|e| FormatsError::key(ADAPTER_CONFIG, "target_modules", e.to_string()))
    }
}

/// The keys in PEFT's order of the fields Temper types (as `temper-lora` has always written
/// them), then the other keys; `exclude_modules` only when set.
impl Serialize for LoraConfig {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("r", &self.r)?;
        map.serialize_entry("lora_alpha", &self.lora_alpha_spelled())?;
        map.serialize_entry("lora_dropout", &self.lora_dropout)?;
        map.serialize_entry("target_modules", &self.target_modules)?;
        if let Some(e) = &self.exclude_modules {
            map.serialize_entry("exclude_modules", e)?;
        }
        map.serialize_entry("use_rslora", &self.use_rslora)?;
        map.serialize_entry("use_dora", &self.use_dora)?;
        map.serialize_entry("init_lora_weights", &self.init_lora_weights)?;
        map.serialize_entry("modules_to_save", &self.modules_to_save)?;
        map.serialize_entry("rank_pattern", &self.rank_pattern)?;
        map.serialize_entry("alpha_pattern", &self.alpha_pattern)?;
        map.serialize_entry("bias", &self.bias)?;
        map.serialize_entry("fan_in_fan_out", &self.fan_in_fan_out)?;
        map.serialize_entry("peft_type", &self.peft_type)?;
        map.serialize_entry("task_type", &self.task_type)?;
        map.serialize_entry("base_model_name_or_path", &self.base_model_name_or_path)?;
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LoraConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut failed = None;
        deserializer.deserialize_map(ConfigVisitor {
            failed: &mut failed,
        })
    }
}

/// PEFT's scaling: `alpha / r`, or `alpha / √r` with rsLoRA (which keeps the update's
/// magnitude independent of the rank).
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    let r = r as f64;
    if use_rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}
