//! Products with a block-quantized frozen weight `W` `[n, k]` on the CubeCL backends, decoding
//! `W` inside the kernel: `y = x·Wᵀ` and `∂x = ∂y·W`. No dense copy of `W` exists on the
//! device, only its `Groups` layout (codes packed in `u32` words, a scale and maybe an offset
//! per group, a code table), uploaded once per weight and device and kept with the weight
//! ([`QuantizedWeight::device_copy`]): 4.5–10 bits a weight by encoding, see
//! `crate::quant::groups`.
//!
//! One kernel serves both products: `out[m, cols] = a[m, depth] · B`, with `B[d, c] = W[c, d]`
//! (forward, `depth = k`, `cols = n`) or `W[d, c]` (backward, `depth = n`, `cols = k`). A cube
//! of `TILE × TILE` units computes a `TILE × TILE` output tile; per step over the depth each
//! unit stages one value of `a` and decodes one value of `W` into shared memory (each weight
//! value is decoded once per cube, for `TILE` output rows), then accumulates `TILE` products
//! in f32. The loops stay rolled (lavapipe: see `unroll_head_dim` in the parent module).
//!
//! Inputs are f32 (`quant_linear` casts activations to f32) and products are f32: the `half`
//! argument of [`QuantOps`] is not applied here, as the other CubeCL kernels compute in their
//! inputs' dtype.

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::{DType, Shape, TensorData};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};

use super::{cube_count, dims, empty};
use crate::HalfType;
use crate::kernels::QuantOps;
use crate::quant::QuantizedWeight;

/// Output rows and columns per cube, and depth per staged step.
const TILE: usize = 16;

/// A weight's [`Groups`](crate::quant::groups::Groups) on one device.
struct DeviceGroups {
    device: CubeDevice,
    bits: u32,
    group: usize,
    codes: CubeTensor,
    scales: CubeTensor,
    /// The scales again when the encoding has no offsets (the kernel then never reads them).
    offsets: CubeTensor,
    with_offset: bool,
    lut: CubeTensor,
}

/// `weight`'s groups on `device`, uploaded on first use.
fn device_groups(weight: &QuantizedWeight, device: &CubeDevice) -> std::sync::Arc<DeviceGroups> {
    weight.device_copy(
        |g: &DeviceGroups| g.device == *device,
        || {
            let g = weight.groups();
            let f32s = |v: Vec<f32>| {
                let len = v.len();
                CubeBackend::float_from_data(TensorData::new(v, [len]), device)
            };
            let words = g.codes.len();
            let codes = CubeBackend::int_from_data(TensorData::new(g.codes, [words]), device);
            let scales = f32s(g.scales);
            let (offsets, with_offset) = match g.offsets {
                Some(o) => (f32s(o), true),
                None => (scales.clone(), false),
            };
            DeviceGroups {
                device: device.clone(),
                bits: g.bits,
                group: g.group,
                codes,
                scales,
                offsets,
                with_offset,
                lut: f32s(g.lut),
            }
        },
    )
}

/// `W[e]` (flat row-major index) from the groups, the code table staged in `lut`.
#[cube]
fn weight_at(
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    offsets: &Tensor<f32>,
    lut: &Shared<[f32]>,
    e: usize,
    #[comptime] bits: u32,
    #[comptime] group: usize,
    #[comptime] with_offset: bool,
) -> f32 {
    let per_word = comptime!((32 / bits) as usize);
    let mask = comptime!((1u32 << bits) - 1);
    let word = codes[e / per_word];
    let shift = u32::cast_from(e % per_word) * bits;
    let code = (word >> shift) & mask;
    let g = e / group;
    let mut v = scales[g] * lut[usize::cast_from(code)];
    if comptime!(with_offset) {
        v += offsets[g];
    }
    v
}

/// `out[m, cols] = a[m, depth] · B` with `B` the weight decoded from its groups, read as
/// `B[d, c] = W[c, d]` when `transposed` (the forward) or `W[d, c]` (`∂x`); `W`'s rows are
/// `a.shape(1)` long when `transposed`, `out.shape(1)` otherwise.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub(super) fn quant_product_kernel(
    a: &Tensor<f32>,
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    offsets: &Tensor<f32>,
    lut: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] bits: u32,
    #[comptime] group: usize,
    #[comptime] with_offset: bool,
    #[comptime] transposed: bool,
) {
    let (m, depth, cols) = (a.shape(0), a.shape(1), out.shape(1));
    let col_tiles = cols.div_ceil(TILE);
    let cube = CUBE_POS;
    if cube >= col_tiles * m.div_ceil(TILE) {
        terminate!();
    }
    let (row0, col0) = ((cube / col_tiles) * TILE, (cube % col_tiles) * TILE);
    let unit = UNIT_POS as usize;
    let (ty, tx) = (unit / TILE, unit % TILE);
    let row_len = if comptime!(transposed) { depth } else { cols };

    // The code table (16 or 256 values), one value per unit.
    let mut lut_s = Shared::<[f32]>::new_slice(comptime!(1usize << bits));
    if unit < lut.len() {
        lut_s[unit] = lut[unit];
    }
    sync_cube();

    let mut a_tile = Shared::<[f32]>::new_slice(TILE * TILE);
    let mut b_tile = Shared::<[f32]>::new_slice(TILE * TILE);
    let mut acc = 0.0f32;
    let mut d0 = 0;
    while d0 < depth {
        // a[row0 + ty, d0 + tx] → a_tile[ty][tx] (consecutive units read consecutive values).
        let (r, d) = (row0 + ty, d0 + tx);
        let mut av = 0.0f32;
        if r < m && d < depth {
            av = a[r * depth + d];
        }
        a_tile[ty * TILE + tx] = av;
        // B[depth, col] → b_tile[depth][col], reading W along its rows in both cases.
        let mut bv = 0.0f32;
        if comptime!(transposed) {
            // Unit (ty, tx) decodes W[col0 + ty, d0 + tx] = B[d0 + tx, col0 + ty].
            let (c, d) = (col0 + ty, d0 + tx);
            if c < cols && d < depth {
                bv = weight_at(
                    codes,
                    scales,
                    offsets,
                    &lut_s,
                    c * row_len + d,
                    bits,
                    group,
                    with_offset,
                );
            }
            b_tile[tx * TILE + ty] = bv;
        } else {
            // Unit (ty, tx) decodes W[d0 + ty, col0 + tx] = B[d0 + ty, col0 + tx].
            let (d, c) = (d0 + ty, col0 + tx);
            if c < cols && d < depth {
                bv = weight_at(
                    codes,
                    scales,
                    offsets,
                    &lut_s,
                    d * row_len + c,
                    bits,
                    group,
                    with_offset,
                );
            }
            b_tile[ty * TILE + tx] = bv;
        }
        sync_cube();
        for t in 0..TILE {
            acc += a_tile[ty * TILE + t] * b_tile[t * TILE + tx];
        }
        sync_cube();
        d0 += TILE;
    }
    let (r, c) = (row0 + ty, col0 + tx);
    if r < m && c < cols {
        out[r * cols + c] = acc;
    }
}

/// `a` as a contiguous f32 `[rows, width]` tensor, checked against the weight's side.
fn f32_operand(a: CubeTensor, width: usize, weight: &QuantizedWeight, what: &str) -> CubeTensor {
    let a = if a.dtype == DType::F32 {
        a
    } else {
        CubeBackend::float_cast(a, burn::tensor::FloatDType::F32)
    };
    let a = into_contiguous(a);
    let shape = a.meta.shape().clone();
    assert!(
        shape.num_dims() == 2 && shape[1] == width,
        "{weight:?}: {what} is {shape:?}, expected [m, {width}]"
    );
    a
}

/// `out[m, cols] = a · B` (see [`quant_product_kernel`]).
fn product(a: CubeTensor, weight: &QuantizedWeight, transposed: bool) -> CubeTensor {
    let [n, k] = weight.shape();
    let (depth, cols) = if transposed { (k, n) } else { (n, k) };
    let a = f32_operand(a, depth, weight, if transposed { "x" } else { "∂y" });
    let [m, _] = dims::<2>(&a);
    let out = empty(&a, Shape::new([m, cols]), DType::F32);
    if m == 0 || cols == 0 {
        return out;
    }
    let g = device_groups(weight, &a.device);
    quant_product_kernel::launch(
        &a.client,
        cube_count(m.div_ceil(TILE) * cols.div_ceil(TILE)),
        CubeDim::new_1d((TILE * TILE) as u32),
        a.clone().into_tensor_arg(),
        g.codes.clone().into_tensor_arg(),
        g.scales.clone().into_tensor_arg(),
        g.offsets.clone().into_tensor_arg(),
        g.lut.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        g.bits,
        g.group,
        g.with_offset,
        transposed,
    );
    out
}

impl QuantOps for CubeBackend {
    fn quant_matmul(x: CubeTensor, weight: QuantizedWeight, _half: Option<HalfType>) -> CubeTensor {
        product(x, &weight, true)
    }

    fn quant_matmul_backward(
        grad: CubeTensor,
        weight: QuantizedWeight,
        _half: Option<HalfType>,
    ) -> CubeTensor {
        product(grad, &weight, false)
    }
}
