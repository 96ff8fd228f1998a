//! The 8-bit-input row dots against (a) an exact integer reference over the same input codes,
//! (b) f64 over the dequantised weight and the unrounded input, within the input's rounding;
//! and the VNNI kernel against the portable one, bit for bit, on odd block counts.

use super::*;

/// A seeded stream of bytes (xorshift).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Seeded values in `[-scale, scale)`, with one block of zeros (a zero input scale) when long
/// enough and one outlier (a block whose other codes are small).
fn inputs(k: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x: Vec<f32> = bytes(k, seed)
        .iter()
        .map(|&b| (f32::from(b) / 128.0 - 1.0) * scale)
        .collect();
    if k >= 64 {
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
    }
    x[k - 1] = 40.0 * scale;
    x
}

/// `n` rows of `k / 32` blocks of `ty` from seeded bytes, with f16 scales (and minima) in
/// ±0.05.
fn rows(ty: QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let bb = block_bytes(ty).expect("a ggml block type");
    let mut data = bytes(n * k / QK * bb, seed);
    let fields: &[usize] = if ty == QuantType::Q4_1 { &[0, 2] } else { &[0] };
    let scales = bytes(n * k / QK * 2, seed + 1);
    for (b, blk) in data.chunks_exact_mut(bb).enumerate() {
        for (f, &at) in fields.iter().enumerate() {
            let v = (f32::from(scales[2 * b + f]) / 128.0 - 1.0) * 0.05;
            let h = burn::tensor::f16::from_f32(v).to_bits();
            blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    data
}

/// The signed integer codes `q` of a block (`w = d·q + m`) and its `d`, `m`, read the way
/// ggml's dequantisers do.
fn block_codes(ty: QuantType, blk: &[u8]) -> ([i32; 32], f64, f64) {
    let d = f64::from(half(blk));
    let mut q = [0i32; 32];
    match ty {
        QuantType::Q8_0 => {
            for (i, v) in q.iter_mut().enumerate() {
                *v = i32::from(blk[2 + i] as i8);
            }
            (q, d, 0.0)
        }
        _ => {
            let qs = &blk[blk.len() - 16..];
            for i in 0..16 {
                q[i] = i32::from(qs[i] & 0x0F);
                q[i + 16] = i32::from(qs[i] >> 4);
            }
            if ty == QuantType::Q4_0 {
                q.iter_mut().for_each(|v| *v -= 8);
                (q, d, 0.0)
            } else {
                (q, d, f64::from(half(&blk[2..])))
            }
        }
    }
}

/// (exact value of the 8-bit product in f64, Σ of its terms' magnitudes) for one row.
fn integer_reference(ty: QuantType, row: &[u8], x: &Q8Input) -> (f64, f64) {
    let bb = row.len() / x.blocks;
    let (mut sum, mut mag) = (0.0f64, 0.0f64);
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let (q, d, m) = block_codes(ty, blk);
        let c = &x.codes[b * QK..(b + 1) * QK];
        let dot: i64 = q
            .iter()
            .zip(c)
            .map(|(&q, &c)| i64::from(q) * i64::from(c))
            .sum();
        let csum: i64 = c.iter().map(|&c| i64::from(c)).sum();
        // d·e and m·e are the f32 factors the kernels use, so the reference takes them
        // rounded the same way: what remains is the f32 summation.
        let de = f64::from(d as f32 * x.scale[b]);
        let mec = f64::from(m as f32 * x.scale[b]) * csum as f64;
        sum += de * dot as f64 + mec;
        mag += (de * dot as f64).abs() + mec.abs();
    }
    (sum, mag)
}

/// The kernels to check: the portable one always, VNNI where this CPU has it.
fn kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::Portable];
    if vnni_available() {
        k.push(Kernel::Vnni);
    }
    k
}

const TYPES: [QuantType; 3] = [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0];
/// Odd block counts included: 1, 3 and 5 blocks end on an unpaired block.
const WIDTHS: [usize; 5] = [32, 96, 160, 576, 1536];

#[test]
fn the_integer_part_is_exact_on_every_kernel() {
    for ty in TYPES {
        for k in WIDTHS {
            let n = 7;
            let w = rows(ty, n, k, k as u64);
            let x = Q8Input::new(&inputs(k, 3 + k as u64, 1.5), ty);
            let row_bytes = w.len() / n;
            for kernel in kernels() {
                let mut out = vec![0.0f32; n];
                dot_rows(kernel, &w, &x, &mut out);
                for (j, &got) in out.iter().enumerate() {
                    let (want, mag) =
                        integer_reference(ty, &w[j * row_bytes..(j + 1) * row_bytes], &x);
                    // f32 sums of `k / 32 / 2` terms a lane, then 16 lanes twice.
                    let bound = (k / QK + 20) as f64 * f64::from(f32::EPSILON) * mag;
                    assert!(
                        (f64::from(got) - want).abs() <= bound,
                        "{ty} k = {k} row {j} {kernel:?}: {got} vs {want} (bound {bound:.2e})"
                    );
                }
            }
        }
    }
}

#[test]
fn vnni_and_portable_agree_bit_for_bit() {
    if !vnni_available() {
        eprintln!("no AVX-512 VNNI here: only the portable kernel runs");
        return;
    }
    for ty in TYPES {
        for k in WIDTHS {
            let n = 5;
            let w = rows(ty, n, k, 11 + k as u64);
            let x = Q8Input::new(&inputs(k, 17 + k as u64, 0.7), ty);
            let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
            dot_rows(Kernel::Portable, &w, &x, &mut a);
            dot_rows(Kernel::Vnni, &w, &x, &mut b);
            let (a, b): (Vec<u32>, Vec<u32>) = (
                a.iter().map(|v| v.to_bits()).collect(),
                b.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(a, b, "{ty} k = {k}");
        }
    }
}

#[test]
fn within_the_input_rounding_of_the_f64_product() {
    for ty in TYPES {
        for k in WIDTHS {
            let n = 6;
            let w = rows(ty, n, k, 23 + k as u64);
            let xf = inputs(k, 29 + k as u64, 2.0);
            let x = Q8Input::new(&xf, ty);
            let row_bytes = w.len() / n;
            for kernel in kernels() {
                let mut out = vec![0.0f32; n];
                dot_rows(kernel, &w, &x, &mut out);
                for (j, &got) in out.iter().enumerate() {
                    let row = &w[j * row_bytes..(j + 1) * row_bytes];
                    let (mut want, mut bound, mut mag) = (0.0f64, 0.0f64, 0.0f64);
                    for (b, blk) in row.chunks_exact(row_bytes / x.blocks).enumerate() {
                        let (q, d, m) = block_codes(ty, blk);
                        let e = f64::from(x.scale[b]);
                        for (i, &qi) in q.iter().enumerate() {
                            let wv = d * f64::from(qi) + m;
                            let xv = f64::from(xf[b * QK + i]);
                            want += wv * xv;
                            mag += (wv * xv).abs();
                            // |x − e·c| ≤ e/2 (round to nearest), plus e's own rounding.
                            bound += wv.abs() * (e / 2.0 + xv.abs() * 1e-6);
                        }
                    }
                    let bound = bound + 1e-5 * mag;
                    assert!(
                        (f64::from(got) - want).abs() <= bound,
                        "{ty} k = {k} row {j} {kernel:?}: {got} vs {want} (bound {bound:.2e})"
                    );
                }
            }
        }
    }
}

#[test]
fn codes_follow_llama_cpp_rounding() {
    // max |x| = 2.54 maps to 127, so e ≈ 0.02: −0.035 is −1.75 codes, 0.013 is 0.65.
    let mut x = vec![0.0f32; 32];
    x[0] = 2.54;
    x[1] = -0.035;
    x[2] = 0.013;
    let q = Q8Input::new(&x, QuantType::Q8_0);
    assert_eq!(&q.codes[..3], &[127, -2, 1]);
    assert_eq!(q.scale[0], 2.54 / 127.0);
    assert_eq!(q.lane_sum[0], 126.0);
    // Lane 0 sums codes 127 − 2 + 1 + 0 = 126, times −128 for Q8_0.
    assert_eq!(q.corr[0], -128 * 126);
}
