//! tinygpt's patch: f32 matrix products through Intel MKL's `cblas_sgemm` (feature `mkl-sgemm`).
//!
//! MKL is linked in its sequential (single-threaded) form: each of rayon's threads (the threads
//! that run gemm's kernels without this feature) computes a band of the output's rows with one
//! call. No OpenMP runtime is involved, so no OpenMP threads spin between products and take the
//! cores that candle's element-wise operations and tinygpt's kernels run on (also rayon's).
//!
//! This crate only declares `cblas_sgemm`: the final binary must link MKL's static libraries
//! `mkl_intel_lp64`, `mkl_sequential` and `mkl_core` (tinygpt's `build.rs` does, from the folder
//! `scripts/mkl-env.sh setup` fills).
use std::ffi::c_int;
use std::mem::MaybeUninit;

use rayon::prelude::*;

extern "C" {
    fn cblas_sgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// Bands narrower than this many rows are not worth a thread of their own.
const MIN_ROWS_PER_BAND: usize = 32;

/// A `(rows, cols)` matrix with element strides `(rs, cs)` as BLAS reads it: row-major with
/// leading dimension `ld` (`NO_TRANS`), or the transpose of a row-major `(cols, rows)` matrix
/// (`TRANS`). `None` when neither stride is 1: gemm handles such layouts.
fn blas_view(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(c_int, usize)> {
    if cs == 1 && (rows == 1 || rs >= cols) {
        Some((NO_TRANS, if rows == 1 { cols } else { rs }))
    } else if rs == 1 && (cols == 1 || cs >= rows) {
        Some((TRANS, if cols == 1 { rows } else { cs }))
    } else {
        None
    }
}

/// `dst (m, n) = lhs (m, k) · rhs (k, n)`, `dst` row-major and contiguous, its `m * n` elements
/// written without being read. Returns `false`, having written nothing, when an operand's
/// layout is not one BLAS takes or a size does not fit BLAS's 32-bit integers.
///
/// # Safety
/// `lhs` and `rhs` must be valid for the strides given, `dst` for `m * n` writes.
pub(super) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    dst: *mut MaybeUninit<f32>,
) -> bool {
    let (Some((trans_a, lda)), Some((trans_b, ldb))) = (
        blas_view(m, k, lhs_rs, lhs_cs),
        blas_view(k, n, rhs_rs, rhs_cs),
    ) else {
        return false;
    };
    let fits = |x: usize| x <= c_int::MAX as usize;
    if m == 0 || n == 0 || k == 0 || ![m, n, k, lda, ldb].into_iter().all(fits) {
        return false;
    }
    // A band of rows starts `lhs_rs` elements further per row, in either view (for `TRANS`,
    // lhs_rs is 1: the band is a range of the transposed matrix's columns).
    let threads = rayon::current_num_threads().min(m / MIN_ROWS_PER_BAND).max(1);
    let band = m.div_ceil(threads);
    let (lhs, rhs) = (lhs as usize, rhs as usize); // addresses, to share them with rayon's threads
    let dst = std::slice::from_raw_parts_mut(dst, m * n);
    dst.par_chunks_mut(band * n)
        .enumerate()
        .for_each(|(i, dst_band)| {
            let rows = dst_band.len() / n;
            // SAFETY: the band's rows of lhs exist (i * band + rows <= m); dst_band is this
            // thread's own part of dst.
            cblas_sgemm(
                ROW_MAJOR,
                trans_a,
                trans_b,
                rows as c_int,
                n as c_int,
                k as c_int,
                1.0,
                (lhs as *const f32).add(i * band * lhs_rs),
                lda as c_int,
                rhs as *const f32,
                ldb as c_int,
                0.0,
                dst_band.as_mut_ptr() as *mut f32,
                n as c_int,
            )
        });
    true
}
