//! One call that evaluates a loaded model on a benchmark in either mode, with the settings a
//! command line or a pipeline gives; the special-token plumbing (padding, EOS, BOS) is read
//! off the model so callers do not repeat it.

use serde::{Deserialize, Serialize};
use temper_llm_arch::Pretrained;

use crate::generative::{GenerativeConfig, evaluate_generative};
use crate::loglik::{LoglikConfig, evaluate_loglik};
use crate::question::Question;
use crate::results::{Metric, QuestionRecord};
use crate::{EvalError, Result};

/// How answers are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    /// lm-evaluation-harness log-likelihood multiple choice (`acc`, `acc_norm`, `acc_bytes`).
    #[default]
    Loglik,
    /// The paper's protocol: greedy generation, first answer letter or True/False parsed.
    Generate,
}

impl EvalMode {
    /// The metrics this mode reports, by their lm-eval names.
    pub fn metrics(self) -> &'static [(&'static str, Metric)] {
        match self {
            Self::Loglik => &[
                ("acc", Metric::Acc),
                ("acc_norm", Metric::AccNorm),
                ("acc_bytes", Metric::AccBytes),
            ],
            Self::Generate => &[("acc", Metric::Acc)],
        }
    }
}

/// Settings of [`evaluate_model`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub mode: EvalMode,
    /// Sequences (log-likelihood) or prompts (generation) per forward pass.
    pub batch_size: usize,
    /// Log-likelihood only (refused with [`EvalMode::Generate`], whose protocol always uses
    /// the template): wrap the context as a user turn of the chat template.
    pub chat: bool,
    /// Generation only: tokens generated per question.
    pub max_new_tokens: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            mode: EvalMode::Loglik,
            batch_size: 8,
            chat: false,
            max_new_tokens: GenerativeConfig::default().max_new_tokens,
        }
    }
}

/// Evaluate `p` on `questions`; `progress(done, total)` is called as questions finish.
///
/// # Errors
/// Tokenisation, chat-template and model failures.
pub fn evaluate_model(
    p: &Pretrained,
    questions: &[Question],
    settings: &EvalSettings,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<QuestionRecord>> {
    // No questions would score as `0.0 ± 0.0`, which reads like a result.
    if questions.is_empty() {
        return Err(EvalError::Invalid("no questions to evaluate".into()));
    }
    // The generative protocol always prompts an instruct model through its chat template (the
    // paper's protocol); `chat` is the log-likelihood option, refused here rather than ignored.
    if settings.mode == EvalMode::Generate && settings.chat {
        return Err(EvalError::Invalid(
            "`chat` (--chat) applies to log-likelihood scoring; the generative protocol always              prompts through the model's chat template when it has one"
                .into(),
        ));
    }
    let pad = p
        .special
        .pad
        .or(p.special.eos.first().copied())
        .unwrap_or(0);
    match settings.mode {
        EvalMode::Loglik => {
            let config = LoglikConfig {
                use_chat_template: settings.chat,
                batch_size: settings.batch_size,
                pad_token_id: pad,
                empty_context_token: p.special.bos.or(p.special.eos.first().copied()),
                ..LoglikConfig::default()
            };
            evaluate_loglik(
                &p.model,
                &p.tokenizer,
                p.chat_template.as_ref(),
                questions,
                &config,
                progress,
            )
        }
        EvalMode::Generate => {
            let config = GenerativeConfig {
                batch_size: settings.batch_size,
                max_new_tokens: settings.max_new_tokens,
                eos_token_ids: p.special.eos.clone(),
                pad_token_id: pad,
                ..GenerativeConfig::default()
            };
            evaluate_generative(
                &p.model,
                &p.tokenizer,
                p.chat_template.as_ref(),
                questions,
                &config,
                progress,
            )
        }
    }
}
