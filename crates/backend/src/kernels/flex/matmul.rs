//! [`MatmulOps`] on Flex: f32 products through gemm called directly, and products whose
//! operands are rounded to a half type (autocast, or a bf16/f16-stored operand) with f32
//! accumulation.
//!
//! Output dtype: f32, except when both operands are stored in the same half type (pure bf16 or
//! f16 runs), where the f32 result is rounded once to it — burn's rule for same-dtype matmuls.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, FloatDType, Shape, TensorData, bf16, f16};

use super::half_gemm::{self, HalfView};
use super::{gemm, primitive, tensor, view_2d};
use crate::HalfType;
use crate::kernels::MatmulOps;

/// The half type a product rounds its operands to: the requested one (autocast), else the
/// type an operand is stored in.
fn effective_half(requested: Option<HalfType>, operands: [&FlexTensor; 2]) -> Option<HalfType> {
    requested.or_else(|| operands.iter().find_map(|t| half_of(t.dtype())))
}

fn half_of(dtype: DType) -> Option<HalfType> {
    match dtype {
        DType::BF16 => Some(HalfType::Bf16),
        DType::F16 => Some(HalfType::F16),
        _ => None,
    }
}

/// The dtype a product of `lhs` and `rhs` is returned in (see the module docs).
fn output_dtype(lhs: DType, rhs: DType) -> DType {
    if lhs == rhs && half_of(lhs).is_some() {
        lhs
    } else {
        DType::F32
    }
}

fn op(t: FlexTensor, transpose: bool) -> burn::tensor::Tensor<2> {
    let t = tensor::<2>(t);
    if transpose { t.transpose() } else { t }
}

/// Dimensions `[m, k, n]` of `op(lhs) · op(rhs)`, checked.
fn product_dims(lhs: &FlexTensor, rhs: &FlexTensor, tl: bool, tr: bool) -> [usize; 3] {
    let dims = |t: &FlexTensor| {
        let s = t.layout().shape().as_slice();
        assert_eq!(s.len(), 2, "matmul: operands must be 2-D, got {s:?}");
        [s[0], s[1]]
    };
    let ([m, k], [k2, n]) = (dims(lhs), dims(rhs));
    let (m, k) = if tl { (k, m) } else { (m, k) };
    let (k2, n) = if tr { (n, k2) } else { (k2, n) };
    assert_eq!(
        k, k2,
        "matmul: inner dimensions differ ([{m}, {k}] · [{k2}, {n}])"
    );
    [m, k, n]
}

/// A 2-D f32, bf16 or f16 tensor as a strided view of its storage, without copying; `None`
/// for other ranks or dtypes and for negative strides.
pub(super) fn half_view(t: &FlexTensor) -> Option<HalfView<'_>> {
    let layout = t.layout();
    let (dims, strides) = (layout.shape().as_slice(), layout.strides());
    if dims.len() != 2 || strides.iter().any(|s| *s < 0) {
        return None;
    }
    let (rs, cs, start) = (
        strides[0] as usize,
        strides[1] as usize,
        layout.start_offset(),
    );
    Some(match t.dtype() {
        DType::F32 => HalfView::f32(&t.storage::<f32>()[start..], rs, cs),
        DType::BF16 => HalfView::bf16(&t.storage::<bf16>()[start..], rs, cs),
        DType::F16 => HalfView::f16(&t.storage::<f16>()[start..], rs, cs),
        _ => return None,
    })
}

/// `t` as a tensor [`half_view`] takes: as it is, or a contiguous f32 copy (negative strides,
/// another float dtype).
fn viewable(t: FlexTensor) -> FlexTensor {
    if half_view(&t).is_some() {
        return t;
    }
    let t = if matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        t
    } else {
        cast_to(t, DType::F32)
    };
    let t = t.to_contiguous();
    if half_view(&t).is_some() {
        t
    } else {
        unreachable!("a contiguous 2-D float tensor has a view")
    }
}

/// The view of `op(t)`.
fn op_view(t: &FlexTensor, transpose: bool) -> HalfView<'_> {
    let Some(v) = half_view(t) else {
        unreachable!("`viewable` tensors have a view")
    };
    if transpose { v.t() } else { v }
}

/// `op(lhs) · op(rhs)` with operands rounded to `half`, accumulated in f32.
fn half_product(
    lhs: FlexTensor,
    rhs: FlexTensor,
    tl: bool,
    tr: bool,
    half: HalfType,
) -> FlexTensor {
    let out_dtype = output_dtype(lhs.dtype(), rhs.dtype());
    let dims = product_dims(&lhs, &rhs, tl, tr);
    let (lhs, rhs) = (viewable(lhs), viewable(rhs));
    let (a, b) = (op_view(&lhs, tl), op_view(&rhs, tr));
    let out = FlexTensor::from_data(TensorData::new(
        half_gemm::product_half(a, b, dims, 1.0, half),
        Shape::new([dims[0], dims[2]]),
    ));
    cast_to(out, out_dtype)
}

/// A 2-D tensor in `dtype` (f32 for anything but bf16 and f16).
pub(super) fn cast_to(t: FlexTensor, dtype: DType) -> FlexTensor {
    if t.dtype() == dtype {
        return t;
    }
    let float = match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        _ => FloatDType::F32,
    };
    primitive(tensor::<2>(t).cast(float))
}

impl MatmulOps for Flex {
    fn matmul_t(
        lhs: FlexTensor,
        rhs: FlexTensor,
        transpose_lhs: bool,
        transpose_rhs: bool,
        half: Option<HalfType>,
    ) -> FlexTensor {
        if let Some(half) = effective_half(half, [&lhs, &rhs]) {
            return half_product(lhs, rhs, transpose_lhs, transpose_rhs, half);
        }
        let (lhs, rhs) = match (view_2d(&lhs), view_2d(&rhs)) {
            (Some(_), Some(_)) => (lhs, rhs),
            // Negative strides or another dtype: burn's matmul on (transposed) tensors.
            _ if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 => {
                return primitive(op(lhs, transpose_lhs).matmul(op(rhs, transpose_rhs)));
            }
            _ => (lhs.to_contiguous(), rhs.to_contiguous()),
        };
        let [m, k, n] = product_dims(&lhs, &rhs, transpose_lhs, transpose_rhs);
        let (Some((a, _)), Some((b, _))) = (view_2d(&lhs), view_2d(&rhs)) else {
            unreachable!("contiguous 2-D f32 tensors have a view")
        };
        let a = if transpose_lhs { a.t() } else { a };
        let b = if transpose_rhs { b.t() } else { b };
        FlexTensor::from_data(TensorData::new(
            gemm::product(a, b, [m, k, n], 1.0),
            Shape::new([m, n]),
        ))
    }

    fn matmul_t_add(
        acc: FlexTensor,
        lhs: FlexTensor,
        rhs: FlexTensor,
        transpose_lhs: bool,
        transpose_rhs: bool,
        alpha: f64,
        half: Option<HalfType>,
    ) -> FlexTensor {
        let half = effective_half(half, [&lhs, &rhs]);
        let [m, k, n] = product_dims(&lhs, &rhs, transpose_lhs, transpose_rhs);
        let acc_dims = acc.layout().shape().as_slice().to_vec();
        if acc_dims != [m, n] || acc.dtype() != DType::F32 {
            // Not an f32 accumulator of the product's shape: a separate product and a sum.
            let p = Self::matmul_t(lhs, rhs, transpose_lhs, transpose_rhs, half);
            let p = cast_to(p, acc.dtype());
            return primitive(tensor::<2>(acc) + tensor::<2>(p) * alpha);
        }
        // In place when `acc` is the only owner of a contiguous buffer (a fresh product is),
        // else into a copy.
        let mut acc = if acc.is_contiguous() && acc.layout().start_offset() == 0 {
            acc
        } else {
            acc.to_contiguous()
        };
        if let Some(half) = half {
            let (lhs, rhs) = (viewable(lhs), viewable(rhs));
            let (a, b) = (op_view(&lhs, transpose_lhs), op_view(&rhs, transpose_rhs));
            let out = acc.storage_mut::<f32>();
            half_gemm::matmul_half_parallel(
                &mut out[..m * n],
                true,
                a,
                b,
                [m, k, n],
                alpha as f32,
                half,
            );
            return acc;
        }
        let (lhs, rhs) = match (view_2d(&lhs), view_2d(&rhs)) {
            (Some(_), Some(_)) => (lhs, rhs),
            _ => (lhs.to_contiguous(), rhs.to_contiguous()),
        };
        let (Some((a, _)), Some((b, _))) = (view_2d(&lhs), view_2d(&rhs)) else {
            let p = Self::matmul_t(lhs, rhs, transpose_lhs, transpose_rhs, None);
            return primitive(tensor::<2>(acc) + tensor::<2>(p) * alpha);
        };
        let a = if transpose_lhs { a.t() } else { a };
        let b = if transpose_rhs { b.t() } else { b };
        let out = acc.storage_mut::<f32>();
        gemm::matmul_parallel(&mut out[..m * n], true, a, b, [m, k, n], alpha as f32);
        acc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn same_half_operands_keep_their_dtype_others_give_f32() {
        assert_eq!(output_dtype(DType::BF16, DType::BF16), DType::BF16);
        assert_eq!(output_dtype(DType::F32, DType::BF16), DType::F32);
        assert_eq!(output_dtype(DType::F16, DType::BF16), DType::F32);
        assert_eq!(output_dtype(DType::F32, DType::F32), DType::F32);
    }
}
