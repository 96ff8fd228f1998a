//! A [`QuantizedWeight`] re-expressed as uniform groups, the layout the GPU kernels read
//! (`kernels/cube/quant.rs`): every supported encoding decodes as
//!
//! `W[e] = scale[e / group] · lut[code[e]] (+ offset[e / group])`
//!
//! over the flat row-major element index `e`, with the codes packed into `u32` words (eight
//! 4-bit codes or four 8-bit codes a word, element `e` at bits `(e mod per_word)·bits`). One
//! kernel then serves six encodings, and no format's byte layout (18-, 34- or 210-byte blocks,
//! Q4_K's 6-bit packed scales, NF4's double-quantized ones) reaches shader code.
//!
//! Each group's scale and offset are the `f32` values the host decoder computes before its last
//! multiply (and add), so [`Groups::value`] is bit-identical to
//! [`QuantizedWeight::dequantize`] — a test below holds it to that.
//!
//! | encoding | group | code bits | lut | offset | bits a weight here (host blocks) |
//! |---|---|---|---|---|---|
//! | NF4 | 64 (flat) | 4 | NF4's 16 values | — | 4.5 (4.13) |
//! | Q8_0 | 32 | 8 | `i8` | — | 9 (8.5) |
//! | Q4_0 | 32 | 4 | `q − 8` | — | 5 (4.5) |
//! | Q4_1 | 32 | 4 | `q` | `m` | 6 (5) |
//! | Q4_K | 32 | 4 | `q` | `−dmin·m` | 6 (4.5) |
//! | Q6_K | 16 | 8 | `q − 32` | — | 10 (6.56) |

use temper_formats::quant::nf4::{NF4_BLOCK, NF4_CODE};
use temper_formats::quant::{QK_K, QuantType};

use super::{Blocks, QuantizedWeight};

/// The weight as groups of codes sharing a scale (and an offset); see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Groups {
    /// Bits per code: 4 or 8.
    pub bits: u32,
    /// Elements per group (16, 32 or 64).
    pub group: usize,
    /// The codes, packed low bits first.
    pub codes: Vec<u32>,
    /// One scale per group.
    pub scales: Vec<f32>,
    /// One offset per group, for the encodings that have one (Q4_1, Q4_K).
    pub offsets: Option<Vec<f32>>,
    /// The value of each code (`1 << bits` entries).
    pub lut: Vec<f32>,
}

#[cfg(test)]
impl Groups {
    /// Codes per `u32` word.
    pub fn per_word(&self) -> usize {
        32 / self.bits as usize
    }

    /// Element `e` (flat, row-major), as the kernels compute it.
    pub fn value(&self, e: usize) -> f32 {
        let per = self.per_word();
        let code = (self.codes[e / per] >> ((e % per) as u32 * self.bits)) & ((1 << self.bits) - 1);
        let g = e / self.group;
        let v = self.scales[g] * self.lut[code as usize];
        match &self.offsets {
            Some(o) => v + o[g],
            None => v,
        }
    }

    /// Bytes of the layout (codes, scales, offsets, lut).
    pub fn bytes(&self) -> usize {
        4 * (self.codes.len()
            + self.scales.len()
            + self.offsets.as_ref().map_or(0, Vec::len)
            + self.lut.len())
    }
}

/// IEEE half at `b[i..i + 2]`, little-endian, widened exactly (as the host decoders read it).
fn half_at(b: &[u8], i: usize) -> f32 {
    burn::tensor::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Codes appended in element order, packed into words.
struct Packer {
    bits: u32,
    words: Vec<u32>,
    count: usize,
}

impl Packer {
    fn new(bits: u32, elems: usize) -> Self {
        Self {
            bits,
            words: Vec::with_capacity(elems.div_ceil(32 / bits as usize)),
            count: 0,
        }
    }

    fn push(&mut self, code: u8) {
        let per = 32 / self.bits as usize;
        if self.count.is_multiple_of(per) {
            self.words.push(0);
        }
        let shift = (self.count % per) as u32 * self.bits;
        if let Some(w) = self.words.last_mut() {
            *w |= u32::from(code) << shift;
        }
        self.count += 1;
    }
}

impl QuantizedWeight {
    /// The weight as [`Groups`] (built on the host once per device upload; transient).
    pub(crate) fn groups(&self) -> Groups {
        let [rows, cols] = self.shape;
        let elems = rows * cols;
        match &self.blocks {
            Blocks::Nf4(t) => {
                let mut codes = Packer::new(4, elems);
                for i in 0..elems {
                    let byte = t.packed()[i / 2];
                    codes.push(if i.is_multiple_of(2) {
                        byte >> 4
                    } else {
                        byte & 0x0F
                    });
                }
                Groups {
                    bits: 4,
                    group: NF4_BLOCK,
                    codes: codes.words,
                    scales: t.scales(),
                    offsets: None,
                    lut: NF4_CODE.to_vec(),
                }
            }
            Blocks::SelfContained { bytes, .. } => ggml_groups(self.ty, bytes, elems),
        }
    }
}

/// [`Groups`] of `elems` values in ggml blocks of `ty`.
fn ggml_groups(ty: QuantType, bytes: &[u8], elems: usize) -> Groups {
    let int_lut = |n: i32, shift: i32| (0..n).map(|c| (c - shift) as f32).collect::<Vec<_>>();
    match ty {
        QuantType::Q8_0 => {
            let mut codes = Packer::new(8, elems);
            let mut scales = Vec::with_capacity(elems / 32);
            for b in bytes.chunks_exact(34) {
                scales.push(half_at(b, 0));
                b[2..].iter().for_each(|&q| codes.push(q));
            }
            // Code `c` is the byte of an `i8`.
            let lut = (0..256).map(|c| f32::from(c as u8 as i8)).collect();
            plain(8, 32, codes, scales, None, lut)
        }
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let (bb, with_min) = if ty == QuantType::Q4_0 {
                (18, false)
            } else {
                (20, true)
            };
            let mut codes = Packer::new(4, elems);
            let (mut scales, mut offsets) = (Vec::new(), Vec::new());
            for b in bytes.chunks_exact(bb) {
                scales.push(half_at(b, 0));
                if with_min {
                    offsets.push(half_at(b, 2));
                }
                let qs = &b[bb - 16..];
                qs.iter().for_each(|&q| codes.push(q & 0x0F));
                qs.iter().for_each(|&q| codes.push(q >> 4));
            }
            let (offsets, lut) = if with_min {
                (Some(offsets), int_lut(16, 0))
            } else {
                (None, int_lut(16, 8))
            };
            plain(4, 32, codes, scales, offsets, lut)
        }
        QuantType::Q4_K => {
            let mut codes = Packer::new(4, elems);
            let (mut scales, mut offsets) = (Vec::new(), Vec::new());
            for b in bytes.chunks_exact(144) {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let (sm, qs) = (&b[4..16], &b[16..144]);
                for chunk in 0..4 {
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    for (j, shift) in [(2 * chunk, 0), (2 * chunk + 1, 4)] {
                        let (sc, m) = temper_formats::quant::ggml::scale_min_k4(j, sm);
                        // The host computes `(d·sc)·q − dmin·m`; `a − b` is `a + (−b)` exactly.
                        scales.push(d * f32::from(sc));
                        offsets.push(-(dmin * f32::from(m)));
                        q.iter().for_each(|&v| codes.push((v >> shift) & 0x0F));
                    }
                }
            }
            plain(4, 32, codes, scales, Some(offsets), int_lut(16, 0))
        }
        QuantType::Q6_K => {
            let mut codes = Packer::new(8, elems);
            let mut scales = Vec::with_capacity(elems / 16);
            for b in bytes.chunks_exact(210) {
                let d = half_at(b, 208);
                // Group `g` of 16 uses scale `g` (see the host decoder's `is + 2t` indexing).
                scales.extend(b[192..208].iter().map(|&s| d * f32::from(s as i8)));
                let mut block = [0u8; QK_K];
                for half in 0..2 {
                    let ql = &b[half * 64..half * 64 + 64];
                    let qh = &b[128 + half * 32..128 + half * 32 + 32];
                    let y = &mut block[half * 128..half * 128 + 128];
                    for l in 0..32 {
                        let h = qh[l];
                        y[l] = (ql[l] & 0x0F) | ((h & 3) << 4);
                        y[l + 32] = (ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4);
                        y[l + 64] = (ql[l] >> 4) | (((h >> 4) & 3) << 4);
                        y[l + 96] = (ql[l + 32] >> 4) | (((h >> 6) & 3) << 4);
                    }
                }
                block.iter().for_each(|&q| codes.push(q));
            }
            let mut lut = int_lut(64, 32);
            lut.resize(256, 0.0);
            plain(8, 16, codes, scales, None, lut)
        }
        QuantType::Nf4 => unreachable!("NF4 weights have no self-contained blocks"),
    }
}

fn plain(
    bits: u32,
    group: usize,
    codes: Packer,
    scales: Vec<f32>,
    offsets: Option<Vec<f32>>,
    lut: Vec<f32>,
) -> Groups {
    Groups {
        bits,
        group,
        codes: codes.words,
        scales,
        offsets,
        lut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded bytes with sane f16 scales at `scale_at` in each block (the shape ggml files have).
    fn blocks(ty: QuantType, n_blocks: usize, bb: usize, scale_at: &[usize]) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ n_blocks as u64;
        let mut bytes: Vec<u8> = (0..n_blocks * bb)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        for (i, blk) in bytes.chunks_exact_mut(bb).enumerate() {
            for (s, &at) in scale_at.iter().enumerate() {
                let v = 0.01 + 0.003 * ((i * 7 + s * 3) % 11) as f32;
                let h = burn::tensor::f16::from_f32(if s == 1 { -v } else { v }).to_bits();
                blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        let _ = ty;
        bytes
    }

    fn assert_same(w: &QuantizedWeight) {
        let g = w.groups();
        let want = w.dequantize();
        for (e, &v) in want.iter().enumerate() {
            assert_eq!(g.value(e).to_bits(), v.to_bits(), "{w:?} element {e}");
        }
        assert_eq!(g.scales.len(), want.len().div_ceil(g.group), "{w:?}");
    }

    #[test]
    fn groups_decode_bit_identically_to_the_host_decoders() {
        for (ty, bb, at) in [
            (QuantType::Q8_0, 34, &[0][..]),
            (QuantType::Q4_0, 18, &[0]),
            (QuantType::Q4_1, 20, &[0, 2]),
            (QuantType::Q4_K, 144, &[0, 2]),
            (QuantType::Q6_K, 210, &[208]),
        ] {
            let [n, k] = [3, 512];
            let be = ty.block_elems();
            let w = QuantizedWeight::from_blocks("w", ty, blocks(ty, n * k / be, bb, at), [n, k])
                .expect("blocks");
            assert_same(&w);
        }
        // NF4 with rows that split its 64-value blocks, and a short last block.
        let values: Vec<f32> = (0..7 * 100)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w = QuantizedWeight::quantize("w", &values, [7, 100], QuantType::Nf4).expect("nf4");
        assert_same(&w);
    }

    #[test]
    fn the_layout_costs_what_the_docs_say() {
        let w = QuantizedWeight::quantize("w", &vec![0.5; 64 * 256], [64, 256], QuantType::Nf4)
            .expect("nf4");
        let g = w.groups();
        // 4 bits of code and a 32-bit scale per 64 values, plus the 16-entry lut.
        assert_eq!(g.bytes(), 64 * 256 / 2 + 64 * 256 / 64 * 4 + 16 * 4);
    }
}
