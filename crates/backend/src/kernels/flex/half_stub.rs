//! TEMPORARY stand-in for the half-precision products (replaced by `half_gemm`): rounded f32
//! copies of the operands, then the f32 gemm.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, bf16, f16};

use super::gemm;
use crate::HalfType;

pub(super) struct Operand {
    data: Vec<f32>,
    dims: [usize; 2],
}

#[derive(Clone, Copy)]
pub(super) struct StubView<'a> {
    data: &'a [f32],
    dims: [usize; 2],
    transposed: bool,
}

impl Operand {
    pub(super) fn new(t: FlexTensor) -> Self {
        let s = t.layout().shape().as_slice();
        let dims = [s[0], s[1]];
        let data = burn::tensor::Tensor::<2>::from_primitive::<burn::backend::Flex>(t)
            .cast(burn::tensor::FloatDType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let _ = DType::F32;
        Self { data, dims }
    }

    pub(super) fn view(&self, transposed: bool) -> StubView<'_> {
        StubView {
            data: &self.data,
            dims: self.dims,
            transposed,
        }
    }
}

fn rounded(v: StubView<'_>, half: HalfType) -> (Vec<f32>, [usize; 2]) {
    let [r, c] = v.dims;
    let (rows, cols) = if v.transposed { (c, r) } else { (r, c) };
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            let x = if v.transposed {
                v.data[j * c + i]
            } else {
                v.data[i * c + j]
            };
            out.push(match half {
                HalfType::Bf16 => bf16::from_f32(x).to_f32(),
                HalfType::F16 => f16::from_f32(x).to_f32(),
            });
        }
    }
    (out, [rows, cols])
}

pub(super) fn product_half(
    a: StubView<'_>,
    b: StubView<'_>,
    dims: [usize; 3],
    alpha: f32,
    half: HalfType,
) -> Vec<f32> {
    let (ra, [_, k]) = rounded(a, half);
    let (rb, [_, n]) = rounded(b, half);
    gemm::product(
        gemm::View::new(&ra, k, 1),
        gemm::View::new(&rb, n, 1),
        dims,
        alpha,
    )
}

pub(super) fn matmul_half_parallel(
    dst: &mut [f32],
    accumulate: bool,
    a: StubView<'_>,
    b: StubView<'_>,
    dims: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let (ra, [_, k]) = rounded(a, half);
    let (rb, [_, n]) = rounded(b, half);
    gemm::matmul_parallel(
        dst,
        accumulate,
        gemm::View::new(&ra, k, 1),
        gemm::View::new(&rb, n, 1),
        dims,
        alpha,
    );
}
