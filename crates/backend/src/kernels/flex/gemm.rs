//! One strided f32 gemm call behind a bounds-checked view, for the CPU kernels.

/// A strided read-only matrix: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// The same matrix read transposed.
    pub(super) fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The view starting at row `r0` (`r0` inside the data).
    pub(super) fn rows_from(self, r0: usize) -> Self {
        Self {
            data: &self.data[r0 * self.rs..],
            ..self
        }
    }

    /// The view starting at column `c0` (`c0` inside the data).
    pub(super) fn cols_from(self, c0: usize) -> Self {
        Self {
            data: &self.data[c0 * self.cs..],
            ..self
        }
    }

    /// Panics unless every element of a `rows × cols` view lies inside `data`.
    fn check(&self, rows: usize, cols: usize) {
        assert!(
            (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len(),
            "gemm: a {rows}×{cols} view (strides {}, {}) overruns {} elements",
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `dst[m, n]` (row-major, contiguous) `= (accumulate ? dst : 0) + alpha · lhs[m, k] · rhs[k, n]`
/// on this thread (callers that run many in parallel tasks).
pub(super) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    mkn: [usize; 3],
    alpha: f32,
) {
    gemm_into(
        dst,
        accumulate,
        lhs,
        rhs,
        mkn,
        alpha,
        gemm::Parallelism::None,
    )
}

/// [`matmul`] split over rayon's threads when the product is large enough to pay for it
/// (burn-flex's threshold: 192³ multiply-adds).
pub(super) fn matmul_parallel(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    let par = if m.saturating_mul(k).saturating_mul(n) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    gemm_into(dst, accumulate, lhs, rhs, [m, k, n], alpha, par)
}

fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "gemm: output buffer too small");
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|x| *x = 0.0);
        }
        return;
    }
    lhs.check(m, k);
    rhs.check(k, n);
    #[allow(unsafe_code)]
    // SAFETY: `check` proved every element the strides address lies inside `lhs.data` and
    // `rhs.data`, and `dst` holds the contiguous `m × n` output; `dst` is a unique borrow, so
    // it cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}
