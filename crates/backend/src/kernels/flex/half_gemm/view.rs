//! The operands of a half-precision product: a strided matrix over f32, bf16 or f16 storage,
//! and the rounding of one value to the half type the product computes in.

use burn::tensor::{bf16, f16};

pub(in crate::kernels::flex) use crate::HalfType;

/// The bf16 nearest to `x` (ties to even), as its bits; a NaN stays a (quiet) NaN, values
/// past bf16's largest finite one round to ±inf. Bit for bit `half::bf16::from_f32`, written
/// out so that the packing loops and the vector version in `pack` share one definition.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) as u16) | 0x0040;
    }
    // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    // dropped half is above the midpoint, or at it with an odd kept part. No overflow: the
    // largest non-NaN pattern, -inf (0xff80_0000), leaves room.
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// An operand's storage, borrowed.
#[derive(Clone, Copy)]
pub(in crate::kernels::flex) enum HalfData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> HalfData<'a> {
    fn type_name(self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::Bf16(_) => "bf16",
            Self::F16(_) => "f16",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::F32(d) => d.len(),
            Self::Bf16(d) => d.len(),
            Self::F16(d) => d.len(),
        }
    }

    /// The data from element `start` on (panics past the end, like slicing).
    fn from(self, start: usize) -> Self {
        match self {
            Self::F32(d) => Self::F32(&d[start..]),
            Self::Bf16(d) => Self::Bf16(&d[start..]),
            Self::F16(d) => Self::F16(&d[start..]),
        }
    }

    /// Element `i`, widened to f32 (exact).
    #[inline]
    pub(super) fn get(self, i: usize) -> f32 {
        match self {
            Self::F32(d) => d[i],
            Self::Bf16(d) => d[i].to_f32(),
            Self::F16(d) => d[i].to_f32(),
        }
    }
}

/// A strided read-only matrix over f32, bf16 or f16 storage: element `(i, j)` at
/// `data[i·rs + j·cs]`. The element-type-erased counterpart of `gemm::View`, with the same
/// constructors' shape and the same `t`, `rows_from`, `cols_from`.
#[derive(Clone, Copy)]
pub(in crate::kernels::flex) struct HalfView<'a> {
    data: HalfData<'a>,
    rs: usize,
    cs: usize,
}

/// The element type, length and strides (not the elements).
impl std::fmt::Debug for HalfView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HalfView({} × {}, strides {}, {})",
            self.data.type_name(),
            self.data.len(),
            self.rs,
            self.cs
        )
    }
}

impl<'a> HalfView<'a> {
    pub(in crate::kernels::flex) fn new(data: HalfData<'a>, rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// An f32 matrix (rounded to the half type when a product reads it).
    pub(in crate::kernels::flex) fn f32(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self::new(HalfData::F32(data), rs, cs)
    }

    pub(in crate::kernels::flex) fn bf16(data: &'a [bf16], rs: usize, cs: usize) -> Self {
        Self::new(HalfData::Bf16(data), rs, cs)
    }

    pub(in crate::kernels::flex) fn f16(data: &'a [f16], rs: usize, cs: usize) -> Self {
        Self::new(HalfData::F16(data), rs, cs)
    }

    /// The same matrix read transposed.
    pub(in crate::kernels::flex) fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The view starting at row `r0` (`r0` inside the data).
    pub(in crate::kernels::flex) fn rows_from(self, r0: usize) -> Self {
        Self {
            data: self.data.from(r0 * self.rs),
            ..self
        }
    }

    /// The view starting at column `c0` (`c0` inside the data).
    pub(in crate::kernels::flex) fn cols_from(self, c0: usize) -> Self {
        Self {
            data: self.data.from(c0 * self.cs),
            ..self
        }
    }

    /// The f32 gemm's view of the same matrix, when it is stored in f32.
    pub(in crate::kernels::flex) fn as_f32(self) -> Option<super::super::gemm::View<'a>> {
        match self.data {
            HalfData::F32(d) => Some(super::super::gemm::View::new(d, self.rs, self.cs)),
            _ => None,
        }
    }

    /// The half type the matrix is stored in, if any.
    pub(in crate::kernels::flex) fn stored_half(self) -> Option<HalfType> {
        match self.data {
            HalfData::F32(_) => None,
            HalfData::Bf16(_) => Some(HalfType::Bf16),
            HalfData::F16(_) => Some(HalfType::F16),
        }
    }

    pub(super) fn data(self) -> HalfData<'a> {
        self.data
    }

    pub(super) fn strides(self) -> [usize; 2] {
        [self.rs, self.cs]
    }

    /// Element `(i, j)` as stored, widened to f32 (exact; panics outside the data).
    #[inline]
    pub(super) fn get(self, i: usize, j: usize) -> f32 {
        self.data.get(i * self.rs + j * self.cs)
    }

    /// Panics unless every element of a `rows × cols` view lies inside the data (an empty
    /// view addresses nothing).
    pub(super) fn check(self, rows: usize, cols: usize) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .zip((cols - 1).checked_mul(self.cs))
            .and_then(|(r, c)| r.checked_add(c));
        assert!(
            last.is_some_and(|l| l < self.data.len()),
            "half gemm: a {rows}×{cols} view (strides {}, {}) overruns {} elements",
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}
