//! Temper's GGUF element encoders against gguf-py's, byte for byte: F16, BF16 (NaN, infinity,
//! ties), Q8_0 and Q4_0 (llama.cpp's reference quantizers) on the arrays
//! `tests/fixtures/gguf_export/make_quants.py` records.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use temper_llm_arch::gguf::{GgmlType, encode_tensor};

#[test]
fn encoders_match_gguf_py_byte_for_byte() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf_export/quants.json"
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ty = match case["type"].as_str().unwrap() {
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::BF16,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_0" => GgmlType::Q4_0,
            other => panic!("unexpected type {other}"),
        };
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let values: Vec<f32> = case["input_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
            .collect();
        let got = encode_tensor(name, &shape, &values, ty).unwrap();
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, case["bytes_hex"].as_str().unwrap(), "{name} {ty}");
        seen.insert(format!("{ty}"));
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}
