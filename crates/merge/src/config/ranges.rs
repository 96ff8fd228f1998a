//! The ranges of the YAML's parameter values, checked when the file is read (before any
//! model is opened): every number must be finite, `density` must lie in (0, 1], and SLERP's
//! `t` outside [0, 1] is a warning — mergekit accepts it and extrapolation can be meant.
//! Each value is named by its YAML path (`models[1].parameters.density`, with the filter of
//! a `{filter, value}` entry and the index of a gradient entry).

use super::{MergeConfig, ParamValue, Parameters};
use crate::{MergeError, Result};

/// Every number of a parameter value with the path that leads to it.
fn leaves(value: &ParamValue, path: String, out: &mut Vec<(String, f64)>) {
    match value {
        ParamValue::Bool(_) => {}
        ParamValue::Number(v) => out.push((path, *v)),
        ParamValue::Gradient(values) => out.extend(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), *v)),
        ),
        ParamValue::Conditions(conds) => {
            for (i, c) in conds.iter().enumerate() {
                let filter = match c.filter.as_deref() {
                    Some(f) => format!("[{i}] (filter `{f}`)"),
                    None => format!("[{i}]"),
                };
                leaves(&c.value, format!("{path}{filter}.value"), out);
            }
        }
    }
}

impl MergeConfig {
    /// Every `parameters:` block with its YAML path.
    fn parameter_blocks(&self) -> Vec<(String, &Parameters)> {
        let mut out = vec![("parameters".to_string(), &self.parameters)];
        for (i, m) in self.models.iter().flatten().enumerate() {
            out.push((
                format!("models[{i}] ({}).parameters", m.model),
                &m.parameters,
            ));
        }
        for (i, s) in self.slices.iter().flatten().enumerate() {
            out.push((format!("slices[{i}].parameters"), &s.parameters));
            for (j, src) in s.sources.iter().enumerate() {
                out.push((
                    format!("slices[{i}].sources[{j}] ({}).parameters", src.model),
                    &src.parameters,
                ));
            }
        }
        out
    }

    /// Check every parameter value's range; `origin` names the file.
    ///
    /// # Errors
    /// [`MergeError::Config`] naming the file, the YAML path of the value and the range.
    pub fn validate_parameters(&self, origin: &str) -> Result<()> {
        for (block, params) in self.parameter_blocks() {
            for (name, value) in params {
                let mut values = Vec::new();
                leaves(value, format!("{block}.{name}"), &mut values);
                for (path, v) in values {
                    let bad = |range: &str| {
                        Err(MergeError::Config(format!(
                            "{origin}: `{path}`: {v} is out of range (must be {range})"
                        )))
                    };
                    if !v.is_finite() {
                        return bad("a finite number");
                    }
                    // TIES/DARE/DELLA keep this fraction of each task vector; 0 keeps nothing
                    // and above 1 is not a fraction (mergekit would silently keep everything).
                    if name == "density" && !(v > 0.0 && v <= 1.0) {
                        return bad("in (0, 1]");
                    }
                    if name == "t" && self.merge_method == "slerp" && !(0.0..=1.0).contains(&v) {
                        tracing::warn!(
                            "{origin}: `{path}`: t = {v} is outside [0, 1]: SLERP will \
                             extrapolate beyond the two models (mergekit accepts this too)"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        match MergeConfig::from_yaml(yaml, "merge.yml") {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn density_outside_the_unit_interval_names_the_yaml_path() {
        let yaml = "merge_method: ties\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n    \
                    parameters: {weight: 1.0, density: 1.5}\n";
        assert_eq!(
            err(yaml),
            "merge config: merge.yml: `models[1] (b).parameters.density`: 1.5 is out of range \
             (must be in (0, 1])"
        );
        let yaml = "merge_method: dare_ties\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n\
                    parameters:\n  weight: 1.0\n  density:\n    - filter: mlp\n      value: [0.5, 0.0]\n";
        let msg = err(yaml);
        assert!(
            msg.contains("`parameters.density[0] (filter `mlp`).value[1]`: 0 is out of range"),
            "{msg}"
        );
        // In range everywhere: accepted.
        let ok = "merge_method: ties\nbase_model: a\nmodels:\n  - model: b\n    \
                  parameters: {weight: 1.0, density: [0.2, 1.0]}\n";
        MergeConfig::from_yaml(ok, "merge.yml")
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn nan_and_infinite_values_are_refused() {
        for v in [".nan", ".inf", "-.inf"] {
            let yaml = format!(
                "merge_method: linear\nmodels:\n  - model: a\n    parameters: {{weight: 1.0}}\n  \
                 - model: b\n    parameters: {{weight: {v}}}\n"
            );
            let msg = err(&yaml);
            assert!(
                msg.contains("`models[1] (b).parameters.weight`") && msg.contains("finite"),
                "{v}: {msg}"
            );
        }
        let yaml = "merge_method: slerp\nbase_model: a\nslices:\n  - sources:\n      - model: a\n        \
                    layer_range: [0, 2]\n      - model: b\n        layer_range: [0, 2]\n        \
                    parameters: {t: .nan}\n";
        let msg = err(yaml);
        assert!(
            msg.contains("`slices[0].sources[1] (b).parameters.t`") && msg.contains("finite"),
            "{msg}"
        );
    }

    #[test]
    fn slerp_t_outside_the_unit_interval_is_accepted() {
        // mergekit extrapolates; the warning goes to the log (checked end to end in the CLI).
        let yaml = "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n\
                    parameters: {t: 1.5}\n";
        MergeConfig::from_yaml(yaml, "merge.yml")
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
