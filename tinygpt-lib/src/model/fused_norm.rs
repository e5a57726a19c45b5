//! LayerNorm and RMSNorm as one CPU pass each way, with hand-written backward.
//!
//! The composed formulas in [`super::norm`] (mean, subtract, square, mean, add, sqrt, divide,
//! multiply) read and write the whole `(N, C)` activation about eight times forward and twice
//! that backward; at `small`'s size that was 40 ms per norm and 13 norms per step. Here each row
//! is normalised in one go, and backward recomputes the row's statistics instead of storing them.
//!
//! For a row `x` of `C` numbers (LayerNorm; RMSNorm drops the mean, `μ = 0`):
//!
//! ```text
//! μ = mean(x)   r = 1/√(mean((x−μ)²) + ε)   x̂ = (x−μ)·r   y = x̂ ⊙ w
//! backward:  g = dy ⊙ w
//!            dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))      (RMSNorm: without the mean(g) term)
//!            dw = Σ_rows dy ⊙ x̂
//! ```
//!
//! The bias (LayerNorm only) is added after, by the caller, as an ordinary broadcast add.
//! On a CUDA GPU the same three functions run as kernels of `fused.cu` (f32 or bf16
//! activations, f32 gain and arithmetic).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{dot, par_rows, slice, sum_of, sum_over_rows, vectorized, zeros, Real};
use crate::Result;

/// Whether [`norm`] runs on this tensor: f32 or f64 on the CPU, f32 or bf16 on a CUDA GPU
/// (`fused.cu`, the same formulas, f32 arithmetic).
pub fn available(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => matches!(x.dtype(), DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => matches!(x.dtype(), DType::F32 | DType::BF16),
        _ => false,
    }
}

/// `x̂ ⊙ weight` for `x` `(…, C)` and `weight` `(C)`; `rms` picks RMSNorm over LayerNorm.
/// The gain is used (and its gradient returned) in f32 (f64 for f64 inputs) whatever `x`'s
/// dtype. Call only when [`available`].
pub fn norm(x: &Tensor, weight: &Tensor, rms: bool, eps: f64) -> Result<Tensor> {
    let op = NormOp { rms, eps };
    let w = weight.to_dtype(super::wide(x.dtype()))?;
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

#[derive(Clone, Copy)]
struct NormOp {
    rms: bool,
    eps: f64,
}

impl NormOp {
    fn forward<T: Real>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let c = w.len();
        par_rows(x.len(), c, |i, y| forward_row(self, &x[i * c..][..c], w, y))
    }

    fn backward_x<T: Real>(&self, x: &[T], w: &[T], dy: &[T]) -> Vec<T> {
        let c = w.len();
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(c)
            .zip(x.par_chunks(c).zip(dy.par_chunks(c)))
            .with_min_len(16)
            .for_each_init(
                || vec![T::zero(); 2 * c],
                |scratch, (dx, (x, dy))| backward_x_row(self, x, w, dy, dx, scratch),
            );
        dx
    }

    fn backward_w<T: Real>(&self, x: &[T], dy: &[T], c: usize) -> Vec<T> {
        sum_over_rows(x.len() / c, c, |row, acc| {
            let (x, dy) = (&x[row * c..(row + 1) * c], &dy[row * c..(row + 1) * c]);
            backward_w_row(self, x, dy, acc)
        })
    }
}

/// The row's `(μ, r)` (`μ = 0` for RMSNorm). Sums in eight lanes, so that they vectorize.
#[inline(always)]
fn stats<T: Real>(op: &NormOp, x: &[T]) -> (T, T) {
    let n = T::from_f64(x.len() as f64);
    let mean = if op.rms {
        T::zero()
    } else {
        sum_of(x, |a| a) / n
    };
    let var = sum_of(x, |a| (a - mean) * (a - mean)) / n;
    (mean, T::one() / (var + T::from_f64(op.eps)).sqrt())
}

/// `y = x̂ ⊙ w` for one row.
#[inline(always)]
fn forward_row_scalar<T: Real>(op: &NormOp, x: &[T], w: &[T], y: &mut [T]) {
    let (mean, r) = stats(op, x);
    for ((y, &a), &w) in y.iter_mut().zip(x).zip(w) {
        *y = (a - mean) * r * w;
    }
}

/// `dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))` for one row; `scratch` holds `2·C` numbers.
#[inline(always)]
fn backward_x_row_scalar<T: Real>(
    op: &NormOp,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: &mut [T],
    scratch: &mut [T],
) {
    let c = x.len();
    let n = T::from_f64(c as f64);
    let (mean, r) = stats(op, x);
    let (g, x_hat) = scratch.split_at_mut(c);
    for ((g, &d), &w) in g.iter_mut().zip(dy).zip(w) {
        *g = d * w;
    }
    for (h, &a) in x_hat.iter_mut().zip(x) {
        *h = (a - mean) * r;
    }
    let mean_g = if op.rms {
        T::zero()
    } else {
        sum_of(g, |a| a) / n
    };
    let mean_gx = dot(g, x_hat) / n;
    for ((dx, &g), &h) in dx.iter_mut().zip(g.iter()).zip(x_hat.iter()) {
        *dx = r * (g - mean_g - h * mean_gx);
    }
}

/// `acc += dy ⊙ x̂` for one row.
#[inline(always)]
fn backward_w_row_scalar<T: Real>(op: &NormOp, x: &[T], dy: &[T], acc: &mut [T]) {
    let (mean, r) = stats(op, x);
    for ((s, &a), &d) in acc.iter_mut().zip(x).zip(dy) {
        *s += d * (a - mean) * r;
    }
}

vectorized!(forward_row, (op: &NormOp, x: &[T], w: &[T], y: &mut [T]) -> (), forward_row_scalar(op, x, w, y));
vectorized!(backward_x_row, (op: &NormOp, x: &[T], w: &[T], dy: &[T], dx: &mut [T], scratch: &mut [T]) -> (), backward_x_row_scalar(op, x, w, dy, dx, scratch));
vectorized!(backward_w_row, (op: &NormOp, x: &[T], dy: &[T], acc: &mut [T]) -> (), backward_w_row_scalar(op, x, dy, acc));

impl CustomOp2 for NormOp {
    fn name(&self) -> &'static str {
        "tinygpt-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(slice(s1, l1)?, slice(s2, l2)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(slice(s1, l1)?, slice(s2, l2)?)),
            _ => candle_core::bail!("norm: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::norm_forward((s1, l1), (s2, l2), self.rms, self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &dy, &NormBackwardX(*self))?;
        let dw = x.apply_op2_no_bwd(&dy, &NormBackwardW(*self))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx` from `x`, `w` and `dy`.
struct NormBackwardX(NormOp);

impl CustomOp3 for NormBackwardX {
    fn name(&self) -> &'static str {
        "tinygpt-norm-backward-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(op.backward_x(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(op.backward_x(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?))
            }
            _ => candle_core::bail!("norm backward: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let op = &self.0;
        super::fused_cuda::norm_backward_x((s1, l1), (s2, l2), (s3, l3), op.rms, op.eps)
    }
}

/// `dw` `(C)` from `x` and `dy`.
struct NormBackwardW(NormOp);

impl CustomOp2 for NormBackwardW {
    fn name(&self) -> &'static str {
        "tinygpt-norm-backward-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = *l1.dims().last().unwrap_or(&1);
        let op = &self.0;
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(op.backward_w(slice(s1, l1)?, slice(s2, l2)?, c)),
            CpuStorage::F64(_) => CpuStorage::F64(op.backward_w(slice(s1, l1)?, slice(s2, l2)?, c)),
            _ => candle_core::bail!("norm backward: f32 or f64 only"),
        };
        Ok((out, Shape::from(c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::norm_backward_w((s1, l1), (s2, l2), self.0.rms, self.0.eps)
    }
}
