//! lm-eval's `--apply_chat_template`, `--fewshot_as_multiturn` and `--system_instruction`:
//! the context's turns (system prompt, few-shot examples, the document) rendered through the
//! model's chat template with the generation prompt, either as alternating user / assistant
//! messages (multi-turn, lm-eval's default with a chat template) or collapsed into one user
//! message (plus the system one). Multiple-choice continuations then lose the target
//! delimiter: the answer starts the assistant's turn.

use temper_llm_arch::{ChatMessage, ChatTemplate, Pretrained};

use super::dataset::Doc;
use super::prompt::{Prompter, Turn, plain_text};
use super::run::TaskSettings;
use crate::{EvalError, Result};

/// One user message holding everything but the system turn (lm-eval's
/// `multiturn_to_singleturn`; the last turn is the document's, so its delimiter is dropped).
fn single_turn(mut turns: Vec<Turn>) -> Vec<ChatMessage> {
    let system = turns
        .first()
        .is_some_and(|t| t.role == "system")
        .then(|| turns.remove(0));
    if let Some(last) = turns.last_mut() {
        last.delimiter.clear();
    }
    let user = ChatMessage::new("user", plain_text(&turns));
    system
        .map(|s| ChatMessage::new("system", s.content))
        .into_iter()
        .chain([user])
        .collect()
}

/// Render `turns` through `template` with the generation prompt. A template that refuses a
/// system message gets the messages without it, as lm-eval retries.
///
/// # Errors
/// The template's own error when the retry fails too.
pub fn render_turns(turns: Vec<Turn>, multiturn: bool, template: &ChatTemplate) -> Result<String> {
    let messages: Vec<ChatMessage> = if multiturn {
        turns
            .iter()
            .map(|t| ChatMessage::new(t.role, t.content.clone()))
            .collect()
    } else {
        single_turn(turns)
    };
    match template.render(&messages, true) {
        Ok(text) => Ok(text),
        Err(first) if messages.iter().any(|m| m.role == "system") => {
            let rest: Vec<ChatMessage> = messages
                .into_iter()
                .filter(|m| m.role != "system")
                .collect();
            template.render(&rest, true).map_err(|_| first.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The context of document `doc` (number `n`) as the settings ask: plain text, or through
/// the model's chat template.
///
/// # Errors
/// Template errors; a chat template asked for and the model has none.
pub(super) fn document_context(
    p: &Pretrained,
    prompter: &Prompter<'_>,
    settings: &TaskSettings,
    doc: &Doc,
    n: usize,
    shots: &[(usize, &Doc)],
) -> Result<String> {
    let turns = prompter.turns(doc, n, shots, settings.system_instruction.as_deref())?;
    if !settings.apply_chat_template {
        return Ok(plain_text(&turns));
    }
    let template = p.chat_template.as_ref().ok_or_else(|| {
        EvalError::Invalid(format!(
            "--apply-chat-template: the model {} has no chat template",
            p.source.display()
        ))
    })?;
    render_turns(turns, settings.fewshot_as_multiturn, template)
}
