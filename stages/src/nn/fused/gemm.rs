//! Strided f32 matrix views and the one call into the `gemm` crate (the kernel candle's own CPU
//! matmul uses), so the fused ops can multiply transposed and per-head views without copies.

use gemm::Parallelism;

/// A read-only strided matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

/// A writable strided matrix view.
pub(super) struct MatMut {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: isize,
}

/// Largest element offset a (rows × cols, rs, cs) view touches, or None for an empty view.
fn max_offset(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    (rows > 0 && cols > 0).then(|| (rows - 1) * rs + (cols - 1) * cs)
}

impl Mat {
    /// View into `data` starting at `offset`; panics if the view leaves the slice (a bug in
    /// the caller's shape arithmetic, never user input).
    pub(super) fn new(
        data: &[f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        if let Some(m) = max_offset(rows, cols, rs, cs) {
            assert!(offset + m < data.len(), "matrix view out of bounds");
        }
        Self {
            ptr: data[offset..].as_ptr(),
            rows,
            cols,
            rs: rs as isize,
            cs: cs as isize,
        }
    }

    /// The transposed view (no copy).
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl MatMut {
    pub(super) fn new(
        data: &mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
    ) -> Self {
        if let Some(m) = max_offset(rows, cols, rs, 1) {
            assert!(offset + m < data.len(), "matrix view out of bounds");
        }
        Self {
            ptr: data[offset..].as_mut_ptr(),
            rows,
            cols,
            rs: rs as isize,
        }
    }

    /// A view through a raw pointer, for tasks writing disjoint blocks of one buffer.
    ///
    /// # Safety
    /// `ptr` must be valid for writes over the whole view, and no other live view may write (or
    /// read) the elements this one covers while it is used.
    pub(super) unsafe fn from_raw(ptr: *mut f32, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            ptr,
            rows,
            cols,
            rs: rs as isize,
        }
    }
}

/// `dst ← [dst +] scale · lhs · rhs` (f32 accumulation). `parallel` splits the output over the
/// rayon pool (each output element is reduced by one thread, in the kernel's fixed blocking
/// order); per-head calls inside a parallel loop pass false.
pub(super) fn matmul(
    dst: &mut MatMut,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    parallel: bool,
) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "matmul shape mismatch: ({}×{})·({}×{}) → ({}×{})",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols,
        dst.rows,
        dst.cols
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let par = if parallel && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the views were bounds-checked at construction (or promised by `from_raw`), dst is
    // an exclusive borrow, and gemm reads lhs/rhs and writes dst only within those views.
    unsafe {
        gemm::gemm(
            dst.rows, dst.cols, lhs.cols, dst.ptr, 1, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs,
            rhs.ptr, rhs.cs, rhs.rs, 1.0, scale, false, false, false, par,
        );
    }
}
