//! Fused CPU kernels, with their backward passes, for the two memory-bound hot spots of training:
//! the attention softmax over `(B, nh, T, T)` scores and the cross-entropy over `(B·T, V)` logits.
//!
//! Written as chains of tensor operations (see [`super::attention::softmax_last_dim`] and
//! [`super::gpt::cross_entropy_sum`]), each of them reads and writes the whole big tensor
//! several times, forward and backward. Here each is one pass over the rows (in parallel),
//! and candle calls our backward function during `backward()`:
//!
//! - softmax: `y = softmax(x + mask)` row by row; backward `dx = y ⊙ (dy − Σ dy⊙y)`.
//! - cross-entropy: `loss_i = logsumexp(x_i) − x_i[t_i]`; backward
//!   `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i` (0 for ignored targets).
//! - GELU (CPU only): `y = x·Φ(x)` with `Φ(x) = ½(1 + erf(x/√2))`; backward `dx = dy·(Φ(x) + x·φ(x))`,
//!   `φ` the standard normal density — one pass each way instead of candle's dozen.
//!
//! They run on the CPU for f32 and f64, and on CUDA GPUs (`fused.cu`, see `fused_cuda.rs`) for
//! f32 and bf16 softmax and f32 cross-entropy; elsewhere the callers use the composed formulas.
//! Tests check both give the same values and gradients, on the CPU and on a GPU.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::data::loader::IGNORE_INDEX;
use crate::Result;

/// Whether the fused kernels can run on this tensor.
pub fn available(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => matches!(x.dtype(), DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => matches!(x.dtype(), DType::F32 | DType::BF16),
        _ => false,
    }
}

/// `softmax(scores + mask)` over the last axis; `scores` `(B, H, T, Tk)`, `mask` additive
/// `(B or 1, 1, T, Tk)`. Call only when [`available`].
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(scores.dtype())?.contiguous()?;
    Ok(scores.contiguous()?.apply_op2(&mask, MaskedSoftmax)?)
}

/// Per-row cross-entropy `(N)` of `logits` `(N, V)` against `targets` `(N)` (`u32`), 0 where the
/// target is `IGNORE_INDEX`. Call only when [`available`].
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)?)
}

/// GELU, exact (erf) form, over any tensor: fused on the CPU for f32 and f64, candle's
/// `gelu_erf` elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        Ok(x.contiguous()?.apply_op1(Gelu)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// The float types the kernels handle.
trait Real:
    WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn erf(self) -> Self;
}
impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}
impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// The contiguous data of a storage (our wrappers make every input contiguous).
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused kernel: input not contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// Softmax of one row in place, after adding the mask row; fully masked entries become 0.
fn softmax_row<T: Real>(out: &mut [T], x: &[T], mask: &[T]) {
    let mut max = T::from_f64(f64::NEG_INFINITY);
    for ((o, &a), &m) in out.iter_mut().zip(x).zip(mask) {
        *o = a + m;
        if *o > max {
            max = *o;
        }
    }
    let mut sum = T::zero();
    for o in out.iter_mut() {
        *o = (*o - max).exp();
        sum += *o;
    }
    let inv = T::one() / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

struct MaskedSoftmax;

impl MaskedSoftmax {
    fn run<T: Real>(x: &[T], mask: &[T], dims: &[usize], mask_batch: usize) -> Vec<T> {
        let (h, t, tk) = (dims[1], dims[2], dims[3]);
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(tk).enumerate().for_each(|(row, o)| {
            let (b, i) = (row / (h * t), row % t);
            let m = if mask_batch == 1 { i } else { b * t + i };
            softmax_row(o, &x[row * tk..(row + 1) * tk], &mask[m * tk..(m + 1) * tk]);
        });
        out
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "tinygpt-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let mask_batch = l2.dims()[0];
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(Self::run(
                slice::<f32>(s1, l1)?,
                slice(s2, l2)?,
                dims,
                mask_batch,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(Self::run(
                slice::<f64>(s1, l1)?,
                slice(s2, l2)?,
                dims,
                mask_batch,
            )),
            _ => candle_core::bail!("masked softmax: f32 or f64 only"),
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
        super::fused_cuda::masked_softmax(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward)?;
        Ok((Some(dx), None))
    }
}

/// `dx = y ⊙ (dy − Σ dy⊙y)` row by row.
struct SoftmaxBackward;

impl SoftmaxBackward {
    fn run<T: Real>(y: &[T], dy: &[T], n: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        dx.par_chunks_mut(n).enumerate().for_each(|(row, d)| {
            let (y, dy) = (&y[row * n..(row + 1) * n], &dy[row * n..(row + 1) * n]);
            let mut dot = T::zero();
            for (&a, &b) in y.iter().zip(dy) {
                dot += a * b;
            }
            for ((d, &a), &b) in d.iter_mut().zip(y).zip(dy) {
                *d = a * (b - dot);
            }
        });
        dx
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "tinygpt-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = *l1.dims().last().unwrap();
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(Self::run(slice::<f32>(s1, l1)?, slice(s2, l2)?, n))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(Self::run(slice::<f64>(s1, l1)?, slice(s2, l2)?, n))
            }
            _ => candle_core::bail!("softmax backward: f32 or f64 only"),
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
        super::fused_cuda::softmax_backward(s1, l1, s2, l2)
    }
}

struct CrossEntropy;

impl CrossEntropy {
    fn run<T: Real>(x: &[T], targets: &[u32], v: usize) -> Vec<T> {
        targets
            .par_iter()
            .enumerate()
            .map(|(row, &t)| {
                if t == IGNORE_INDEX {
                    return T::zero();
                }
                let x = &x[row * v..(row + 1) * v];
                let max = x.iter().fold(
                    T::from_f64(f64::NEG_INFINITY),
                    |m, &a| if a > m { a } else { m },
                );
                let mut sum = T::zero();
                for &a in x {
                    sum += (a - max).exp();
                }
                sum.ln() + max - x[t as usize]
            })
            .collect()
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "tinygpt-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = slice::<u32>(s2, l2)?;
        if let Some(&bad) = targets
            .iter()
            .find(|&&t| t != IGNORE_INDEX && t as usize >= v)
        {
            candle_core::bail!("cross-entropy: target id {bad} is outside the {v} logits");
        }
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(Self::run(slice::<f32>(s1, l1)?, targets, v)),
            CpuStorage::F64(_) => CpuStorage::F64(Self::run(slice::<f64>(s1, l1)?, targets, v)),
            _ => candle_core::bail!("cross-entropy: f32 or f64 only"),
        };
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::cross_entropy(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        dloss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(targets, &dloss.contiguous()?, &CrossEntropyBackward)?;
        Ok((Some(dx), None))
    }
}

/// `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i`.
struct CrossEntropyBackward;

impl CrossEntropyBackward {
    fn run<T: Real>(x: &[T], targets: &[u32], dloss: &[T], v: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); x.len()];
        let no_mask = vec![T::zero(); v];
        dx.par_chunks_mut(v).enumerate().for_each(|(row, d)| {
            let t = targets[row];
            if t == IGNORE_INDEX {
                return;
            }
            softmax_row(d, &x[row * v..(row + 1) * v], &no_mask);
            d[t as usize] -= T::one();
            let g = dloss[row];
            d.iter_mut().for_each(|a| *a *= g);
        });
        dx
    }
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "tinygpt-cross-entropy-backward"
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
        let (_, v) = l1.shape().dims2()?;
        let targets = slice::<u32>(s2, l2)?;
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(Self::run(slice::<f32>(s1, l1)?, targets, slice(s3, l3)?, v))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(Self::run(slice::<f64>(s1, l1)?, targets, slice(s3, l3)?, v))
            }
            _ => candle_core::bail!("cross-entropy backward: f32 or f64 only"),
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
        super::fused_cuda::cross_entropy_backward(s1, l1, s2, l2, s3, l3)
    }
}

/// `y = x·Φ(x)`.
struct Gelu;

/// `Φ(x)` and `φ(x)`: the standard normal distribution function and density.
fn normal<T: Real>(x: T) -> (T, T) {
    let cdf =
        T::from_f64(0.5) * (T::one() + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (x * x * T::from_f64(-0.5)).exp() * T::from_f64(0.398_942_280_401_432_7);
    (cdf, pdf)
}

impl Gelu {
    fn run<T: Real>(x: &[T]) -> Vec<T> {
        x.par_iter()
            .with_min_len(4096)
            .map(|&a| a * normal(a).0)
            .collect()
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "tinygpt-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(Self::run(slice::<f32>(s, l)?)),
            CpuStorage::F64(_) => CpuStorage::F64(Self::run(slice::<f64>(s, l)?)),
            _ => candle_core::bail!("gelu: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluBackward)?))
    }
}

/// `dx = dy·(Φ(x) + x·φ(x))`.
struct GeluBackward;

impl GeluBackward {
    fn run<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
        x.par_iter()
            .zip(dy)
            .with_min_len(4096)
            .map(|(&a, &g)| {
                let (cdf, pdf) = normal(a);
                g * (cdf + a * pdf)
            })
            .collect()
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "tinygpt-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(Self::run(slice::<f32>(s1, l1)?, slice(s2, l2)?)),
            CpuStorage::F64(_) => CpuStorage::F64(Self::run(slice::<f64>(s1, l1)?, slice(s2, l2)?)),
            _ => candle_core::bail!("gelu backward: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
}
