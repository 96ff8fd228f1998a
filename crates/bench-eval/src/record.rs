//! The outcome of one question: the choice scores of log-likelihood mode and the per-question
//! record written to a results file.
//!
//! A leaf module: the evaluators (`loglik`, `generative`) produce these types and `results`
//! summarises them, so they live apart from both.

use serde::{Deserialize, Serialize};

use crate::question::Question;

/// The outcome of one question, one JSONL line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The correct answer as text.
    pub gold: String,
    /// The predicted answer as text (`None`: unparseable output).
    pub prediction: Option<String>,
    /// Correct under the primary metric (`acc`, or the generative protocol).
    pub correct: bool,
    /// Log-likelihood mode: correct under `acc_norm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_norm: Option<bool>,
    /// Log-likelihood mode: correct under `acc_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_bytes: Option<bool>,
    /// Generative mode: no answer could be parsed (counted as wrong).
    #[serde(default)]
    pub unparsed: bool,
    /// Generative mode: the raw output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Log-likelihood mode: summed log-prob per choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f64>>,
}

impl QuestionRecord {
    /// The record of a question scored by log-likelihood.
    pub fn from_loglik(q: &Question, scores: &ChoiceScores) -> Self {
        let gold = q.gold_index();
        let choices = q.choices().unwrap_or_default();
        let pred = scores.pred_acc();
        Self {
            id: q.id.clone(),
            category: q.category.clone(),
            gold: q.gold_text(),
            prediction: choices.get(pred).cloned(),
            correct: gold == Some(pred),
            correct_norm: Some(gold == Some(scores.pred_norm())),
            correct_bytes: Some(gold == Some(scores.pred_bytes())),
            unparsed: false,
            output: None,
            logprobs: Some(scores.logprobs.clone()),
        }
    }
}

/// Scores of one question's choices and the predictions of the three metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScores {
    /// Summed continuation log-prob per choice.
    pub logprobs: Vec<f64>,
    /// Character length of each choice.
    pub chars: Vec<usize>,
    /// UTF-8 byte length of each choice.
    pub bytes: Vec<usize>,
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

impl ChoiceScores {
    /// `acc`'s pick: the highest summed log-prob.
    pub fn pred_acc(&self) -> usize {
        argmax(self.logprobs.iter().copied())
    }
    /// `acc_norm`'s pick: log-prob / character length.
    pub fn pred_norm(&self) -> usize {
        argmax(
            self.logprobs
                .iter()
                .zip(&self.chars)
                .map(|(l, &c)| l / c.max(1) as f64),
        )
    }
    /// `acc_bytes`'s pick: log-prob / byte length.
    pub fn pred_bytes(&self) -> usize {
        argmax(
            self.logprobs
                .iter()
                .zip(&self.bytes)
                .map(|(l, &c)| l / c.max(1) as f64),
        )
    }
}
