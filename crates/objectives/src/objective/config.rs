//! The one table from objective names (TOML `type`, `temper train <name>`) to objectives.

use serde::{Deserialize, Serialize};

use super::TrainObjective;
use crate::Result;
use crate::causal_lm::{CausalLmConfig, Cpt, Sft};
use crate::cpo::{Cpo, CpoConfig, Simpo};
use crate::dpo::{Dpo, DpoConfig};
use crate::kto::{Kto, KtoConfig};
use crate::orpo::{Orpo, OrpoConfig};

/// A Temper objective by name, with its hyper-parameters (TRL's config names and defaults).
///
/// In TOML: `[trainer.objective]` with `type = "sft"` (or `cpt`, `dpo`, `orpo`, `simpo`, `cpo`,
/// `kto`) and the objective's own keys (`beta = 0.1`, `loss_type = [...]`, ...). Adding an
/// objective to Temper is a file next to its loss and a line in each match below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ObjectiveConfig {
    /// Continued pre-training: every token of packed documents is a target.
    Cpt(CausalLmConfig),
    /// Supervised fine-tuning: completion (or assistant) tokens are targets.
    Sft(CausalLmConfig),
    /// DPO family (needs reference log-probs).
    Dpo(DpoConfig),
    /// ORPO (reference-free).
    Orpo(OrpoConfig),
    /// SimPO as TRL runs it (CPO trainer with `loss_type = simpo`); the loss type is forced to
    /// `simpo` whatever the table says.
    Simpo(CpoConfig),
    /// CPO (reference-free).
    Cpo(CpoConfig),
    /// KTO on unpaired rows (needs reference log-probs).
    Kto(KtoConfig),
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self::Sft(CausalLmConfig::default())
    }
}

impl ObjectiveConfig {
    /// Every name, in the order `temper train` lists them.
    pub const NAMES: [&'static str; 7] = ["cpt", "sft", "dpo", "orpo", "simpo", "cpo", "kto"];

    /// The objective `name` with its defaults (`temper train <name>`); SimPO gets the SimPO
    /// paper's β = 2.0 and γ = 0.5 rather than CPO's β. `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cpt" => Self::Cpt(CausalLmConfig::default()),
            "sft" => Self::Sft(CausalLmConfig::default()),
            "dpo" => Self::Dpo(DpoConfig::default()),
            "orpo" => Self::Orpo(OrpoConfig::default()),
            "simpo" => Self::Simpo(CpoConfig::simpo(2.0, 0.5)),
            "cpo" => Self::Cpo(CpoConfig::default()),
            "kto" => Self::Kto(KtoConfig::default()),
            _ => return None,
        })
    }

    /// TRL's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cpt(_) => "cpt",
            Self::Sft(_) => "sft",
            Self::Dpo(_) => "dpo",
            Self::Orpo(_) => "orpo",
            Self::Simpo(_) => "simpo",
            Self::Cpo(_) => "cpo",
            Self::Kto(_) => "kto",
        }
    }

    /// The objective itself.
    pub fn build(&self) -> Box<dyn TrainObjective> {
        match self {
            Self::Cpt(c) => Box::new(Cpt(c.clone())),
            Self::Sft(c) => Box::new(Sft(c.clone())),
            Self::Dpo(c) => Box::new(Dpo(c.clone())),
            Self::Orpo(c) => Box::new(Orpo(c.clone())),
            Self::Simpo(c) => Box::new(Simpo(c.clone())),
            Self::Cpo(c) => Box::new(Cpo(c.clone())),
            Self::Kto(c) => Box::new(Kto(c.clone())),
        }
    }

    /// Checks the hyper-parameters ([`TrainObjective::validate`]).
    ///
    /// # Errors
    /// The first invalid value, named.
    pub fn validate(&self) -> Result<()> {
        self.build().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_to_an_objective_of_that_name() {
        for name in ObjectiveConfig::NAMES {
            let config = ObjectiveConfig::from_name(name);
            assert_eq!(config.as_ref().map(ObjectiveConfig::name), Some(name));
            assert_eq!(
                config.map(|c| c.build().name().to_string()).as_deref(),
                Some(name)
            );
        }
        assert!(ObjectiveConfig::from_name("ppo").is_none());
    }

    #[test]
    fn toml_type_tag_round_trips() -> std::result::Result<(), serde_json::Error> {
        let dpo: ObjectiveConfig = serde_json::from_str(r#"{"type": "dpo", "beta": 0.25}"#)?;
        assert_eq!(
            dpo,
            ObjectiveConfig::Dpo(DpoConfig::default().with_beta(0.25))
        );
        let back: ObjectiveConfig = serde_json::from_value(serde_json::to_value(&dpo)?)?;
        assert_eq!(back, dpo);
        Ok(())
    }
}
