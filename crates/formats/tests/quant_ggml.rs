//! The GGUF block decoders (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) against gguf-py 0.19's
//! `gguf.quants.dequantize` on seeded random blocks (`fixtures/quant/ggml_decode.json`).

#![allow(clippy::unwrap_used)]

mod quant_fixtures;

use quant_fixtures::{assert_bits_eq, bytes, f32s};
use temper_formats::quant::QuantType;

#[test]
fn decoders_match_gguf_py() {
    let fx = quant_fixtures::json("ggml_decode.json");
    let cases = fx["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(names, ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"]);
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let format = name.parse::<QuantType>().unwrap().block_format().unwrap();
        assert_eq!(format.name(), name);
        let blocks = bytes(case["bytes"].as_str().unwrap());
        let want = f32s(case["dequant"].as_str().unwrap());
        let n_blocks = usize::try_from(case["blocks"].as_u64().unwrap()).unwrap();
        assert_eq!(blocks.len(), n_blocks * format.block_bytes());
        let mut got = vec![0f32; n_blocks * format.block_elems()];
        format.dequantize_blocks(&blocks, &mut got).unwrap();
        assert_bits_eq(name, &got, &want);
        // One block at a time gives the same values.
        let (bb, be) = (format.block_bytes(), format.block_elems());
        let mut one = vec![0f32; be];
        format.dequantize_block(&blocks[bb..2 * bb], &mut one);
        assert_bits_eq(&format!("{name} block 1"), &one, &want[be..2 * be]);
        // A truncated run is refused, naming the format and the sizes.
        let err = format
            .dequantize_blocks(&blocks[..blocks.len() - 1], &mut got)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{name}: {} bytes", blocks.len() - 1)),
            "{err}"
        );
    }
}
