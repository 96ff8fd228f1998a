//! Linear layers over block-quantized frozen weights (`kernels::quant_linear`): forward
//! `x·Wᵀ + b` and the input gradient `∂y·W`, against f64 products over the dequantised weight,
//! on odd shapes — rows that are not whole NF4 blocks, several decoded tiles, the few-row
//! (decode) path — in f32 and under bf16 autocast.
//!
//! The `..._on_the_test_device` tests run every encoding on `TEMPER_TEST_DEVICE` (Flex's fused
//! products by default; the CubeCL kernels under `TEMPER_TEST_DEVICE=wgpu`, as
//! `scripts/test-lavapipe.sh` runs them on Mesa lavapipe).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{host, test_device, values};
use temper_backend::kernels::quant_linear;
use temper_backend::{DeviceSpec, HalfType, QuantType, QuantizedWeight, autocast};

fn device(autodiff: bool) -> burn::tensor::Device {
    "cpu"
        .parse::<DeviceSpec>()
        .expect("cpu")
        .with_autodiff(autodiff)
        .device()
        .expect("cpu device")
}

/// `a [m, k] · b [k, n]` in f64, `b` given as `[n, k]` rows when `bt` (i.e. `a·bᵀ`).
fn product_f64(a: &[f64], b: &[f64], [m, k, n]: [usize; 3], bt: bool) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| a[i * k + l] * if bt { b[j * k + l] } else { b[l * n + j] })
                .sum();
        }
    }
    out
}

fn widen(v: &[f32], round: Option<HalfType>) -> Vec<f64> {
    v.iter()
        .map(|&x| f64::from(round.map_or(x, |h| h.round(x))))
        .collect()
}

/// `x` (`m` rows of `k`) as the CPU's decode products see it: rows of ggml's 32-value blocks
/// with `m ≤ 4` (`quant_matmul`'s matrix-vector path) round their f32 inputs to 8 bits per
/// 32-value block first, as llama.cpp does (`e = max|x| / 127`, `c = round(x / e)`, the input
/// taken as `e·c`); every other product (and the GPU kernels) takes `x` as it is.
fn decode_inputs(
    x: &[f32],
    ty: QuantType,
    m: usize,
    half: Option<HalfType>,
    cpu: bool,
) -> Vec<f64> {
    let rounds = cpu
        && half.is_none()
        && m <= 4
        && matches!(ty, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0);
    if !rounds {
        return widen(x, half);
    }
    x.chunks_exact(32)
        .flat_map(|b| {
            let e = b.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            let inv = if e != 0.0 { 1.0 / e } else { 0.0 };
            b.iter()
                .map(move |&v| f64::from(e) * f64::from((v * inv).round()))
        })
        .collect()
}

/// Whether the kernel tests run on the CPU (`TEMPER_TEST_DEVICE` unset or `cpu`).
fn test_device_is_cpu() -> bool {
    matches!(
        std::env::var("TEMPER_TEST_DEVICE").as_deref(),
        Err(_) | Ok("cpu")
    )
}

/// Relative max error of `got` against `want` (relative to `want`'s largest magnitude).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Forward and `∂x` of `m` rows through a `[n, k]` weight quantized to `ty`, checked against
/// f64 over the dequantised weight (operands rounded to `half` first when given) within
/// `tol` relative error.
fn check(ty: QuantType, [m, k, n]: [usize; 3], half: Option<HalfType>, tol: f64) {
    let w = values(n * k, 7, 0.5);
    let weight =
        QuantizedWeight::quantize("layers.0.mlp.up_proj.weight", &w, [n, k], ty).expect("quantize");
    check_weight(&weight, m, &device(true), true, half, tol);
}

/// [`check`] for a given weight, on the autodiff device `dev` (the CPU when `cpu`).
fn check_weight(
    weight: &QuantizedWeight,
    m: usize,
    dev: &Device,
    cpu: bool,
    half: Option<HalfType>,
    tol: f64,
) {
    let (ty, [n, k]) = (weight.quant_type(), weight.shape());
    let deq = weight.dequantize();
    let (x, g, bias) = (
        values(m * k, 8, 1.0),
        values(m * n, 9, 1.0),
        values(n, 10, 0.1),
    );

    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), dev).require_grad();
    let bt = Tensor::<1>::from_data(TensorData::new(bias.clone(), [n]), dev);
    let out = {
        let _scope = autocast(half);
        quant_linear(xt.clone(), weight, Some(bt))
    };
    let gt = Tensor::<2>::from_data(TensorData::new(g.clone(), [m, n]), dev);
    let grads = (out.clone() * gt).sum().backward();
    let dx = host(xt.grad(&grads).expect("∂x"));
    let out = host(out.inner());

    let wd = widen(&deq, half);
    let xd = decode_inputs(&x, ty, m, half, cpu);
    let mut want = product_f64(&xd, &wd, [m, k, n], true);
    want.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += f64::from(bias[i % n]));
    let want_dx = product_f64(&widen(&g, half), &wd, [m, n, k], false);
    let (e_out, e_dx) = (rel_err(&out, &want), rel_err(&dx, &want_dx));
    assert!(
        e_out < tol && e_dx < tol,
        "{ty} {:?} {half:?}: forward {e_out:.2e}, ∂x {e_dx:.2e} (tolerance {tol:.0e})",
        [m, k, n]
    );
}

/// f32 accumulation over at most a few thousand terms.
const F32_TOL: f64 = 1e-5;

#[test]
fn nf4_products_match_f64_over_the_dequantised_weight() {
    check(QuantType::Nf4, [9, 192, 37], None, F32_TOL);
}

#[test]
fn nf4_rows_that_split_blocks() {
    // 100 inputs: rows start and end inside NF4's 64-value blocks (bitsandbytes allows it).
    check(QuantType::Nf4, [6, 100, 13], None, F32_TOL);
}

#[test]
fn q8_0_products_over_several_decoded_tiles() {
    // 4 MiB tiles of f32 rows hold 256 rows of 4,096: 300 rows take two tiles.
    check(QuantType::Q8_0, [5, 4096, 300], None, F32_TOL);
}

#[test]
fn few_rows_take_the_matrix_vector_path() {
    check(QuantType::Nf4, [1, 128, 70], None, F32_TOL);
    check(QuantType::Q8_0, [3, 96, 33], None, F32_TOL);
}

/// A `[n, k]` weight of ggml blocks of `ty` made from seeded bytes, with f16 scales of a sane
/// size where the format keeps them (the K-quants' sub-block scales stay seeded bytes).
fn ggml_weight(ty: QuantType, [n, k]: [usize; 2]) -> QuantizedWeight {
    let (bb, scales_at): (usize, &[usize]) = match ty {
        QuantType::Q4_0 => (18, &[0]),
        QuantType::Q4_1 => (20, &[0, 2]),
        QuantType::Q8_0 => (34, &[0]),
        QuantType::Q4_K => (144, &[0, 2]),
        QuantType::Q6_K => (210, &[208]),
        QuantType::Nf4 => unreachable!("NF4 has no self-contained blocks"),
    };
    let blocks = n * k / ty.block_elems();
    let mut bytes: Vec<u8> = values(blocks * bb, 3, 1.0)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect();
    let scale = values(blocks * scales_at.len(), 4, 0.05);
    for (b, blk) in bytes.chunks_exact_mut(bb).enumerate() {
        for (s, &at) in scales_at.iter().enumerate() {
            let h = burn::tensor::f16::from_f32(scale[b * scales_at.len() + s]).to_bits();
            blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    QuantizedWeight::from_blocks("blk.0.ffn_up.weight", ty, bytes, [n, k]).expect("blocks")
}

/// Blocks of ggml types Temper only reads (Q4_0, Q4_1) made from seeded bytes, with f16 scales
/// of a sane size; the decode path dots the inputs with them as stored.
#[test]
fn ggml_blocks_straight_from_their_bytes() {
    for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let [n, k] = [37, 96];
        let w = ggml_weight(ty, [n, k]);
        let deq = widen(&w.dequantize(), None);
        for m in [1, 3, 6] {
            let x = values(m * k, 5, 1.0);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device(false));
            let got = host(quant_linear(xt, &w, None));
            let xd = decode_inputs(&x, ty, m, None, true);
            let want = product_f64(&xd, &deq, [m, k, n], true);
            let err = rel_err(&got, &want);
            assert!(err < F32_TOL, "{ty} m = {m}: {err:.2e}");
        }
    }
}

/// Forward and `∂x` through every encoding on `TEMPER_TEST_DEVICE`, against f64 over the
/// dequantised weight: 19 rows (two of the GPU kernels' 16-row tiles, the second partial) and
/// one (decode), 512 inputs (whole K-quant super-blocks), 37 outputs (odd, three partial
/// column tiles; `∂x`'s depth is not a multiple of 16).
#[test]
fn every_encoding_forward_and_input_gradient_on_the_test_device() {
    let dev = test_device(true);
    let [k, n] = [512, 37];
    for ty in QuantType::ALL {
        let weight = match ty {
            QuantType::Nf4 | QuantType::Q8_0 => {
                QuantizedWeight::quantize("w", &values(n * k, 7, 0.5), [n, k], ty)
                    .expect("quantize")
            }
            _ => ggml_weight(ty, [n, k]),
        };
        for m in [19, 1] {
            check_weight(&weight, m, &dev, test_device_is_cpu(), None, F32_TOL);
        }
    }
}

/// NF4 rows that start and end inside its 64-value blocks (100 inputs), on the test device:
/// the GPU layout indexes NF4's groups over the flat tensor, not per row.
#[test]
fn nf4_rows_that_split_blocks_on_the_test_device() {
    let weight =
        QuantizedWeight::quantize("w", &values(13 * 100, 7, 0.5), [13, 100], QuantType::Nf4)
            .expect("quantize");
    check_weight(
        &weight,
        6,
        &test_device(true),
        test_device_is_cpu(),
        None,
        F32_TOL,
    );
}

/// One weight (uploaded once per device, the copy shared by its clones) in products of
/// different heights, without autodiff: each result matches its reference.
#[test]
fn a_weight_reused_across_calls_on_the_test_device() {
    let weight = ggml_weight(QuantType::Q4_K, [21, 256]);
    let deq = widen(&weight.dequantize(), None);
    let dev = test_device(false);
    for (round, m) in [3usize, 17, 3].into_iter().enumerate() {
        let w = weight.clone();
        let x = values(m * 256, 20 + round as u64, 1.0);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, 256]), &dev);
        let got = host(quant_linear(xt, &w, None));
        let want = product_f64(&widen(&x, None), &deq, [m, 256, 21], true);
        let err = rel_err(&got, &want);
        assert!(err < F32_TOL, "round {round}, m = {m}: {err:.2e}");
    }
}

#[test]
fn bf16_autocast_rounds_the_decoded_weight_and_the_input() {
    for mkn in [[9, 192, 37], [2, 192, 37]] {
        check(QuantType::Nf4, mkn, Some(HalfType::Bf16), F32_TOL);
    }
    // The same product against an unrounded reference is visibly off: the test sees bf16.
    let w = values(37 * 192, 7, 0.5);
    let weight = QuantizedWeight::quantize("w", &w, [37, 192], QuantType::Nf4).expect("quantize");
    let x = values(9 * 192, 8, 1.0);
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [9, 192]), &device(false));
    let out = {
        let _scope = autocast(Some(HalfType::Bf16));
        host(quant_linear(xt, &weight, None))
    };
    let exact = product_f64(
        &widen(&x, None),
        &widen(&weight.dequantize(), None),
        [9, 192, 37],
        true,
    );
    let off = rel_err(&out, &exact);
    assert!(
        off > 1e-4,
        "bf16 products indistinguishable from f32 ({off:.2e})"
    );
}

#[test]
fn a_wrong_input_width_names_the_weight() {
    let weight = QuantizedWeight::quantize(
        "model.layers.3.self_attn.q_proj.weight",
        &values(64 * 64, 1, 1.0),
        [64, 64],
        QuantType::Q8_0,
    )
    .expect("quantize");
    let x = Tensor::<2>::from_data(
        TensorData::new(values(2 * 32, 2, 1.0), [2, 32]),
        &device(false),
    );
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quant_linear(x, &weight, None)
    }))
    .expect_err("panics");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("q_proj") && msg.contains("32"), "{msg}");
}

#[test]
fn quantizing_to_a_read_only_type_is_an_error_naming_the_tensor() {
    let err = QuantizedWeight::quantize(
        "lm_head.weight",
        &values(256, 1, 1.0),
        [1, 256],
        QuantType::Q4_K,
    )
    .expect_err("K-quants are read, not written");
    let msg = err.to_string();
    assert!(
        msg.contains("lm_head.weight") && msg.contains("q4_k"),
        "{msg}"
    );
}
