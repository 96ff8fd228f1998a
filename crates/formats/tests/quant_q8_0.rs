//! Q8_0 against gguf-py 0.19 (`gguf.quants.quantize` / `dequantize`, `fixtures/quant/q8_0.json`):
//! the GGUF bytes and the decoded values bit for bit, the round-trip error bound, and errors
//! on truncated input.

#![allow(clippy::unwrap_used)]

mod quant_fixtures;

use quant_fixtures::{assert_bits_eq, bits, bytes, f32s, usizes, weights};
use temper_formats::quant::q8_0::{self, Q8_0_BLOCK};

#[test]
fn quantize_and_dequantize_match_gguf_py() {
    let fx = quant_fixtures::json("q8_0.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let shape = usizes(&case["shape"]);
        let w = if case["gen"].is_null() {
            bits(&case["values_bits"])
        } else {
            weights(&case["gen"])
        };
        let head = bits(&case["input_head_bits"]);
        assert_bits_eq(&format!("{name}: weights"), &w[..head.len()], &head);

        let want_bytes = bytes(case["quantized"].as_str().unwrap());
        let want = f32s(case["dequant"].as_str().unwrap());
        let got = q8_0::quantize(name, &shape, &w).unwrap();
        assert_eq!(got, want_bytes, "{name}: quantized bytes");
        // gguf-py's bytes, decoded by Temper.
        let y = q8_0::dequantize(name, &shape, &want_bytes).unwrap();
        assert_bits_eq(&format!("{name}: dequantized"), &y, &want);
    }
}

/// `|x - y| <= d / 2 + 127 |d - d16|` per block: half a step of the `f32` scale the codes were
/// rounded with, plus the stored scale's `f16` rounding times the largest code, with `f32` slack.
#[test]
fn round_trip_error_is_bounded_per_block() {
    let spec = serde_json::json!({
        "seed": 7, "n": 4096, "scale_bits": 0.3f64.to_bits(), "outlier_every": 61,
        "outlier_factor_bits": 30f64.to_bits(), "zero_start": 0, "zero_end": 0
    });
    let w = weights(&spec);
    let q = q8_0::quantize("w", &[16, 256], &w).unwrap();
    let y = q8_0::dequantize("w", &[16, 256], &q).unwrap();
    for (b, (x, y)) in w.chunks(Q8_0_BLOCK).zip(y.chunks(Q8_0_BLOCK)).enumerate() {
        let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let d16 = half::f16::from_le_bytes([q[b * 34], q[b * 34 + 1]]).to_f32();
        let bound = d / 2.0 + 127.0 * (d - d16).abs() + d * 1e-5;
        for (&x, &y) in x.iter().zip(y) {
            assert!(
                (x - y).abs() <= bound,
                "block {b}: {x} -> {y} (bound {bound})"
            );
        }
    }
}

#[test]
fn truncated_input_names_the_tensor() {
    let w = vec![0.5f32; 64];
    let q = q8_0::quantize("blk.3.attn_v.weight", &[2, 32], &w).unwrap();
    let err = q8_0::dequantize("blk.3.attn_v.weight", &[2, 32], &q[..q.len() - 1])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor `blk.3.attn_v.weight`: Q8_0 shape [2, 32] (2 blocks) needs 68 bytes, got 67"
    );
    let err = q8_0::dequantize("blk.3.attn_v.weight", &[2, 20], &q[..34])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Q8_0 needs rows of whole 32-element blocks"),
        "{err}"
    );
}
