//! Tests of the container parser and the reader API on GGUF images built in memory (a
//! `#[cfg(test)]` module of `gguf/mod.rs`).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::test_writer::{GgufBuilder, enc_str};
use super::{GgmlType, GgufFile, GgufValue};

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// One Q8_0 block: d = 0.5, q = -16..16.
fn q8_0_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = f16_bytes(0.5).to_vec();
    let mut want = Vec::new();
    for j in 0..32i8 {
        let q = j - 16;
        b.push(q as u8);
        want.push(q as f32 * 0.5);
    }
    (b, want)
}

/// One Q4_1 block: d = 0.25, m = -1, nibbles j % 16 (low) and 15 - j % 16 (high).
fn q4_1_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = f16_bytes(0.25).to_vec();
    b.extend(f16_bytes(-1.0));
    let mut want = vec![0.0; 32];
    for j in 0..16u8 {
        let lo = j;
        let hi = 15 - j;
        b.push(lo | (hi << 4));
        want[j as usize] = lo as f32 * 0.25 - 1.0;
        want[j as usize + 16] = hi as f32 * 0.25 - 1.0;
    }
    (b, want)
}

fn sample(version: u32) -> Vec<u8> {
    let (q8, _) = q8_0_block();
    let (q4, _) = q4_1_block();
    GgufBuilder::new(version)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_bool("tokenizer.ggml.add_bos_token", false)
        .kv_i32("some.negative", -3)
        .kv_u64("some.big", 1 << 40)
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .f32_tensor("norm.weight", &[3], &[1.0, -2.0, 3.5])
        .tensor("q8.weight", &[32, 1], 8, q8)
        .tensor("q4.weight", &[32], 3, q4)
        .build()
}

#[test]
fn parses_v3_and_v2() {
    for version in [2, 3] {
        let file = GgufFile::from_bytes(sample(version), "mem.gguf").unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.path(), Path::new("mem.gguf"));
        assert_eq!(file.alignment(), 32);
        assert_eq!(file.data_start() % 32, 0);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(
            file.get_f32("llama.attention.layer_norm_rms_epsilon")
                .unwrap(),
            1e-5
        );
        assert!(!file.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        assert_eq!(file.get_u64("some.big").unwrap(), 1 << 40);
        let tokens = file.get_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[2], GgufValue::String("ab".into()));
        assert_eq!(file.metadata().len(), 7);

        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["norm.weight", "q8.weight", "q4.weight"]);
        let q8 = file.tensor_info("q8.weight").unwrap();
        assert_eq!(q8.dims, [32, 1]);
        assert_eq!(q8.ggml_type, GgmlType::Q8_0);
        assert_eq!(q8.hf_shape(), [1, 32]);
        assert_eq!(q8.offset, 32);
        assert_eq!(file.tensor_bytes(q8).unwrap().len(), 34);

        assert_eq!(file.dequantize("norm.weight").unwrap(), [1.0, -2.0, 3.5]);
        assert_eq!(file.dequantize("q8.weight").unwrap(), q8_0_block().1);
        assert_eq!(file.dequantize("q4.weight").unwrap(), q4_1_block().1);
    }
}

#[test]
fn typed_getters_report_key_and_types() {
    let file = GgufFile::from_bytes(sample(3), "mem.gguf").unwrap();
    let err = file
        .get_u32("general.architecture")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metadata key `general.architecture` has type string, expected u32"),
        "{err}"
    );
    assert!(err.starts_with("mem.gguf: "), "{err}");
    let err = file
        .get_u32("llama.context_length")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metadata key `llama.context_length` missing"),
        "{err}"
    );
    let err = file.get_u32("some.negative").unwrap_err().to_string();
    assert!(
        err.contains("`some.negative`") && err.contains("-3"),
        "{err}"
    );
    let err = file.get_u32("some.big").unwrap_err().to_string();
    assert!(err.contains("does not fit in u32"), "{err}");
    let err = file.get_str("llama.block_count").unwrap_err().to_string();
    assert!(err.contains("has type u32, expected string"), "{err}");
    let err = file.dequantize("nope").unwrap_err().to_string();
    assert!(err.contains("tensor `nope` not found"), "{err}");
}

#[test]
fn every_truncation_is_an_error() {
    for version in [2, 3] {
        let full = sample(version);
        for cut in 0..full.len() {
            let result = GgufFile::from_bytes(full[..cut].to_vec(), "cut.gguf");
            let err = result
                .err()
                .unwrap_or_else(|| panic!("prefix {cut} parsed"));
            let msg = err.to_string();
            assert!(msg.starts_with("cut.gguf: "), "{msg}");
            if cut >= 4 {
                assert!(
                    msg.contains("truncated") || msg.contains("exceeds the file size"),
                    "{msg}"
                );
            }
        }
        assert!(GgufFile::from_bytes(full, "ok.gguf").is_ok());
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = sample(3);
    bytes[0] = b'X';
    let err = GgufFile::from_bytes(bytes, "m.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.gguf: not a GGUF file (magic"), "{err}");

    let err = GgufFile::from_bytes(b"PK\x03\x04rest".to_vec(), "z")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    let mut bytes = sample(3);
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = GgufFile::from_bytes(bytes, "v1.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported GGUF version 1"), "{err}");

    let mut bytes = sample(3);
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = GgufFile::from_bytes(bytes, "be.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("big-endian"), "{err}");
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let err = GgufFile::from_bytes(header(0, 1_000_000_000_000_000_000), "h.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("count 1000000000000000000 of metadata entries exceeds the file size"),
        "{err}"
    );

    let err = GgufFile::from_bytes(header(u64::MAX, 0), "h.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of tensor infos exceeds the file size"),
        "{err}"
    );

    // A string value claiming 2^62 bytes.
    let mut b = header(0, 1);
    b.extend(enc_str("general.name"));
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    b.extend_from_slice(b"abc");
    let err = GgufFile::from_bytes(b, "s.gguf").unwrap_err().to_string();
    assert!(
        err.contains("truncated: value of metadata key `general.name`"),
        "{err}"
    );

    // A key whose length is u64::MAX.
    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    let err = GgufFile::from_bytes(b, "k.gguf").unwrap_err().to_string();
    assert!(err.contains("truncated: key of metadata entry #0"), "{err}");

    // An array of u32 claiming 2^60 elements.
    let mut b = header(0, 1);
    b.extend(enc_str("tokenizer.ggml.token_type"));
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    let err = GgufFile::from_bytes(b, "a.gguf").unwrap_err().to_string();
    assert!(
        err.contains("count 1152921504606846976 of array elements of metadata key `tokenizer.ggml.token_type`"),
        "{err}"
    );
}

#[test]
fn malformed_metadata() {
    // Unknown value type.
    let b = GgufBuilder::new(3).kv_raw("x.y", 13, vec![0; 8]).build();
    let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
    assert!(
        err.contains("metadata key `x.y` has unknown value type 13"),
        "{err}"
    );

    // Arrays nested too deep: array(array(array(array(array(u8)))))
    let mut v = Vec::new();
    for _ in 0..5 {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    let b = GgufBuilder::new(3).kv_raw("deep", 9, v).build();
    let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
    assert!(err.contains("`deep` nests arrays deeper than"), "{err}");

    // Two levels are fine.
    let mut v = 9u32.to_le_bytes().to_vec();
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&2u64.to_le_bytes());
    v.extend_from_slice(&[7, 8]);
    let b = GgufBuilder::new(3).kv_raw("nested", 9, v).build();
    let file = GgufFile::from_bytes(b, "t.gguf").unwrap();
    assert_eq!(
        file.get("nested"),
        Some(&GgufValue::Array(vec![GgufValue::Array(vec![
            GgufValue::U8(7),
            GgufValue::U8(8)
        ])]))
    );

    let b = GgufBuilder::new(3).kv_u32("a", 1).kv_u32("a", 2).build();
    let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
    assert!(err.contains("duplicate metadata key `a`"), "{err}");

    let b = GgufBuilder::new(3)
        .kv_raw("bad", 8, enc_bytes(&[0xff, 0xfe]))
        .build();
    let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
    assert!(
        err.contains("value of metadata key `bad` at offset") && err.contains("UTF-8"),
        "{err}"
    );

    let b = GgufBuilder::new(3).kv_u32("general.alignment", 24).build();
    let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
    assert!(err.contains("`general.alignment` is 24"), "{err}");
}

fn enc_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

#[test]
fn custom_alignment() {
    let mut builder = GgufBuilder::new(3)
        .kv_u32("general.alignment", 64)
        .f32_tensor("a", &[3], &[1.0, 2.0, 3.0])
        .f32_tensor("b", &[2], &[4.0, 5.0]);
    builder.alignment = 64;
    let file = GgufFile::from_bytes(builder.build(), "t.gguf").unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_start() % 64, 0);
    assert_eq!(file.tensor_info("b").unwrap().offset, 64);
    assert_eq!(file.dequantize("b").unwrap(), [4.0, 5.0]);
}

/// A file with one tensor info written by hand (no data section unless `data` is given).
fn one_tensor(dims: &[u64], ggml_type: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend(enc_str("t.weight"));
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ggml_type.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend_from_slice(data);
    b
}

#[test]
fn malformed_tensor_table() {
    let check = |bytes: Vec<u8>, needle: &str| {
        let err = GgufFile::from_bytes(bytes, "t.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert!(err.starts_with("t.gguf: "), "{err}");
    };
    check(
        one_tensor(&[4], 0, 0, &[0; 8]),
        "truncated: tensor `t.weight` needs bytes",
    );
    check(
        one_tensor(&[2], 0, 1 << 40, &[0; 8]),
        "truncated: tensor `t.weight`",
    );
    check(
        one_tensor(&[2], 0, u64::MAX - 31, &[0; 8]),
        "truncated: tensor `t.weight`",
    );
    check(
        one_tensor(&[2], 0, 8, &[0; 64]),
        "offset 8 is not a multiple of the alignment 32",
    );
    check(
        one_tensor(&[1, 1, 1, 1, 1], 0, 0, &[0; 4]),
        "tensor `t.weight` has 5 dimensions",
    );
    check(
        one_tensor(&[1 << 32, 1 << 32], 0, 0, &[]),
        "element count of dims",
    );
    check(one_tensor(&[u64::MAX, 1], 0, 0, &[]), "overflows");
    check(
        one_tensor(&[33], 8, 0, &[0; 64]),
        "33 elements is not a multiple of the Q8_0 block size 32",
    );
    // Dims so large that the byte size overflows after the element count did not.
    check(one_tensor(&[1 << 62], 0, 0, &[]), "tensor `t.weight`");

    let b = GgufBuilder::new(3)
        .f32_tensor("same", &[1], &[1.0])
        .f32_tensor("same", &[1], &[2.0])
        .build();
    check(b, "duplicate tensor `same`");
}

#[test]
fn unsupported_types_are_readable_but_not_decodable() {
    // Q5_0 (known layout, no decoder) and an unknown id.
    let file = GgufFile::from_bytes(one_tensor(&[32], 6, 0, &[0; 22]), "t.gguf").unwrap();
    let info = file.tensor_info("t.weight").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Other(6));
    assert_eq!(file.tensor_bytes(info).unwrap().len(), 22);
    let err = file.dequantize("t.weight").unwrap_err().to_string();
    assert!(
        err.contains("unsupported ggml type 6 (Q5_0) for tensor `t.weight`"),
        "{err}"
    );

    let file = GgufFile::from_bytes(one_tensor(&[32], 99, 0, &[0; 4]), "t.gguf").unwrap();
    let err = file.dequantize("t.weight").unwrap_err().to_string();
    assert!(
        err.contains("unsupported ggml type 99 for tensor `t.weight`"),
        "{err}"
    );
    let info = file.tensor_info("t.weight").unwrap();
    assert!(file.tensor_bytes(info).is_err());
}

#[test]
fn ggml_type_ids_roundtrip() {
    for id in 0..40 {
        assert_eq!(GgmlType::from_id(id).id(), id);
    }
    assert_eq!(GgmlType::Q4_1.block_size(), Some(32));
    assert_eq!(GgmlType::Q4_1.type_size(), Some(20));
    assert_eq!(GgmlType::Q6_K.type_size(), Some(210));
    assert_eq!(GgmlType::Other(99).block_size(), None);
    assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
    assert_eq!(GgmlType::Other(13).to_string(), "13 (Q5_K)");
}

#[test]
fn open_reads_files_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, sample(3)).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.dequantize("norm.weight").unwrap(), [1.0, -2.0, 3.5]);
    assert!(format!("{file:?}").contains("n_tensors: 3"));

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let err = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(
        err.contains("empty.gguf") && err.contains("truncated"),
        "{err}"
    );

    let err = GgufFile::open(dir.path().join("missing.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.gguf: cannot read file"), "{err}");
}

/// A `u8` array element is one byte in the file and a 32-byte `GgufValue` in memory: a 64 MiB
/// array would take 2 GiB. Over the metadata memory bound it is refused, naming the key;
/// small byte arrays (a SentencePiece charsmap) and string arrays still parse.
#[test]
fn amplifying_metadata_arrays_are_refused() {
    let u8_array = |n: usize| {
        let mut v = 0u32.to_le_bytes().to_vec(); // element type u8
        v.extend((n as u64).to_le_bytes());
        v.extend(std::iter::repeat_n(7u8, n));
        v
    };
    let big = GgufBuilder::new(3)
        .kv_raw("general.big", 9, u8_array(64 << 20))
        .build();
    let err = GgufFile::from_bytes(big, "big.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("big.gguf") && err.contains("`general.big`") && err.contains("limit"),
        "{err}"
    );
    let charsmap = GgufBuilder::new(3)
        .kv_raw(
            "tokenizer.ggml.precompiled_charsmap",
            9,
            u8_array(300 << 10),
        )
        .kv_str_array("tokenizer.ggml.tokens", &["a"; 100_000])
        .build();
    let file = GgufFile::from_bytes(charsmap, "ok.gguf").unwrap();
    assert_eq!(
        file.get_array("tokenizer.ggml.precompiled_charsmap")
            .unwrap()
            .len(),
        300 << 10
    );
    assert_eq!(
        file.get_array("tokenizer.ggml.tokens").unwrap().len(),
        100_000
    );
}
