//! Which modules a PEFT LoRA adapter covers, and with which rank and alpha — PEFT 0.21's rules,
//! in one place for `temper-lora` (injection) and `temper-merge` (merging adapter files):
//!
//! * `target_modules` as a **list**: a module matches when its path equals a name or ends with
//!   `.name` (`check_target_module_exists`); as a **string**: a regular expression the whole
//!   path must match (`re.fullmatch`), except `all-linear` (any case), which selects every
//!   linear layer but the output layer.
//! * Before that, a module is excluded when `exclude_modules` matches it (the same list/regex
//!   rules) or when it is, or sits inside, one of `modules_to_save`.
//! * `rank_pattern` / `alpha_pattern`: the **first key in file order** whose
//!   `re.match(rf"(.*\.)?({key})$", path)` matches gives the value (`get_pattern_key`); keys
//!   are regular expressions, so a plain name matches that module name in every layer and a
//!   dotted path matches one module.

use regex::Regex;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The seven decoder projections of a Llama-family model, which is what PEFT's `all-linear`
/// selects there (every linear layer but the output layer, `lm_head`).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's name for "every linear layer but the output layer".
const ALL_LINEAR_SHORTHAND: &str = "all-linear";

/// The output layer `all-linear` leaves out.
const OUTPUT_LAYER: &str = "lm_head";

/// Which modules get an adapter (PEFT `target_modules`; also the shape of `exclude_modules`).
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
    /// PEFT's `all-linear`: every linear layer but the output layer.
    pub fn all_linear() -> Self {
        Self::Pattern(ALL_LINEAR_SHORTHAND.into())
    }

    /// A list of module names.
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        Self::Names(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Whether this is `all-linear` (PEFT compares it case-insensitively).
    pub fn is_all_linear(&self) -> bool {
        matches!(self, Self::Pattern(p) if p.eq_ignore_ascii_case(ALL_LINEAR_SHORTHAND))
    }

    /// The names or the pattern, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Names(n) => format!("{n:?}"),
            Self::Pattern(p) => format!("{p:?}"),
        }
    }
}

/// PEFT's list rule: `path == name or path.endswith("." + name)`.
pub fn suffix_match(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with('.'))
}

/// `pattern` as a regular expression the whole of a module path must match (`re.fullmatch`).
///
/// # Errors
/// `pattern` is not a regular expression the `regex` crate accepts (look-around and
/// back-references, which Python's `re` has, are not).
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// `key` of `rank_pattern` / `alpha_pattern` as PEFT's `get_pattern_key` applies it:
/// `re.match(rf"(.*\.)?({key})$", path)`.
///
/// # Errors
/// As [`full_match_regex`].
pub fn pattern_key_regex(key: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:.*\\.)?(?:{key})$"))
}

/// A module saved whole (`modules_to_save` entry `name`) and everything inside it: PEFT's
/// `re.match(rf"(^|.*\.){name}($|\..*)", path)`.
fn saved_module_regex(name: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:.*\\.)?(?:{name})(?:$|\\.)"))
}

/// What kind of layer a module is; only `all-linear` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A linear layer (`nn.Linear`, GPT-2's `Conv1D`): a decoder projection, `lm_head`.
    Linear,
    /// An embedding (`nn.Embedding`), which `all-linear` never selects.
    Embedding,
}

#[derive(Debug, Clone)]
enum Rule {
    AllLinear,
    Regex(Regex),
    Names(Vec<String>),
}

impl Rule {
    fn new(t: &TargetModules, allow_all_linear: bool) -> Result<Self, regex::Error> {
        Ok(match t {
            t if allow_all_linear && t.is_all_linear() => Self::AllLinear,
            TargetModules::Pattern(p) => Self::Regex(full_match_regex(p)?),
            TargetModules::Names(n) => Self::Names(n.clone()),
        })
    }

    fn matches(&self, path: &str, kind: LayerKind) -> bool {
        match self {
            Self::AllLinear => kind == LayerKind::Linear && !suffix_match(path, OUTPUT_LAYER),
            Self::Regex(re) => re.is_match(path),
            Self::Names(names) => names.iter().any(|n| suffix_match(path, n)),
        }
    }
}

/// `target_modules`, `exclude_modules` and `modules_to_save` compiled to test module paths
/// (see the module docs); built by [`crate::peft::LoraConfig::target_matcher`].
#[derive(Debug, Clone)]
pub struct TargetMatcher {
    targets: Rule,
    exclude: Option<Rule>,
    saved: Vec<Regex>,
}

impl TargetMatcher {
    /// A matcher for `targets` alone (no exclusions).
    ///
    /// # Errors
    /// An invalid regular expression.
    pub fn new(targets: &TargetModules) -> Result<Self, regex::Error> {
        Self::with_exclusions(targets, None, &[])
    }

    /// A matcher for `targets` minus `exclude` and the modules saved whole.
    ///
    /// # Errors
    /// An invalid regular expression.
    pub fn with_exclusions(
        targets: &TargetModules,
        exclude: Option<&TargetModules>,
        modules_to_save: &[String],
    ) -> Result<Self, regex::Error> {
        Ok(Self {
            targets: Rule::new(targets, true)?,
            // A string `exclude_modules` is always a regex in PEFT, even "all-linear".
            exclude: exclude.map(|e| Rule::new(e, false)).transpose()?,
            saved: modules_to_save
                .iter()
                .map(|m| saved_module_regex(m))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether the module at `path` (e.g. `model.layers.0.self_attn.q_proj`), a layer of
    /// `kind`, gets an adapter.
    pub fn matches(&self, path: &str, kind: LayerKind) -> bool {
        let excluded = self.exclude.as_ref().is_some_and(|e| e.matches(path, kind))
            || self.saved.iter().any(|re| re.is_match(path));
        !excluded && self.targets.matches(path, kind)
    }
}

/// `rank_pattern` / `alpha_pattern`: keys in **file order** (PEFT takes the first key that
/// matches, so the order is part of the meaning), serialised as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternMap<V>(Vec<(String, V)>);

impl<V> Default for PatternMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> PatternMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` to `value`: in place when the key is there (as a Python dict does), else
    /// last. Returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: V) -> Option<V> {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The values in order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value PEFT gives the module at `path`: that of the first key matching it (see the
    /// module docs). Keys that are not valid regular expressions match nothing
    /// ([`crate::peft::LoraConfig::check`] reports them).
    pub fn value_for(&self, path: &str) -> Option<&V> {
        self.0.iter().find_map(|(k, v)| {
            pattern_key_regex(k)
                .is_ok_and(|re| re.is_match(path))
                .then_some(v)
        })
    }
}

impl<V> FromIterator<(String, V)> for PatternMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<V: Serialize> Serialize for PatternMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PatternMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for InOrder<V> {
            type Value = PatternMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object from module patterns to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = PatternMap::new();
                while let Some((k, v)) = access.next_entry::<String, V>()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(InOrder(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const Q0: &str = "model.layers.0.self_attn.q_proj";

    #[test]
    fn list_targets_match_names_and_dotted_suffixes() {
        let m =
            TargetMatcher::new(&TargetModules::names(&["q_proj", "layers.1.mlp.up_proj"])).unwrap();
        assert!(m.matches(Q0, LayerKind::Linear));
        assert!(!m.matches("model.layers.0.self_attn.xq_proj", LayerKind::Linear));
        assert!(m.matches("model.layers.1.mlp.up_proj", LayerKind::Linear));
        assert!(!m.matches("model.layers.11.mlp.up_proj", LayerKind::Linear));
        assert!(suffix_match("q_proj", "q_proj"));
    }

    #[test]
    fn string_targets_are_full_matches_and_all_linear_skips_the_output_layer() {
        let re =
            TargetMatcher::new(&TargetModules::Pattern(r".*layers\.1\..*_proj".into())).unwrap();
        assert!(re.matches("model.layers.1.mlp.up_proj", LayerKind::Linear));
        assert!(!re.matches("model.layers.10.mlp.up_proj", LayerKind::Linear));
        // Not a search: the whole path must match.
        let partial = TargetMatcher::new(&TargetModules::Pattern("q_proj".into())).unwrap();
        assert!(!partial.matches(Q0, LayerKind::Linear));
        for spelling in ["all-linear", "ALL-LINEAR"] {
            let all = TargetMatcher::new(&TargetModules::Pattern(spelling.into())).unwrap();
            assert!(all.matches("model.layers.3.mlp.down_proj", LayerKind::Linear));
            assert!(!all.matches("lm_head", LayerKind::Linear));
            assert!(!all.matches("model.embed_tokens", LayerKind::Embedding));
        }
        assert!(TargetMatcher::new(&TargetModules::Pattern("(".into())).is_err());
    }

    #[test]
    fn exclusions_and_saved_modules_win_over_targets() {
        let saved = vec!["lm_head".to_string()];
        let names = TargetModules::names(&["q_proj", "lm_head"]);
        let exclude = TargetModules::Pattern(r".*\.layers\.0\..*".into());
        let m = TargetMatcher::with_exclusions(&names, Some(&exclude), &saved).unwrap();
        assert!(!m.matches(Q0, LayerKind::Linear));
        assert!(m.matches("model.layers.1.self_attn.q_proj", LayerKind::Linear));
        assert!(!m.matches("lm_head", LayerKind::Linear));
        let by_name = TargetModules::names(&["layers.1.self_attn.q_proj"]);
        let m = TargetMatcher::with_exclusions(&TargetModules::all_linear(), Some(&by_name), &[])
            .unwrap();
        assert!(!m.matches("model.layers.1.self_attn.q_proj", LayerKind::Linear));
        assert!(m.matches(Q0, LayerKind::Linear));
    }

    #[test]
    fn pattern_keys_are_regexes_tried_in_file_order() {
        let map: PatternMap<usize> = serde_json::from_str(
            r#"{"q_proj": 8, "model.layers.0.self_attn.q_proj": 16, "layers\\.[23]\\..*": 2}"#,
        )
        .unwrap();
        // PEFT's get_pattern_key returns the first matching key in dict order: q_proj.
        assert_eq!(map.value_for(Q0), Some(&8));
        assert_eq!(map.value_for("model.layers.2.mlp.up_proj"), Some(&2));
        assert_eq!(map.value_for("model.layers.4.mlp.up_proj"), None);
        // A plain name matches the module name only after a dot.
        assert_eq!(map.value_for("model.layers.0.self_attn.xq_proj"), None);
        // Order survives a round trip.
        let json = serde_json::to_string(&map).unwrap();
        assert!(json.starts_with(r#"{"q_proj":8,"model"#), "{json}");
        let mut again: PatternMap<usize> = serde_json::from_str(&json).unwrap();
        assert_eq!(again, map);
        assert_eq!(again.insert("q_proj", 4), Some(8));
        assert_eq!(again.iter().next(), Some(("q_proj", &4)));
    }
}
