//! The rounding, the packing and the choice of path, one at a time.

use burn::tensor::{bf16, f16};

use super::super::view::bf16_bits;
use super::*;

/// f32 operands that are not half-representable enter the product rounded to nearest, ties
/// to even: with bf16's 8 significant bits, `1 + 2⁻⁹` and the tie `1 + 2⁻⁸` give 1, the tie
/// `1 + 3·2⁻⁸` gives `1 + 2⁻⁶`, and `1 + 2⁻⁸ + 2⁻²⁰` (above the tie) `1 + 2⁻⁷`; with f16's
/// 11 bits the ties are `1 + 2⁻¹¹` (to 1) and `1 + 3·2⁻¹¹` (to `1 + 2⁻⁹`).
#[test]
fn f32_operands_are_rounded_to_nearest_even() {
    let p = |e: i32| 2f32.powi(e);
    let cases = [
        (HalfType::Bf16, 1.0 + p(-9), 1.0),
        (HalfType::Bf16, 1.0 + p(-8), 1.0),
        (HalfType::Bf16, 1.0 + 3.0 * p(-8), 1.0 + p(-6)),
        (HalfType::Bf16, 1.0 + p(-8) + p(-20), 1.0 + p(-7)),
        (HalfType::Bf16, -(1.0 + 3.0 * p(-8)), -(1.0 + p(-6))),
        (HalfType::F16, 1.0 + p(-11), 1.0),
        (HalfType::F16, 1.0 + 3.0 * p(-11), 1.0 + p(-9)),
        (HalfType::F16, 1.0 + p(-11) + p(-20), 1.0 + p(-10)),
    ];
    for (half, x, rounded) in cases {
        assert_eq!(half.round(x), rounded, "{half:?}::round({x})");
        // m = 1 (small-m) and m = 8 (packed); the value on either side; k = 3, exact sums.
        for m in [1, 8] {
            let (xs, ones) = (vec![x; 3 * 20], vec![1.0f32; 3 * 20]);
            let want = 3.0 * rounded;
            for (path, name) in paths() {
                for (side, l, r) in [("lhs", &xs, &ones), ("rhs", &ones, &xs)] {
                    let (l, r) = (HalfView::f32(l, 3, 1), HalfView::f32(r, 20, 1));
                    let mut got = vec![0.0; m * 20];
                    let dst = Dst::Init {
                        dst: &mut got,
                        accumulate: false,
                    };
                    matmul_half_with(path, Threads::Calling, dst, l, r, [m, 3, 20], 1.0, half);
                    assert!(
                        got.iter().all(|&g| g == want),
                        "{name}, {half:?}, m {m}, {x} on the {side}: {got:?}, want {want}"
                    );
                }
            }
        }
    }
}

/// The bit-twiddled bf16 rounding (scalar, and the vector one when the CPU has AVX-512)
/// agrees with the `half` crate on ties, specials and a sweep of bit patterns.
#[test]
fn bf16_rounding_matches_the_half_crate() {
    let mut xs: Vec<u32> = vec![
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xff80_0001,
        0x7fff_ffff,
        0x7f7f_ffff,
        0x7f7f_8000,
        0x3f80_8000,
        0x3f81_8000,
        0x3f80_7fff,
        0x0000_8000,
        0x0001_8000,
        0x0000_0001,
        0x807f_ffff,
    ];
    xs.extend((0..200_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
    for &b in &xs {
        let x = f32::from_bits(b);
        assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{b:#010x}");
    }
    #[cfg(target_arch = "x86_64")]
    if cpu().avx512 {
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            for (l, &b) in lanes.iter_mut().zip(chunk) {
                *l = f32::from_bits(b);
            }
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX-512 F, BW, VL (checked); 16 readable f32s.
            let (rb, rh): ([u32; 16], [f32; 16]) = unsafe {
                use std::arch::x86_64::{__m512, _mm512_loadu_ps};
                let v = _mm512_loadu_ps(lanes.as_ptr());
                (
                    std::mem::transmute::<__m512, [u32; 16]>(lanes::round_bf16(v)),
                    std::mem::transmute::<__m512, [f32; 16]>(lanes::round_f16(v)),
                )
            };
            for (i, &x) in lanes.iter().enumerate() {
                let want = u32::from(bf16::from_f32(x).to_bits()) << 16;
                assert_eq!(rb[i], want, "vector bf16 of {:#010x}", x.to_bits());
                let want = f16::from_f32(x).to_f32();
                assert!(
                    rh[i].to_bits() == want.to_bits() || (rh[i].is_nan() && want.is_nan()),
                    "vector f16 of {:#010x}: {} vs {want}",
                    x.to_bits(),
                    rh[i]
                );
            }
        }
    }
}

/// Packing equals its definition in all three layouts (lines contiguous, depths contiguous,
/// neither), with fewer lines than the panel and an odd depth.
#[cfg(target_arch = "x86_64")]
#[test]
fn packing_equals_its_definition() {
    if !cpu().avx512 {
        eprintln!("note: no AVX-512 here: packing is not tested");
        return;
    }
    packing_of_width::<12>();
    packing_of_width::<32>();
}

/// [`packing_equals_its_definition`] for panels of `W` lines (the kernel's 12 and 32: one
/// partial and two whole groups of 16 in the transposing path).
#[cfg(target_arch = "x86_64")]
fn packing_of_width<const W: usize>() {
    let op = Operand::new(40 * 70, 11);
    for store in [Store::F32, Store::Bf16, Store::F16] {
        let cases = [
            (W, 37usize),
            (5, 64),
            (1, 1),
            (W, 2),
            (7, 33),
            (W - 1, 70),
            (W, 40),
        ];
        for (lines, kc) in cases {
            // (line stride, depth stride): depths contiguous, lines contiguous, neither.
            for [ls, ps] in [[70, 1], [1, 40], [2, 37]] {
                let src = op.view(store, ls, ps);
                let mut out = vec![u32::MAX; kc.div_ceil(2) * W + 1];
                #[allow(unsafe_code)]
                // SAFETY: the CPU has AVX-512 (checked); `lines × kc` fit the data.
                unsafe {
                    src.check(lines, kc);
                    pack::pack::<W>(src, lines, kc, &mut out)
                };
                for q in 0..kc.div_ceil(2) {
                    for l in 0..W {
                        let bits = |p: usize| {
                            if l < lines && p < kc {
                                u32::from(bf16::from_f32(src.get(l, p)).to_bits())
                            } else {
                                0
                            }
                        };
                        assert_eq!(
                            out[q * W + l],
                            bits(2 * q) | bits(2 * q + 1) << 16,
                            "{store:?}, {lines} lines, kc {kc}, strides {ls}, {ps}: word {q}, {l}"
                        );
                    }
                }
                assert_eq!(out[kc.div_ceil(2) * W], u32::MAX, "wrote past the panel");
            }
        }
    }
}

#[test]
#[should_panic(expected = "overruns")]
fn views_past_their_data_are_refused() {
    let data = vec![0.0f32; 10];
    let mut out = vec![0.0f32; 4];
    matmul_half(
        &mut out,
        false,
        HalfView::f32(&data, 5, 1),
        HalfView::f32(&data, 3, 1),
        [2, 5, 2],
        1.0,
        HalfType::Bf16,
    );
}

/// The dispatch table: small-m for `m ≤ 4` with a contiguous weight where AVX-512 runs,
/// packed for bf16 where AVX512-BF16 runs (and, by default, pays), the fallback otherwise
/// and always under `Path::Fallback`.
#[test]
fn paths_are_chosen_as_documented() {
    let cpu = cpu();
    let data = vec![0.0f32; 64];
    let contiguous = HalfView::f32(&data, 8, 1);
    let strided = HalfView::f32(&data, 3, 2);
    let small = cpu.avx512.then_some(Native::SmallM);
    let packed = cpu.avx512bf16.then_some(Native::Packed);
    let always = Path::Native(PackedRule::Always);
    let cases = [
        (always, HalfType::Bf16, contiguous, 1, small.or(packed)),
        (always, HalfType::Bf16, contiguous.t(), 4, small.or(packed)),
        (always, HalfType::F16, contiguous, 4, small),
        (always, HalfType::Bf16, strided, 1, packed),
        (always, HalfType::F16, strided, 1, None),
        (always, HalfType::Bf16, contiguous, 5, packed),
        (always, HalfType::F16, contiguous, 5, None),
        (Path::Fallback, HalfType::Bf16, contiguous, 1, None),
        (Path::Fallback, HalfType::Bf16, contiguous, 64, None),
    ];
    for (path, half, rhs, m, want) in cases {
        assert_eq!(
            native_kernel(path, half, rhs, m),
            want,
            "{path:?}, {half:?}, strides {:?}, m {m}",
            rhs.strides()
        );
    }
    let where_pays = Path::Native(PackedRule::WherePays);
    let want = packed.filter(|_| packed_pays());
    assert_eq!(
        native_kernel(where_pays, HalfType::Bf16, contiguous, 64),
        want
    );
    eprintln!(
        "note: packed bf16 kernel pays on this CPU: {}",
        packed_pays()
    );
}
