//! The SLERP `t` schedules of the paper's Fig. 11 (variants A–G) as mergekit YAML recipes, for
//! `[[merge.recipe]] schedule = "G"`.
//!
//! The paper publishes one schedule, the one every main result uses (mergekit's
//! `examples/gradient-slerp.yml`: attention `[0, 0.5, 0.3, 0.7, 1]`, MLP `[1, 0.5, 0.7, 0.3,
//! 0]`), and says that G (probably the linear ramp its code's README leaves commented out) and
//! F do best. The other values of A–F are not published: those below are a reconstruction, a
//! family that puts the questions Fig. 11 asks (constant against depth-varying `t`, which
//! module keeps which parent, the direction of the gradient). `docs/pipeline.md` has the table.
//!
//! mergekit reads a list as a gradient over depth (layer `i` at `i / (L − 1)`), `t = 0` is the
//! instruct model (the base), `t = 1` the fine-tuned one; `rest` is the `t` of every tensor
//! outside the attention and MLP blocks (embeddings, norms, LM head).

/// One schedule: the `t` gradients of the attention and MLP blocks and the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// `A` … `G`, or `paper` for the published schedule.
    pub name: &'static str,
    pub self_attn: &'static [f64],
    pub mlp: &'static [f64],
    pub rest: f64,
    /// Where the values come from: `published`, `inferred` or `reconstruction`.
    pub source: &'static str,
    /// What the schedule tests.
    pub about: &'static str,
}

const RAMP_UP: &[f64] = &[0.0, 0.3, 0.5, 0.7, 1.0];
const RAMP_DOWN: &[f64] = &[1.0, 0.7, 0.5, 0.3, 0.0];

/// The paper's own schedule (the default `[merge] yaml`).
pub const PAPER: Schedule = Schedule {
    name: "paper",
    self_attn: &[0.0, 0.5, 0.3, 0.7, 1.0],
    mlp: &[1.0, 0.5, 0.7, 0.3, 0.0],
    rest: 0.5,
    source: "published",
    about: "mergekit's gradient-slerp example, used for every main result",
};

/// Fig. 11's variants A–G.
pub const SCHEDULES: [Schedule; 7] = [
    Schedule {
        name: "A",
        self_attn: &[0.5],
        mlp: &[0.5],
        rest: 0.5,
        source: "reconstruction",
        about: "constant t = 0.5: the plain SLERP midpoint",
    },
    Schedule {
        name: "B",
        self_attn: &[0.3],
        mlp: &[0.3],
        rest: 0.3,
        source: "reconstruction",
        about: "constant t = 0.3: closer to the instruct model",
    },
    Schedule {
        name: "C",
        self_attn: &[0.7],
        mlp: &[0.7],
        rest: 0.7,
        source: "reconstruction",
        about: "constant t = 0.7: closer to the fine-tuned model",
    },
    Schedule {
        name: "D",
        self_attn: &[1.0, 0.5, 0.7, 0.3, 0.0],
        mlp: &[0.0, 0.5, 0.3, 0.7, 1.0],
        rest: 0.5,
        source: "reconstruction",
        about: "the paper's schedule with attention and MLP swapped",
    },
    Schedule {
        name: "E",
        self_attn: RAMP_DOWN,
        mlp: RAMP_UP,
        rest: 0.5,
        source: "reconstruction",
        about: "G reversed: attention fine-tuned early, MLP fine-tuned late",
    },
    Schedule {
        name: "F",
        self_attn: RAMP_UP,
        mlp: RAMP_UP,
        rest: 0.5,
        source: "reconstruction",
        about: "one depth ramp for both blocks: early layers instruct, late layers fine-tuned",
    },
    Schedule {
        name: "G",
        self_attn: RAMP_UP,
        mlp: RAMP_DOWN,
        rest: 0.5,
        source: "inferred",
        about: "linear ramps (the README's commented-out alternative, probably Var_G)",
    },
];

/// The schedule named `name` (`A` … `G` or `paper`, case-insensitive).
pub fn schedule(name: &str) -> Option<&'static Schedule> {
    std::iter::once(&PAPER)
        .chain(SCHEDULES.iter())
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

/// A `t` value or list as mergekit's YAML writes it (`0.5`, `[0, 0.5, 1]`).
fn values(v: &[f64]) -> String {
    match v {
        [one] => format!("{one}"),
        _ => format!(
            "[{}]",
            v.iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Schedule {
    /// The mergekit YAML of this schedule with the pipeline's placeholders (`{finetuned}`,
    /// `{instruct}`, `{num_layers}`), float32 as the default recipe.
    pub fn yaml(&self) -> String {
        format!(
            r#"slices:
  - sources:
      - model: "{{finetuned}}"
        layer_range: [0, {{num_layers}}]
      - model: "{{instruct}}"
        layer_range: [0, {{num_layers}}]
merge_method: slerp
base_model: "{{instruct}}"
parameters:
  t:
    - filter: self_attn
      value: {}
    - filter: mlp
      value: {}
    - value: {}
dtype: float32
"#,
            values(self.self_attn),
            values(self.mlp),
            self.rest
        )
    }

    /// The attention and MLP `t` as the YAML gives them (`[0, 0.3, 0.5, 0.7, 1]`).
    pub fn describe(&self) -> (String, String) {
        (values(self.self_attn), values(self.mlp))
    }
}

/// The schedule whose YAML `yaml` is, if any (how the report names a recipe given as YAML).
pub fn schedule_of_yaml(yaml: &str) -> Option<&'static Schedule> {
    std::iter::once(&PAPER)
        .chain(SCHEDULES.iter())
        .find(|s| s.yaml() == yaml)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The published schedule written by the generator is byte for byte the default recipe:
    /// runs made with the default keep their merge fingerprints.
    #[test]
    fn the_paper_schedule_is_the_default_recipe() {
        assert_eq!(PAPER.yaml(), crate::config::PAPER_SLERP_YAML);
        assert_eq!(
            schedule_of_yaml(crate::config::PAPER_SLERP_YAML).map(|s| s.name),
            Some("paper")
        );
    }

    #[test]
    fn every_schedule_is_a_valid_distinct_mergekit_recipe() {
        let mut seen = std::collections::BTreeSet::new();
        for s in &SCHEDULES {
            let yaml = s
                .yaml()
                .replace("{finetuned}", "a")
                .replace("{instruct}", "b")
                .replace("{num_layers}", "30");
            temper_merge::MergeConfig::from_yaml(&yaml, s.name).expect(s.name);
            assert!(seen.insert(s.yaml()), "{} duplicates another", s.name);
            assert_eq!(schedule(&s.name.to_lowercase()), Some(s));
            for t in s.self_attn.iter().chain(s.mlp).chain([&s.rest]) {
                assert!((0.0..=1.0).contains(t), "{}", s.name);
            }
        }
        assert_eq!(schedule("G").unwrap().describe().0, "[0, 0.3, 0.5, 0.7, 1]");
        assert_eq!(schedule("a").unwrap().describe().1, "0.5");
        assert!(schedule("H").is_none());
    }
}
