//! acc / acc_norm on a tiny random model, against sums computed independently with
//! `token_logps` on each full, unpadded sequence.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use temper_bench_eval::loglik::{LoglikConfig, encode_pair, evaluate_loglik, format_context};
use temper_bench_eval::{Question, QuestionKind};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig, Tokenizer};
use temper_objectives::{IGNORE_INDEX, token_logps};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "the": 1, "cat": 2, "sat": 3, "on": 4, "mat": 5, "Question": 6, ":": 7, "Answer": 8, "True": 9, "False": 10, "dog": 11}, "unk_token": "<unk>"}
}"#;

fn expected_sum(m: &LlamaForCausalLM, ctx: &[u32], cont: &[u32]) -> f64 {
    let seq: Vec<i64> = ctx.iter().chain(cont).map(|&t| i64::from(t)).collect();
    let labels: Vec<i64> = seq
        .iter()
        .enumerate()
        .map(|(i, &t)| if i >= ctx.len() { t } else { IGNORE_INDEX })
        .collect();
    let n = seq.len();
    let d = Device::flex();
    let logits = m
        .forward(
            Tensor::<2, Int>::from_data(TensorData::new(seq, [1, n]), &d),
            &ForwardOptions::default(),
        )
        .unwrap();
    let l = token_logps(
        logits,
        Tensor::<2, Int>::from_data(TensorData::new(labels, [1, n]), &d),
    )
    .unwrap();
    f64::from(l.sum().into_scalar::<f32>())
}

#[test]
fn acc_and_acc_norm_pick_the_hand_computed_choices() {
    let tok = Tokenizer::from_json_str(TOKENIZER_JSON, "<test>").unwrap();
    let m = LlamaForCausalLM::init(&ModelConfig::tiny(12, 16, 2, 4, 2), &Device::flex());
    let mc = |id: &str, q: &str, choices: &[&str], answer: usize| Question {
        id: id.into(),
        category: Some("c".into()),
        question: q.into(),
        kind: QuestionKind::Mc {
            choices: choices.iter().map(|s| s.to_string()).collect(),
            answer,
        },
    };
    let questions = vec![
        mc(
            "a",
            "the cat sat",
            &["on the mat", "dog", "the cat sat on the mat", "mat"],
            0,
        ),
        mc("b", "the dog", &["sat", "sat on the mat"], 1),
        Question {
            id: "t".into(),
            category: None,
            question: "the cat sat on the mat".into(),
            kind: QuestionKind::Tf { answer: false },
        },
        mc("c", "cat", &["the", "on", "mat on the cat"], 2),
    ];
    // Batch size 3 mixes questions and pads rows of different lengths.
    let config = LoglikConfig {
        batch_size: 3,
        ..LoglikConfig::default()
    };
    let recs = evaluate_loglik(&m, &tok, None, &questions, &config, |_, _| {}).unwrap();
    assert_eq!(recs.len(), 4);
    for (q, r) in questions.iter().zip(&recs) {
        let ctx = format_context(q, &config, None).unwrap();
        let choices = q.choices().unwrap();
        let sums: Vec<f64> = choices
            .iter()
            .map(|c| {
                let p = encode_pair(&tok, &ctx, &format!(" {c}")).unwrap();
                // WordLevel on whitespace: the continuation is exactly the choice's words.
                assert_eq!(p.continuation, tok.encode(c, false).unwrap());
                expected_sum(&m, &p.context, &p.continuation)
            })
            .collect();
        let got = r.logprobs.as_ref().unwrap();
        for (g, w) in got.iter().zip(&sums) {
            assert!((g - w).abs() < 1e-4, "{}: {got:?} vs {sums:?}", q.id);
        }
        let argmax = |v: Vec<f64>| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        let acc = argmax(sums.clone());
        let norm = argmax(
            sums.iter()
                .zip(&choices)
                .map(|(s, c)| s / c.chars().count() as f64)
                .collect(),
        );
        let gold = q.gold_index().unwrap();
        assert_eq!(r.correct, acc == gold, "{}", q.id);
        assert_eq!(r.correct_norm, Some(norm == gold), "{}", q.id);
        assert_eq!(r.prediction.as_deref(), Some(choices[acc].as_str()));
    }
    // The multi-word choices have much lower sums: acc avoids them where acc_norm need not.
    let a = recs[0].logprobs.as_ref().unwrap();
    assert!(a[2] < a[1] && a[2] < a[3], "{a:?}");
}
