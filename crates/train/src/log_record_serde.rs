//! `LogRecord` in `trainer_state.json` as HF's `Trainer` writes `log_history` entries: one
//! flat object per row, the metrics by name and then `"step"`
//! (`{"loss": 2.1, "grad_norm": 0.8, "learning_rate": 1e-4, "epoch": 0.5, "step": 10}`), so
//! tools that read a transformers checkpoint's history read Temper's.
//!
//! Reading also takes the shape Temper wrote before (`{"step": 10, "values": [["loss", 2.1]]}`),
//! so older checkpoints still resume. A non-finite value is written as `null` (JSON has no
//! NaN) and read back as NaN. Entries keep their order: the map is read entry by entry rather
//! than through a (sorted) JSON map.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::metrics::LogRecord;

impl Serialize for LogRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len() + 1))?;
        for (name, value) in &self.values {
            map.serialize_entry(name, &Some(*value).filter(|v| v.is_finite()))?;
        }
        map.serialize_entry("step", &self.step)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for LogRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = LogRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log_history entry: metric names to numbers, and \"step\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LogRecord, A::Error> {
        let mut step = None;
        let mut values = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "step" => {
                    if step.replace(map.next_value::<usize>()?).is_some() {
                        return Err(de::Error::duplicate_field("step"));
                    }
                }
                // The earlier shape: `values` as `[name, value]` pairs.
                "values" => {
                    let pairs: Vec<(String, Option<f64>)> = map.next_value()?;
                    values.extend(pairs.into_iter().map(|(n, v)| (n, v.unwrap_or(f64::NAN))));
                }
                _ => {
                    let value: Option<f64> = map.next_value().map_err(|_| {
                        de::Error::custom(format!("log_history `{key}`: expected a number or null"))
                    })?;
                    values.push((key, value.unwrap_or(f64::NAN)));
                }
            }
        }
        let step = step.ok_or_else(|| de::Error::missing_field("step"))?;
        Ok(LogRecord { step, values })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record() -> LogRecord {
        LogRecord {
            step: 10,
            values: vec![
                ("loss".into(), 2.5),
                ("grad_norm".into(), f64::NAN),
                ("learning_rate".into(), 1e-4),
                ("epoch".into(), 0.5),
            ],
        }
    }

    #[test]
    fn written_as_hf_log_history_and_read_back_in_order() {
        let json = serde_json::to_string(&record()).unwrap();
        assert_eq!(
            json,
            r#"{"loss":2.5,"grad_norm":null,"learning_rate":0.0001,"epoch":0.5,"step":10}"#
        );
        let back: LogRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.step, 10);
        let names: Vec<&str> = back.values.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["loss", "grad_norm", "learning_rate", "epoch"]);
        assert!(back.get("grad_norm").unwrap().is_nan());
        assert_eq!(back.get("learning_rate"), Some(1e-4));
    }

    #[test]
    fn an_hf_entry_and_the_earlier_shape_are_read() {
        // As transformers 5 writes it (keys in its order, `step` last).
        let hf =
            r#"{"epoch": 0.04, "grad_norm": 3.1, "learning_rate": 5e-05, "loss": 2.25, "step": 5}"#;
        let r: LogRecord = serde_json::from_str(hf).unwrap();
        assert_eq!((r.step, r.get("loss")), (5, Some(2.25)));
        let old = r#"{"step": 3, "values": [["loss", 1.5], ["eval_loss", null]]}"#;
        let r: LogRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.step, r.get("loss")), (3, Some(1.5)));
        assert!(r.get("eval_loss").unwrap().is_nan());
    }

    #[test]
    fn bad_entries_name_what_is_wrong() {
        let err = serde_json::from_str::<LogRecord>(r#"{"loss": "high", "step": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log_history `loss`: expected a number or null"),
            "{err}"
        );
        let err = serde_json::from_str::<LogRecord>(r#"{"loss": 1.0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `step`"), "{err}");
    }
}
