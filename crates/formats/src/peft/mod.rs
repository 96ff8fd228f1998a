//! PEFT LoRA adapters as files: an adapter directory holds [`ADAPTER_CONFIG`] (the schema is
//! [`LoraConfig`]) and [`ADAPTER_WEIGHTS`], whose keys are PEFT's: [`PEFT_PREFIX`], the module
//! path, then `.lora_A.weight` (`[r, in]`) or `.lora_B.weight` (`[out, r]`). Which modules an
//! adapter covers, and with which rank, follows PEFT 0.21's rules ([`targets`]).

pub mod config;
pub mod targets;

pub use config::{Alpha, InitLoraWeights, LoraConfig, lora_scale};
pub use targets::{ALL_LINEAR, LayerKind, PatternMap, TargetMatcher, TargetModules, suffix_match};

/// The adapter's configuration file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file name (safetensors).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The pickle weights file older PEFT versions write, which Temper does not read.
pub const ADAPTER_WEIGHTS_PICKLE: &str = "adapter_model.bin";
/// The prefix PEFT puts in front of the base model's module paths in adapter weight keys.
pub const PEFT_PREFIX: &str = "base_model.model.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::FormatsError;

    #[test]
    fn peft_config_round_trips_with_unknown_keys() {
        let json = r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "use_rslora": false, "init_lora_weights": true, "modules_to_save": null,
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "eva_config": null, "lora_bias": false,
            "rank_pattern": {"v_proj": 8, "q_proj": 2}, "exclude_modules": null}"#;
        let c: LoraConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(
            c.target_modules,
            Some(TargetModules::names(&["q_proj", "v_proj"]))
        );
        assert!(c.extra.contains_key("eva_config"));
        let back: LoraConfig = serde_json::from_slice(&c.to_json_bytes().unwrap()).unwrap();
        assert_eq!(back, c);
        // File order of the patterns is kept (it decides which key wins).
        let keys: Vec<&str> = back.rank_pattern.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["v_proj", "q_proj"]);
        // Through a file as well, and from the directory.
        let dir = tempfile::tempdir().unwrap();
        let path = c.save(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(ADAPTER_CONFIG));
        assert_eq!(LoraConfig::load(dir.path()).unwrap(), c);
        assert_eq!(LoraConfig::from_file(&path).unwrap(), c);
    }

    #[test]
    fn alphas_keep_their_spelling() {
        let text = |c: &LoraConfig| String::from_utf8(c.to_json_bytes().unwrap()).unwrap();
        // PEFT writes `lora_alpha=8` as 8; Temper's own configs have floats.
        let peft = LoraConfig::from_json_slice(
            br#"{"lora_alpha": 8, "alpha_pattern": {"q_proj": 4}}"#,
            Path::new("a"),
        )
        .unwrap();
        assert!(
            text(&peft).contains("\"lora_alpha\": 8,"),
            "{}",
            text(&peft)
        );
        assert!(text(&peft).contains("\"q_proj\": 4\n"), "{}", text(&peft));
        let ours = LoraConfig::new(3, 6.0);
        assert!(text(&ours).contains("\"lora_alpha\": 6.0,"));
        let mut int = LoraConfig::new(3, 3usize);
        assert_eq!(int.lora_alpha, 3.0);
        assert!(text(&int).contains("\"lora_alpha\": 3,"));
        // A non-integral value is written as a float whatever the spelling was.
        int.lora_alpha = 2.5;
        assert!(text(&int).contains("\"lora_alpha\": 2.5,"));
        assert_eq!(Alpha::Int(2), 2.0);
    }

    #[test]
    fn absent_and_null_keys_take_peft_defaults() {
        let c = LoraConfig::from_json_slice(
            br#"{"peft_type": null, "rank_pattern": null, "target_modules": "all-linear"}"#,
            Path::new("a.json"),
        )
        .unwrap();
        assert_eq!((c.r, c.lora_alpha, c.peft_type.as_str()), (8, 8.0, "LORA"));
        assert!(c.rank_pattern.is_empty());
        assert_eq!(c.target_modules, Some(TargetModules::all_linear()));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let path = Path::new("adapters/x/adapter_config.json");
        let err = |json: &str| {
            LoraConfig::from_json_slice(json.as_bytes(), path)
                .unwrap_err()
                .to_string()
        };
        for (json, key) in [
            (r#"{"r": "four"}"#, "`r`"),
            (r#"{"r": 0}"#, "`r`"),
            (r#"{"target_modules": 5}"#, "`target_modules`"),
            (r#"{"target_modules": "("}"#, "`target_modules`"),
            (r#"{"rank_pattern": {"q_proj": 0}}"#, "`rank_pattern`"),
            (r#"{"alpha_pattern": {"(": 2}}"#, "`alpha_pattern`"),
            (r#"{"use_rslora": "yes"}"#, "`use_rslora`"),
        ] {
            let e = err(json);
            assert!(
                e.starts_with("adapters/x/adapter_config.json: ") && e.contains(key),
                "{e}"
            );
        }
        assert!(err("[1]").contains("expected a JSON object"));
        assert!(matches!(
            LoraConfig::from_json_slice(b"{", path),
            Err(FormatsError::Json { .. })
        ));
        let missing = LoraConfig::load("no/such/dir").unwrap_err().to_string();
        assert!(missing.contains("no/such/dir"), "{missing}");
        let mut built = LoraConfig::new(4, 8.0);
        built.rank_pattern.insert("k_proj", 0);
        assert!(
            built
                .check()
                .unwrap_err()
                .to_string()
                .contains("rank_pattern")
        );
    }

    #[test]
    fn scales_and_patterns() {
        let mut c = LoraConfig::new(4, 8.0);
        assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
        c.rank_pattern.insert("v_proj", 16);
        assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 16);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 4);
        c.use_rslora = true;
        assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj"), 4.0);
        assert!((lora_scale(16.0, 4, false) - 4.0).abs() < 1e-12);
        assert!((lora_scale(16.0, 4, true) - 8.0).abs() < 1e-12);
    }

    /// Where `temper-lora` and `temper-merge` used to disagree, PEFT decides.
    #[test]
    fn the_old_readers_disagreements_follow_peft() {
        let c = LoraConfig::from_json_slice(
            br#"{"r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "k_proj"],
                 "rank_pattern": {"q_proj": 8, "model.layers.0.self_attn.q_proj": 16,
                                  "model\\.layers\\.[12]\\..*k_proj": 2}}"#,
            Path::new("adapter_config.json"),
        )
        .unwrap();
        // temper-lora kept the keys sorted (a BTreeMap), so the full path, which sorts first,
        // won and gave 16 (temper-merge sorted too, through serde_json's map, and refused the
        // regex key outright); PEFT's get_pattern_key takes the first key in file order:
        // `q_proj`, rank 8.
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 8);
        // temper-merge refused regex keys; temper-lora and PEFT apply them.
        assert_eq!(c.rank_for("model.layers.2.self_attn.k_proj"), 2);
        assert_eq!(c.rank_for("model.layers.3.self_attn.k_proj"), 4);
        // temper-merge accepted any module under a string target_modules; temper-lora and
        // PEFT full-match it (and `all-linear` never covers the output layer).
        let re = LoraConfig::new(4, 4.0)
            .with_target_modules(TargetModules::Pattern(r".*\.layers\.0\..*".into()))
            .target_matcher()
            .unwrap()
            .unwrap();
        assert!(re.matches("model.layers.0.mlp.up_proj", LayerKind::Linear));
        assert!(!re.matches("model.layers.1.mlp.up_proj", LayerKind::Linear));
        let all = LoraConfig::new(4, 4.0).target_matcher().unwrap().unwrap();
        assert!(!all.matches("lm_head", LayerKind::Linear));
        // A module saved whole is never adapted (PEFT excludes modules_to_save from targets).
        let saved = LoraConfig::new(4, 4.0)
            .with_target_modules(TargetModules::names(&["q_proj", "lm_head"]))
            .with_modules_to_save(&["lm_head"])
            .target_matcher()
            .unwrap()
            .unwrap();
        assert!(!saved.matches("lm_head", LayerKind::Linear));
    }
}
