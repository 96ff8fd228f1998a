//! Hostile chat templates stop at the render limits with an error naming the template's
//! origin; real templates over long conversations still render.
#![allow(clippy::unwrap_used)]

use temper_llm_arch::{ChatMessage, ChatTemplate};

const ORIGIN: &str = "GGUF tokenizer.chat_template in evil.gguf";

fn render_err(source: &str) -> String {
    let t = ChatTemplate::new(source, "<s>", "</s>")
        .unwrap()
        .with_origin(ORIGIN);
    let err = t
        .render(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains(ORIGIN), "{err}");
    err
}

/// Doubling a string 64 times would need 2^64 bytes; stops at the value limit.
#[test]
fn doubling_concat_is_refused() {
    let err = render_err(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    );
    assert!(
        err.contains("operator `~`") && err.contains("over the limit"),
        "{err}"
    );
    let err = render_err(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    );
    assert!(err.contains("operator `+`"), "{err}");
    // Straight-line doubling needs no loop (40 statements, 2^40 bytes).
    let mut src = String::from("{% set s = 'xy' %}");
    for _ in 0..40 {
        src.push_str("{% set s = s ~ s %}");
    }
    assert!(render_err(&src).contains("over the limit"));
}

#[test]
fn amplifying_filters_and_methods_are_refused() {
    for src in [
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s | replace('x', 'xx') %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s] | join %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}",
        "{{ 'x' | indent(1000000000) }}{{ 'a\nb' | indent(100000000) }}",
        "{{ 'x'.center(1000000000) }}",
        "{% set ns = namespace(l=['x']) %}{% for i in range(64) %}{% set ns.l = ns.l * 2 %}{% endfor %}{{ ns.l }}",
    ] {
        let err = render_err(src);
        assert!(err.contains("limit"), "{src}: {err}");
    }
}

/// 10^10 loop steps stop at the fuel.
#[test]
fn nested_loops_run_out_of_fuel() {
    let err = render_err(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    );
    assert!(err.contains("template steps per render"), "{err}");
}

#[test]
fn deep_macro_recursion_is_refused() {
    let err = render_err("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}");
    assert!(err.contains("recursion"), "{err}");
}

/// A 1 MB string printed 1000 times is 1 GB of output: stops at the output limit.
#[test]
fn output_is_capped() {
    let err =
        render_err("{% set s = 'x' * 1000000 %}{% for i in range(1000) %}{{ s }}{% endfor %}");
    assert!(err.contains("rendered output exceeds"), "{err}");
    // Literal text cannot be counted per emit: a 1 MB literal chunk lowers the fuel.
    let src = format!(
        "{{% for i in range(100000) %}}{}{{% endfor %}}",
        "y".repeat(1 << 20)
    );
    assert!(render_err(&src).contains("template steps"));
}

#[test]
fn reserved_names_are_refused() {
    let err = ChatTemplate::new("{{ __temper_add(1, 2) }}", "", "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("reserved"), "{err}");
}

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama 3.1's template without tools (its date header, system-message extraction and
/// `trim` filter).
const LLAMA31: &str = "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n";

fn conversation(n: usize) -> Vec<ChatMessage> {
    (0..n)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, format!("message number {i} {}", "word ".repeat(50)))
        })
        .collect()
}

/// 20,000 messages (≈ 5 MB of text): far longer than any context window, well inside the
/// limits.
#[test]
fn real_templates_render_long_conversations() {
    let messages = conversation(20_000);
    let text: usize = messages.iter().map(|m| m.content.len()).sum();
    for src in [CHATML, LLAMA31] {
        let t = ChatTemplate::new(src, "<|begin_of_text|>", "<|eot_id|>")
            .unwrap()
            .with_origin("tokenizer_config.json");
        let out = t.render(&messages, true).unwrap();
        assert!(out.len() > text, "{} <= {text}", out.len());
        assert!(out.contains("message number 19999"));
    }
}

/// A hostile template in a model folder's `tokenizer_config.json`: the render error names that
/// file.
#[test]
fn errors_name_the_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "a", "vocab": {"a": 0, "b": 1}}}"#,
    )
    .unwrap();
    let template =
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"eos_token": "b", "chat_template": template}).to_string(),
    )
    .unwrap();
    let bundle = temper_llm_arch::TokenizerBundle::from_hf_dir(dir.path()).unwrap();
    let t = bundle.compile_chat_template().unwrap().unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err()
        .to_string();
    let config = dir.path().join("tokenizer_config.json");
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(err.contains("template steps"), "{err}");
}
