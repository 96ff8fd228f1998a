//! Shared by the `quant_*` tests: the fixtures of `tests/fixtures/quant/` (made by
//! `make_fixtures.py` with bitsandbytes, torch and gguf-py) and the seeded weights they were
//! made from.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

/// `tests/fixtures/quant/<name>`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name)
}

/// A JSON fixture.
pub fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(path(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A binary fixture.
pub fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap()
}

/// A little-endian `f32` fixture.
pub fn f32s(name: &str) -> Vec<f32> {
    bytes(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A JSON array of `f32` bit patterns.
pub fn bits(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| f32::from_bits(u32::try_from(b.as_u64().unwrap()).unwrap()))
        .collect()
}

/// One `f32` bit pattern.
pub fn bit(v: &Value) -> f32 {
    f32::from_bits(u32::try_from(v.as_u64().unwrap()).unwrap())
}

/// A JSON array of unsigned integers.
pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| usize::try_from(d.as_u64().unwrap()).unwrap())
        .collect()
}

/// A hex string.
pub fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Bit-for-bit equality of two `f32` slices, reporting the first difference and the count.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diffs: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = diffs.first() {
        panic!(
            "{what}: {} of {} values differ; first at {i}: got {:e} ({:#010x}), want {:e} ({:#010x})",
            diffs.len(),
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// SplitMix64, the stream `make_fixtures.py` draws its weights from.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 24 random bits in [0, 1), exact in `f64`.
    fn uniform(&mut self) -> f64 {
        (self.next() >> 40) as f64 / 16_777_216.0
    }
}

/// The weights of a fixture's `gen` spec, as `make_fixtures.py::weights` computes them (every
/// step exact or one IEEE rounding, so bit-identical).
pub fn weights(spec: &Value) -> Vec<f32> {
    let int = |k: &str| usize::try_from(spec[k].as_u64().unwrap()).unwrap();
    // The f64 parameters from their bit patterns: decimal parsing need not be exact.
    let float = |k: &str| f64::from_bits(spec[format!("{k}_bits")].as_u64().unwrap());
    let mut rng = SplitMix64(spec["seed"].as_u64().unwrap());
    let (every, factor, scale) = (
        int("outlier_every"),
        float("outlier_factor"),
        float("scale"),
    );
    let zero = int("zero_start")..int("zero_end");
    (0..int("n"))
        .map(|i| {
            let s = rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform() - 2.0;
            let mut x = s * scale;
            if every != 0 && i % every == every - 1 {
                x *= factor;
            }
            if zero.contains(&i) {
                x = 0.0;
            }
            x as f32
        })
        .collect()
}
