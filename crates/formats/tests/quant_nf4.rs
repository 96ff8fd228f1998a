//! NF4 with double quantization against bitsandbytes 0.50.2 on CPU (`fixtures/quant/nf4.json`,
//! made by `make_fixtures.py`): packed bytes, quantized scales, nested absmax, offset, code
//! tables and decoded values, bit for bit; plus the error bound of a round trip and the
//! errors on malformed stored tensors.

#![allow(clippy::unwrap_used)]

mod quant_fixtures;

use quant_fixtures::{assert_bits_eq, bit, bits, bytes, f32s, hex, json, usizes, weights};
use serde_json::Value;
use temper_formats::quant::dynamic8::dynamic_map;
use temper_formats::quant::nf4::{NESTED_BLOCK, NF4_BLOCK, NF4_CODE, Nf4Parts};
use temper_formats::quant::{Nf4Options, Nf4Tensor, QuantError};

/// The value bnb's decoder should give: its flat-block reference where its AVX-512 kernel
/// disagrees (see `nf4.rs`), its `dequantize_4bit` output otherwise.
fn expected_dequant(case: &Value) -> Vec<f32> {
    match case.get("dequant_reference") {
        Some(file) => f32s(file.as_str().unwrap()),
        None => f32s(case["dequant"].as_str().unwrap()),
    }
}

fn case_weights(case: &Value) -> Vec<f32> {
    let w = weights(&case["gen"]);
    let head = bits(&case["input_head_bits"]);
    assert_bits_eq("generated weights (head)", &w[..head.len()], &head);
    w
}

#[test]
fn code_tables_match_bitsandbytes() {
    let fx = json("nf4.json");
    assert_bits_eq("NF4 code", &NF4_CODE, &bits(&fx["nf4_code_bits"]));
    assert_bits_eq(
        "dynamic map",
        &dynamic_map(),
        &bits(&fx["dynamic_code_bits"]),
    );
}

#[test]
fn quantize_matches_bitsandbytes() {
    let fx = json("nf4.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let shape = usizes(&case["shape"]);
        let w = case_weights(case);
        let t = Nf4Tensor::quantize(name, &shape, &w, &Nf4Options::default()).unwrap();
        assert_eq!(t.shape(), shape);
        assert_eq!(
            t.packed(),
            bytes(case["packed"].as_str().unwrap()),
            "{name}: packed"
        );
        assert_eq!(
            t.absmax_codes(),
            hex(&case["qabsmax_hex"]),
            "{name}: absmax codes"
        );
        assert_bits_eq(
            &format!("{name}: offset"),
            &[t.offset()],
            &[bit(&case["offset_bits"])],
        );
        assert_bits_eq(
            &format!("{name}: nested absmax"),
            t.nested_absmax(),
            &bits(&case["absmax2_bits"]),
        );
        assert_bits_eq(
            &format!("{name}: nested code"),
            t.nested_code(),
            &bits(&fx["dynamic_code_bits"]),
        );
        assert_bits_eq(
            &format!("{name}: scales"),
            &t.scales(),
            &bits(&case["scales_bits"]),
        );
        assert_bits_eq(
            &format!("{name}: dequantized"),
            &t.dequantize(),
            &expected_dequant(case),
        );
    }
}

/// bnb's stored state, not Temper's quantization, decodes to bnb's values.
#[test]
fn dequantize_bitsandbytes_state() {
    let fx = json("nf4.json");
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let parts = Nf4Parts {
            shape: usizes(&case["shape"]),
            packed: bytes(case["packed"].as_str().unwrap()),
            absmax: hex(&case["qabsmax_hex"]),
            nested_absmax: bits(&case["absmax2_bits"]),
            nested_code: bits(&fx["dynamic_code_bits"]),
            offset: bit(&case["offset_bits"]),
        };
        let t = Nf4Tensor::from_parts(name, parts.clone()).unwrap();
        assert_bits_eq(
            &format!("{name}: dequantized"),
            &t.dequantize(),
            &expected_dequant(case),
        );
        assert_eq!(t.into_parts(), parts);
    }
}

/// The AVX-512 decoder of bnb 0.50.2 is recorded as it is: it disagrees with the flat-block
/// reference exactly on the case whose rows are a multiple of 16 but not of 64.
#[test]
fn the_row80_case_records_both_decoders() {
    let fx = json("nf4.json");
    for case in fx["cases"].as_array().unwrap() {
        let row = *usizes(&case["shape"]).last().unwrap();
        let matches = case["cpu_kernel_matches_reference"].as_bool().unwrap();
        if !matches {
            assert!(
                row.is_multiple_of(16) && !row.is_multiple_of(NF4_BLOCK),
                "{case}"
            );
            let kernel = f32s(case["dequant"].as_str().unwrap());
            assert_ne!(kernel, expected_dequant(case));
        }
    }
}

/// Each value decodes within half an NF4 code gap of its block scale, plus the error of the
/// 8-bit scale itself, which is within half a gap of the dynamic code near ±1 times the
/// nested absmax.
#[test]
fn round_trip_error_is_bounded_per_block() {
    let fx = json("nf4.json");
    let max_gap = NF4_CODE
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0f32, f32::max);
    let code = dynamic_map();
    let max_code_gap = code.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max);
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let w = case_weights(case);
        let t =
            Nf4Tensor::quantize(name, &usizes(&case["shape"]), &w, &Nf4Options::default()).unwrap();
        let y = t.dequantize();
        let scales = t.scales();
        for (b, (x, y)) in w.chunks(NF4_BLOCK).zip(y.chunks(NF4_BLOCK)).enumerate() {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale_err = (scales[b] - amax).abs();
            // Half a code gap, plus one LUT bin, plus f32 rounding of the subtraction.
            let nested = t.nested_absmax()[b / NESTED_BLOCK];
            let scale_bound = nested * (max_code_gap / 2.0 + 2.0 / 65535.0) + amax * 1e-6;
            assert!(
                scale_err <= scale_bound,
                "{name} block {b}: scale {} vs absmax {amax}",
                scales[b]
            );
            for (i, (&x, &y)) in x.iter().zip(y).enumerate() {
                let bound = amax * max_gap / 2.0 + scale_err + amax * 1e-6 + 1e-37;
                assert!(
                    (x - y).abs() <= bound,
                    "{name} block {b} element {i}: {x} -> {y} (bound {bound})"
                );
            }
        }
    }
}

#[test]
fn offset_follows_torch_threads_only_beyond_the_grain() {
    // 32768 blocks of 64 is torch's grain: fewer blocks give the same offset for any thread
    // count; the fixture's `torch_sum.json` covers the split itself.
    let w: Vec<f32> = (0..64 * 300)
        .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
        .collect();
    let one = Nf4Tensor::quantize("w", &[300, 64], &w, &Nf4Options { torch_threads: 1 }).unwrap();
    let four = Nf4Tensor::quantize("w", &[300, 64], &w, &Nf4Options { torch_threads: 4 }).unwrap();
    assert_eq!(one, four);
}

#[test]
fn malformed_parts_name_the_tensor() {
    let name = "model.layers.0.mlp.up_proj.weight";
    let w: Vec<f32> = (0..300).map(|i| (i as f32).sin()).collect();
    let good = Nf4Tensor::quantize(name, &[3, 100], &w, &Nf4Options::default())
        .unwrap()
        .into_parts();

    let mut parts = good.clone();
    parts.packed.pop();
    let err = Nf4Tensor::from_parts(name, parts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor `model.layers.0.mlp.up_proj.weight`: NF4 shape [3, 100] (5 blocks) needs 150 \
         packed bytes, got 149"
    );

    let mut parts = good.clone();
    parts.absmax.push(0);
    let err = Nf4Tensor::from_parts(name, parts).unwrap_err().to_string();
    assert!(err.ends_with("needs 5 absmax codes, got 6"), "{err}");

    let mut parts = good.clone();
    parts.nested_absmax.clear();
    let err = Nf4Tensor::from_parts(name, parts).unwrap_err().to_string();
    assert!(
        err.ends_with("needs 1 nested absmax values, got 0"),
        "{err}"
    );

    let mut parts = good;
    parts.nested_code.truncate(255);
    let err = Nf4Tensor::from_parts(name, parts).unwrap_err().to_string();
    assert!(
        err.ends_with("needs 256 nested code values, got 255"),
        "{err}"
    );

    let err = Nf4Tensor::quantize(name, &[3, 100], &w[..299], &Nf4Options::default()).unwrap_err();
    assert!(matches!(
        err,
        QuantError::ValueCount {
            expected: 300,
            actual: 299,
            ..
        }
    ));

    let mut bad = w.clone();
    bad[123] = f32::INFINITY;
    let err = Nf4Tensor::quantize(name, &[3, 100], &bad, &Nf4Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor `model.layers.0.mlp.up_proj.weight`: value inf at index 123 is not finite; NF4 \
         quantizes finite values only"
    );
}
