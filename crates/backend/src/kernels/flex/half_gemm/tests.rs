//! The half-precision products against an f64 reference computed from the operands rounded
//! by the `half` crate, on every path this CPU runs, every storage and layout.
#![allow(clippy::unwrap_used)]

use burn::tensor::{bf16, f16};

use super::view::bf16_bits;
use super::*;

/// Deterministic values in [-1, 1) with full f32 mantissas (rarely bf16- or f16-exact).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How a test operand is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    F32,
    Bf16,
    F16,
}

/// One operand's values in every storage.
struct Operand {
    f32: Vec<f32>,
    bf16: Vec<bf16>,
    f16: Vec<f16>,
}

impl Operand {
    fn new(n: usize, seed: u64) -> Self {
        let f32 = values(n, seed);
        Self {
            bf16: f32.iter().map(|&x| bf16::from_f32(x)).collect(),
            f16: f32.iter().map(|&x| f16::from_f32(x)).collect(),
            f32,
        }
    }

    fn view(&self, store: Store, rs: usize, cs: usize) -> HalfView<'_> {
        match store {
            Store::F32 => HalfView::f32(&self.f32, rs, cs),
            Store::Bf16 => HalfView::bf16(&self.bf16, rs, cs),
            Store::F16 => HalfView::f16(&self.f16, rs, cs),
        }
    }
}

/// `x` rounded to `half` by the `half` crate (independent of the code under test).
fn round(x: f32, half: HalfType) -> f64 {
    match half {
        HalfType::Bf16 => f64::from(bf16::from_f32(x).to_f32()),
        HalfType::F16 => f64::from(f16::from_f32(x).to_f32()),
    }
}

/// `Σ_p r(lhs(i, p))·r(rhs(p, j))` and `Σ_p |…|` in f64, `r` rounding to `half`.
fn reference(
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    half: HalfType,
) -> (Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = (0..m * k)
        .map(|e| round(lhs.get(e / k, e % k), half))
        .collect();
    let b: Vec<f64> = (0..k * n)
        .map(|e| round(rhs.get(e / n, e % n), half))
        .collect();
    let (mut sum, mut abs) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                let t = a[i * k + p] * b[p * n + j];
                sum[i * n + j] += t;
                abs[i * n + j] += t.abs();
            }
        }
    }
    (sum, abs)
}

/// `got == base + alpha·sum` within f32 summation error: products of two half values are
/// exact in f32, and each of the ≤ k additions (then the scaling and the add to `base`)
/// rounds by at most 2⁻²⁴ of a partial sum bounded by `Σ|a·b|` — bounded here by
/// `(k + 3)·2⁻²³` of it (twice the classic bound), plus one rounding of `base` and the result.
fn assert_matches(
    got: &[f32],
    base: Option<&[f32]>,
    (sum, abs): &(Vec<f64>, Vec<f64>),
    alpha: f32,
    k: usize,
    what: &str,
) {
    assert_eq!(got.len(), sum.len(), "{what}: length");
    let u = f64::from(f32::EPSILON); // 2⁻²³
    for e in 0..got.len() {
        let b = base.map_or(0.0, |b| f64::from(b[e]));
        let want = b + f64::from(alpha) * sum[e];
        let tol = u * ((k as f64 + 3.0) * f64::from(alpha.abs()) * abs[e] + b.abs() + want.abs());
        let g = f64::from(got[e]);
        assert!(
            (g - want).abs() <= tol,
            "{what}: element {e}: {g} vs {want} (tolerance {tol:e})"
        );
    }
}

/// The paths whose kernels this CPU runs, with a note for those it lacks.
fn paths() -> Vec<(Path, &'static str)> {
    let mut paths = vec![(Path::Fallback, "fallback")];
    let cpu = cpu();
    if cpu.avx512 {
        paths.push((Path::Native, "native"));
    }
    if !cpu.avx512bf16 {
        eprintln!(
            "note: this CPU lacks AVX512-BF16 (avx512 {}): the packed bf16 kernel is not tested \
             here, only the paths it has",
            cpu.avx512
        );
    }
    paths
}

const SHAPES: [[usize; 3]; 16] = [
    [1, 1, 1],
    [1, 7, 5],
    [2, 33, 70],
    [3, 64, 17],
    [4, 65, 40],
    [5, 3, 1],
    [1, 70, 33],
    [7, 1, 9],
    [13, 31, 33],
    [17, 64, 64],
    [40, 69, 31],
    [65, 66, 67],
    [9, 2, 100],
    [33, 129, 65],
    [8, 500, 40],
    [257, 129, 300],
];

/// Every path against the reference: odd shapes (tile and strip edges, odd `k`, `k` across
/// depth blocks), f32 and bf16 storage on either side, both layouts of each operand,
/// accumulation on and off, `alpha ≠ 1`, on the calling thread and on rayon's.
#[test]
fn bf16_products_equal_the_rounded_reference() {
    products_equal_the_rounded_reference(HalfType::Bf16, &[Store::F32, Store::Bf16]);
}

/// As for bf16, with f16 (and f32) storage computed in f16.
#[test]
fn f16_products_equal_the_rounded_reference() {
    products_equal_the_rounded_reference(HalfType::F16, &[Store::F32, Store::F16]);
}

/// Storage of another half type than the product's is rounded once more (bf16 → f16, f16 →
/// bf16).
#[test]
fn mixed_storage_is_rounded_to_the_products_type() {
    let [m, k, n] = [5, 37, 40];
    let (a, b) = (Operand::new(m * k, 1), Operand::new(k * n, 2));
    for (half, sa, sb) in [
        (HalfType::F16, Store::Bf16, Store::F16),
        (HalfType::Bf16, Store::F16, Store::Bf16),
        (HalfType::Bf16, Store::F32, Store::F16),
        (HalfType::F16, Store::F32, Store::Bf16),
    ] {
        for mm in [1, m] {
            let (lhs, rhs) = (a.view(sa, k, 1), b.view(sb, n, 1));
            let want = reference(lhs, rhs, [mm, k, n], half);
            for (path, name) in paths() {
                let mut got = vec![0.0; mm * n];
                let dst = Dst::Init {
                    dst: &mut got,
                    accumulate: false,
                };
                matmul_half_with(path, Threads::Calling, dst, lhs, rhs, [mm, k, n], 1.0, half);
                let what = format!("{name}, {half:?}, {sa:?}·{sb:?}, m {mm}");
                assert_matches(&got, None, &want, 1.0, k, &what);
            }
        }
    }
}

fn products_equal_the_rounded_reference(half: HalfType, stores: &[Store]) {
    let paths = paths();
    for (si, &[m, k, n]) in SHAPES.iter().enumerate() {
        let a = Operand::new(m * k, si as u64);
        let b = Operand::new(k * n, 100 + si as u64);
        let base = values(m * n, 7);
        for &sa in stores {
            for &sb in stores {
                for (tl, tr) in [(false, false), (true, false), (false, true), (true, true)] {
                    let lhs = if tl {
                        a.view(sa, 1, m)
                    } else {
                        a.view(sa, k, 1)
                    };
                    let rhs = if tr {
                        b.view(sb, 1, k)
                    } else {
                        b.view(sb, n, 1)
                    };
                    let want = reference(lhs, rhs, [m, k, n], half);
                    for &(path, name) in &paths {
                        for threads in [Threads::Calling, Threads::Rayon] {
                            for accumulate in [false, true] {
                                let what = format!(
                                    "{name}, {threads:?}, {half:?}, [{m}, {k}]·[{k}, {n}], \
                                     {sa:?}·{sb:?}, tl {tl} tr {tr}, accumulate {accumulate}"
                                );
                                let mut got = base.clone();
                                let dst = Dst::Init {
                                    dst: &mut got,
                                    accumulate,
                                };
                                let alpha = -0.75;
                                matmul_half_with(
                                    path,
                                    threads,
                                    dst,
                                    lhs,
                                    rhs,
                                    [m, k, n],
                                    alpha,
                                    half,
                                );
                                let base = accumulate.then_some(&base[..]);
                                assert_matches(&got, base, &want, alpha, k, &what);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The uninitialised-output entry points never read their (NaN-filled) destination, on every
/// path; the public entry points (the process's default path) agree with the reference.
#[test]
fn uninit_outputs_are_written_not_read() {
    for [m, k, n] in [[3, 20, 50], [70, 45, 33], [6, 0, 4]] {
        let (a, b) = (Operand::new(m * k, 3), Operand::new(k * n, 4));
        let (lhs, rhs) = (a.view(Store::F32, k, 1), b.view(Store::Bf16, 1, k));
        let want = reference(lhs, rhs, [m, k, n], HalfType::Bf16);
        for (path, name) in paths() {
            let mut garbage = vec![MaybeUninit::new(f32::NAN); m * n + 3];
            let dst = Dst::Uninit(&mut garbage[..m * n]);
            matmul_half_with(
                path,
                Threads::Rayon,
                dst,
                lhs,
                rhs,
                [m, k, n],
                2.0,
                HalfType::Bf16,
            );
            // SAFETY: every element was initialised (with NaN, then by the product).
            #[allow(unsafe_code)]
            let got: Vec<f32> = garbage[..m * n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            assert_matches(
                &got,
                None,
                &want,
                2.0,
                k,
                &format!("{name}, [{m}, {k}, {n}]"),
            );
        }
        let got = product_half(lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &got,
            None,
            &want,
            2.0,
            k,
            &format!("product_half, [{m}, {k}, {n}]"),
        );
        let mut garbage = vec![MaybeUninit::new(f32::NAN); m * n];
        let got =
            matmul_half_parallel_uninit(&mut garbage, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            got,
            None,
            &want,
            2.0,
            k,
            &format!("uninit, [{m}, {k}, {n}]"),
        );
        let base = values(m * n, 12);
        let mut acc = base.clone();
        matmul_half_parallel(&mut acc, true, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &acc,
            Some(&base),
            &want,
            2.0,
            k,
            &format!("parallel, [{m}, {k}, {n}]"),
        );
        let mut acc = base.clone();
        matmul_half(&mut acc, true, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &acc,
            Some(&base),
            &want,
            2.0,
            k,
            &format!("calling, [{m}, {k}, {n}]"),
        );
    }
}

/// Empty and one-element dimensions: `k = 0` writes zeros (or leaves an accumulated output
/// alone), `m` or `n = 0` touches nothing.
#[test]
fn degenerate_shapes() {
    for (path, name) in paths() {
        for [m, k, n] in [
            [0, 3, 4],
            [3, 0, 4],
            [3, 4, 0],
            [0, 0, 0],
            [1, 0, 1],
            [1, 1, 1],
            [5, 1, 1],
            [1, 1, 5],
        ] {
            let (a, b) = (Operand::new(m * k, 5), Operand::new(k * n, 6));
            let (lhs, rhs) = (a.view(Store::Bf16, k, 1), b.view(Store::F32, n, 1));
            let want = reference(lhs, rhs, [m, k, n], HalfType::Bf16);
            for accumulate in [false, true] {
                let base = vec![3.0f32; m * n + 2];
                let mut got = base.clone();
                let dst = Dst::Init {
                    dst: &mut got,
                    accumulate,
                };
                matmul_half_with(
                    path,
                    Threads::Rayon,
                    dst,
                    lhs,
                    rhs,
                    [m, k, n],
                    1.5,
                    HalfType::Bf16,
                );
                let what = format!("{name}, [{m}, {k}, {n}], accumulate {accumulate}");
                assert_matches(
                    &got[..m * n],
                    accumulate.then_some(&base[..m * n]),
                    &want,
                    1.5,
                    k,
                    &what,
                );
                assert_eq!(got[m * n..], [3.0, 3.0], "{what}: wrote past the output");
            }
        }
    }
}

/// A 1-thread and a 2-thread pool give the same bits on every path, for products that split
/// by rows, by columns, and for the small-m path's column split.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let shapes = [
        [256, 112, 256],
        [40, 300, 700],
        [257, 129, 300],
        [1, 576, 1536],
        [3, 100, 800],
    ];
    let pools: Vec<_> = [1, 2]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect();
    for (path, name) in paths() {
        for [m, k, n] in shapes {
            let (a, b) = (Operand::new(m * k, 8), Operand::new(k * n, 9));
            for tr in [false, true] {
                let lhs = a.view(Store::F32, k, 1);
                let rhs = if tr {
                    b.view(Store::Bf16, 1, k)
                } else {
                    b.view(Store::Bf16, n, 1)
                };
                let run = |pool: &rayon::ThreadPool| {
                    pool.install(|| {
                        let mut out = vec![0.0f32; m * n];
                        let dst = Dst::Init {
                            dst: &mut out,
                            accumulate: false,
                        };
                        matmul_half_with(
                            path,
                            Threads::Rayon,
                            dst,
                            lhs,
                            rhs,
                            [m, k, n],
                            1.0,
                            HalfType::Bf16,
                        );
                        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    })
                };
                assert!(
                    run(&pools[0]) == run(&pools[1]),
                    "{name}, [{m}, {k}, {n}], tr {tr}: 1 and 2 threads differ"
                );
            }
        }
    }
}

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
    const W: usize = 12;
    let op = Operand::new(40 * 70, 11);
    for store in [Store::F32, Store::Bf16, Store::F16] {
        for (lines, kc) in [(12usize, 37usize), (5, 64), (1, 1), (12, 2), (7, 33)] {
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
