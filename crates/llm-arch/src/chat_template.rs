//! HF chat templates (Jinja, from `tokenizer_config.json` or GGUF metadata) rendered with
//! minijinja, with Python string methods (`.strip()`, `.startswith()`, ...) that HF templates
//! call and the `raise_exception` helper they expect. Rendering is bounded (steps, recursion,
//! value and output sizes: [`crate::chat_template_limits`]), and errors name where the template
//! came from.

use minijinja::machinery::{CodeGenerator, Token, Vm, WhitespaceConfig, make_string_output};
use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Error as JinjaError, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::chat_template_limits as limits;
use crate::{Error, Result};

/// One chat message (`{"role": ..., "content": ...}`, the TRL/HF format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special tokens it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    template: BoundedTemplate,
    bos_token: String,
    eos_token: String,
}

/// A Jinja template rendered within the limits (steps, recursion, value and output sizes:
/// [`crate::chat_template_limits`]) with CPython's string methods and lists' `.index()` —
/// the chat templates' engine, for other templates a user downloads (lm-eval task prompts).
#[derive(Debug)]
pub struct BoundedTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
}

impl BoundedTemplate {
    /// Compile `source`; `origin` names it in errors (a file, a YAML key).
    ///
    /// # Errors
    /// [`Error::Template`] with the syntax error, or a name reserved for the checks.
    pub fn new(source: impl Into<String>, origin: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let origin = origin.into();
        let fail = |m: String| match origin.as_str() {
            "" => Error::Template(m),
            o => Error::Template(format!("{o}: {m}")),
        };
        if source.contains(limits::RESERVED_PREFIX) {
            return Err(fail(format!(
                "names starting with `{}` are reserved",
                limits::RESERVED_PREFIX
            )));
        }
        let mut env = Environment::new();
        env.set_unknown_method_callback(checked_method);
        env.add_function("raise_exception", raise_exception);
        env.set_recursion_limit(limits::RECURSION_LIMIT);
        env.set_fuel(Some(limits::fuel_for(longest_literal(&source))));
        limits::install(&mut env);
        // Compile once here for the syntax error; `render` compiles again (the instructions
        // borrow the source, so they cannot live in `Self`).
        compile(&source, WhitespaceConfig::default()).map_err(|e| fail(format!("{e:#}")))?;
        Ok(Self {
            env,
            source,
            origin,
        })
    }

    /// The environment, to register more filters or functions. What they build is not
    /// checked against the limits unless they bound it themselves
    /// ([`BoundedTemplate::check_size`]).
    pub fn environment_mut(&mut self) -> &mut Environment<'static> {
        &mut self.env
    }

    /// Refuse a value of `bytes` bytes over the limit of one value (for filters registered
    /// through [`BoundedTemplate::environment_mut`]).
    ///
    /// # Errors
    /// The limit, as a template error.
    pub fn check_size(what: &str, bytes: u64) -> std::result::Result<(), JinjaError> {
        limits::precheck(what, bytes)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render with `root` as the context.
    ///
    /// # Errors
    /// [`Error::Template`] naming the origin, for render errors and for a render that runs
    /// past the limits.
    pub fn render(&self, root: Value) -> Result<String> {
        let fail = |e: JinjaError| match self.origin.as_str() {
            "" => Error::Template(format!("{e:#}")),
            origin => Error::Template(format!("{origin}: {e:#}")),
        };
        // The environment's whitespace settings (lm-eval keeps a template's trailing newline).
        let ws = WhitespaceConfig {
            keep_trailing_newline: self.env.keep_trailing_newline(),
            ..WhitespaceConfig::default()
        };
        let (mut instructions, blocks) = compile(&self.source, ws).map_err(fail)?;
        limits::rewrite(&mut instructions);
        let mut rendered = String::new();
        limits::start_render();
        Vm::new(&self.env)
            .eval(
                &instructions,
                root,
                &blocks,
                &mut make_string_output(&mut rendered),
                AutoEscape::None,
            )
            .map_err(|e| {
                let hit_fuel = e.kind() == ErrorKind::OutOfFuel;
                let mut err = fail(e);
                if hit_fuel && let Error::Template(m) = &mut err {
                    m.push_str(&format!(
                        " (the limit is {} template steps per render)",
                        self.env.fuel().unwrap_or(0)
                    ));
                }
                err
            })?;
        Ok(rendered)
    }
}

fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compile `source`; render errors name where it came from once [`Self::with_origin`]
    /// has said so.
    ///
    /// # Errors
    /// [`Error::Template`] with minijinja's syntax error, or a template that uses the names
    /// reserved for the limit checks.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        Ok(Self {
            template: BoundedTemplate::new(source, "")?,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    #[must_use]
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.template.origin = origin.into();
        self
    }

    /// Where the template came from (empty when unknown).
    pub fn origin(&self) -> &str {
        self.template.origin()
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        self.template.source()
    }

    /// Render `messages`; with `add_generation_prompt` the assistant turn header is appended.
    ///
    /// # Errors
    /// [`Error::Template`] naming the template's origin, for render errors (the template's
    /// own `raise_exception` included) and for a render that runs past the limits (steps,
    /// recursion, size of a value or of the output).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template.render(Value::from_serialize(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        }))
    }
}

type Compiled<'s> = (
    minijinja::machinery::Instructions<'s>,
    std::collections::BTreeMap<&'s str, minijinja::machinery::Instructions<'s>>,
);

/// Parse and compile `source` as minijinja's `Environment` would (default syntax and
/// whitespace).
fn compile(source: &str, ws: WhitespaceConfig) -> std::result::Result<Compiled<'_>, JinjaError> {
    let ast = minijinja::machinery::parse(source, "chat", SyntaxConfig, ws)?;
    let mut generator = CodeGenerator::new("chat", source);
    generator.compile_stmt(&ast);
    Ok(generator.finish())
}

/// The longest literal text chunk of `source` (what one instruction can emit without being
/// counted); the whole source when it does not tokenize (compiling reports that error).
fn longest_literal(source: &str) -> usize {
    let mut longest = 0;
    for token in
        minijinja::machinery::tokenize(source, false, SyntaxConfig, WhitespaceConfig::default())
    {
        match token {
            Ok((Token::TemplateData(text), _)) => longest = longest.max(text.len()),
            Ok(_) => {}
            Err(_) => return source.len(),
        }
    }
    longest
}

/// Python string methods (minijinja-contrib's `pycompat`), with a bound on what they build.
fn checked_method(
    state: &minijinja::State<'_, '_>,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, JinjaError> {
    if method == "index" && value.kind() == minijinja::value::ValueKind::Seq {
        // Python's `list.index(x)` (lm-eval's `choices.label.index(answerKey)`).
        let [needle] = args else {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "list.index takes one argument",
            ));
        };
        return value
            .try_iter()?
            .position(|item| &item == needle)
            .map(Value::from)
            .ok_or_else(|| {
                JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("{needle} is not in list"),
                )
            });
    }
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(value.clone());
    all.extend_from_slice(args);
    if let Some(bound) = limits::amplified_bound(method, &all) {
        limits::precheck(&format!("method `{method}`"), bound)?;
    }
    limits::account(minijinja_contrib::pycompat::unknown_method_callback(
        state, value, method, args,
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = t
            .render(
                &[
                    ChatMessage::new("system", "S"),
                    ChatMessage::new("user", "Hi"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            no_prompt,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_bos_and_raise_exception() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user'] %}{{ raise_exception('only user messages') }}{% endif %}[{{ m.content.strip() }}]{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi  ")], false)
                .unwrap(),
            "<s>[hi]</s>"
        );
        let err = t
            .render(&[ChatMessage::new("bot", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only user messages"), "{err}");
        let err = ChatTemplate::new("{% if %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("chat template:"), "{err}");
    }
}
