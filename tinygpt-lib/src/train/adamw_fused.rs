//! AdamW's update as in-place passes over the numbers, instead of a dozen tensor operations
//! per weight that each allocate a new tensor (a hundred-odd weights, every step): what matters on
//! a GPU, where each operation is a kernel launch, and still helps on the CPU.
//!
//! ```text
//! m ← β1·m + (1−β1)·(s·g)                          (Moments: one pass over every weight's
//! v ← β2·v + (1−β2)·(s·g)²                          numbers at once; s: the clipping factor)
//! θ ← θ·decay − step · m / (√v / √(1−β2ᵗ) + ε)     (Update, per weight; decay = 1 − η·λ,
//!                                                   step = η / (1−β1ᵗ))
//! ```
//!
//! The same formulas, in the same order, as [`super::optim`]'s description; f32 and f64 on the
//! CPU, f32 on CUDA (`model/fused.cu`). `Moments` works on the moments of all weights laid end to
//! end, `(2, N)` (row 0: m, row 1: v), and the gradients laid end to end the same way, `(N)`:
//! one launch for all of them; each weight's `Update` reads its own stretch of both rows.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout};
use rayon::prelude::*;

use crate::model::fused::Real;

/// `m ← β1·m + (1−β1)·(s·g)` and `v ← β2·v + (1−β2)·(s·g)²`, on `[m; v]` `(2, N)` and `g` `(N)`.
pub struct Moments {
    pub beta1: f64,
    pub beta2: f64,
    pub scale: f64,
}

/// `θ ← θ·decay − step · m / (√v / bias2_sqrt + ε)`.
pub struct Update {
    pub decay: f64,
    pub step: f64,
    pub bias2_sqrt: f64,
    pub eps: f64,
}

const CHUNK: usize = 1 << 14;

fn offsets(l: &Layout) -> candle_core::Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("AdamW: tensors must be contiguous".into()))
}

impl Moments {
    fn run<T: Real>(&self, mv: &mut [T], g: &[T]) {
        let (m, v) = mv.split_at_mut(g.len());
        let (beta1, beta2) = (T::from_f64(self.beta1), T::from_f64(self.beta2));
        let (one_minus1, one_minus2) =
            (T::from_f64(1.0 - self.beta1), T::from_f64(1.0 - self.beta2));
        let scale = T::from_f64(self.scale);
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((m, v), g)| {
                for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
                    let g = scale * g;
                    *m = beta1 * *m + one_minus1 * g;
                    *v = beta2 * *v + one_minus2 * (g * g);
                }
            });
    }
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "tinygpt-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let ((a, b), (c, d)) = (offsets(l1)?, offsets(l2)?);
        if b - a != 2 * (d - c) {
            candle_core::bail!("AdamW moments: [m; v] must hold twice the gradient's numbers");
        }
        match (s1, s2) {
            (CpuStorage::F32(mv), CpuStorage::F32(g)) => self.run(&mut mv[a..b], &g[c..d]),
            (CpuStorage::F64(mv), CpuStorage::F64(g)) => self.run(&mut mv[a..b], &g[c..d]),
            _ => candle_core::bail!("AdamW moments: f32 or f64 of one dtype"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        crate::model::fused_cuda::adamw_moments((s1, l1), (s2, l2), self)
    }
}

impl Update {
    fn run<T: Real>(&self, theta: &mut [T], m: &[T], v: &[T]) {
        let (decay, step) = (T::from_f64(self.decay), T::from_f64(self.step));
        let (bias2_sqrt, eps) = (T::from_f64(self.bias2_sqrt), T::from_f64(self.eps));
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(theta, (m, v))| {
                for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
                    *t = *t * decay - step * (m / (v.sqrt() / bias2_sqrt + eps));
                }
            });
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "tinygpt-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let ((a, b), (c, d), (e, f)) = (offsets(l1)?, offsets(l2)?, offsets(l3)?);
        match (s1, s2, s3) {
            (CpuStorage::F32(t), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.run(&mut t[a..b], &m[c..d], &v[e..f])
            }
            (CpuStorage::F64(t), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.run(&mut t[a..b], &m[c..d], &v[e..f])
            }
            _ => candle_core::bail!("AdamW update: f32 or f64 of one dtype"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        crate::model::fused_cuda::adamw_update((s1, l1), (s2, l2), (s3, l3), self)
    }
}
