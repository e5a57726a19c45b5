//! Fused kernels, with their backward passes, for the memory-bound element-wise work of training:
//! the attention softmax over `(B, nh, T, T)` scores, the cross-entropy over `(B·T, V)` logits,
//! GELU and the bias add. (The attention itself, the norms and the embedding have their own
//! files: [`super::fused_attention`], [`super::fused_norm`], [`super::embedding`].)
//!
//! Written as chains of tensor operations (see [`super::attention::softmax_last_dim`] and
//! [`super::gpt::cross_entropy_sum`]), each of them reads and writes the whole big tensor
//! several times, forward and backward. Here each is one pass over the rows (in parallel),
//! and candle calls our backward function during `backward()`:
//!
//! - softmax: `y = softmax(x + mask)` row by row; backward `dx = y ⊙ (dy − Σ dy⊙y)`.
//! - cross-entropy: `loss_i = logsumexp(x_i) − x_i[t_i]`; backward
//!   `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i` (0 for ignored targets).
//! - GELU: `y = x·Φ(x)` with `Φ(x) = ½(1 + erf(x/√2))`; backward `dx = dy·(Φ(x) + x·φ(x))`,
//!   `φ` the standard normal density — one pass each way instead of candle's dozen.
//! - bias: `y = x + b` row by row; backward `dx = dy`, `db = Σ_rows dy` (row-parallel).
//!
//! They run on the CPU for f32 and f64, and on CUDA GPUs (`fused.cu`, see `fused_cuda.rs`) for
//! f32 and bf16; elsewhere the callers use the composed formulas.
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
/// target is `IGNORE_INDEX`: f32 for f32 and bf16 logits (the GPU kernel reads bf16 directly),
/// f64 for f64. Call only when [`available`].
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)?)
}

/// GELU, exact (erf) form, over any tensor: fused where [`available`], candle's `gelu_erf`
/// elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if available(x) {
        Ok(x.contiguous()?.apply_op1(Gelu)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// `x + bias` for `x` `(…, D)` and `bias` `(D)`; the bias gradient is a column sum done
/// row-parallel (candle's reduction over the leading axes of a broadcast was a slow single pass
/// on the CPU, ~15 ms per `(2048, 1152)` gradient, and strided on a GPU). Where the kernels do
/// not run, an ordinary broadcast add.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if available(x) {
        let bias = bias.to_dtype(x.dtype())?.contiguous()?;
        Ok(x.contiguous()?.apply_op2(&bias, AddBias)?)
    } else {
        Ok(x.broadcast_add(&bias.to_dtype(x.dtype())?)?)
    }
}

/// The kernels compiled three times: as usual (SSE2, 4 floats per instruction), with AVX2 and
/// FMA (8) and with AVX-512 (16), the widest the CPU has picked at run time. The kernels are
/// `#[inline(always)]`, so their code lands inside these functions and is compiled with the
/// wider instructions. The wide versions are never inlined into their callers, so that a kernel
/// called from another kernel stays a small function of its own.
///
/// The second form names a constant that the body may use, the number of registers' worth of
/// running sums a kernel can keep: `$regs` is 3 in the AVX-512 version (32 vector registers) and
/// 1 in the others (AVX2 has 16, each half as wide, so one set of sums already fills half).
macro_rules! vectorized {
    ($name:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {
        vectorized!($name, _REGS, ($($arg: $ty),*) -> $ret, $body);
    };
    ($name:ident, $regs:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {
        fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[allow(dead_code)]
            const $regs: usize = 1;
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[inline(never)]
                fn avx512<T: Real>($($arg: $ty),*) -> $ret {
                    #[allow(dead_code)]
                    const $regs: usize = 3;
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                #[inline(never)]
                fn avx2<T: Real>($($arg: $ty),*) -> $ret {
                    #[allow(dead_code)]
                    const $regs: usize = 1;
                    $body
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512 (checked just above; it implies FMA).
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use vectorized;

/// The float types the kernels handle.
pub(crate) trait Real:
    WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
{
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn ln(self) -> Self;
    fn erf(self) -> Self;
    /// `self · a + b` rounded once: one instruction inside the [`vectorized`] kernels (their
    /// AVX2 and AVX-512 versions enable FMA); only their plain fallback pays a library call.
    fn mul_add(self, a: Self, b: Self) -> Self;
}
/// f32 uses [`super::fast_math`]'s `exp` and `erf`, which vectorize; f64 the C library's.
impl Real for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        super::fast_math::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        super::fast_math::erf(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
}
impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
}

/// The contiguous data of a storage (our wrappers make every input contiguous).
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused kernel: input not contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// `n` zeros, written by all cores. (`vec![0; n]` zeroes on the calling thread alone while the
/// other cores wait.)
pub(super) fn zeros<T: Real>(n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(16384)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(T::zero())));
    // SAFETY: the tasks above wrote all `n` elements.
    unsafe { out.set_len(n) };
    out
}

/// A new buffer of `n` numbers, rows of `row` numbers, that `fill(i, out)` writes row by row,
/// rows in parallel: the kernels' outputs. `fill` must write *every* number of its row: the
/// buffer is not zeroed first (a second pass over it: about 2% of a CPU training step's time,
/// most of it in the bias add). Debug builds, which the tests use, fill it with NaN first, so
/// that a number a kernel forgets to write shows in the tests' results.
pub(super) fn par_rows<T: Real>(
    n: usize,
    row: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let rows_per_task = (16384 / row).max(1);
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(rows_per_task * row)
        .enumerate()
        .for_each(|(task, chunk)| {
            if cfg!(debug_assertions) {
                chunk.fill(std::mem::MaybeUninit::new(T::from_f64(f64::NAN)));
            }
            // SAFETY: f32 and f64 have no invalid bit patterns, and `fill` writes every element
            // before anything reads it (the contract above; in debug builds they hold NaN).
            let chunk = unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            for (k, out) in chunk.chunks_mut(row).enumerate() {
                fill(task * rows_per_task + k, out);
            }
        });
    // SAFETY: the tasks above wrote all `n` elements.
    unsafe { out.set_len(n) };
    out
}

/// Softmax of one row in place, after adding the mask row; fully masked entries become 0.
#[inline(always)]
fn softmax_row_scalar<T: Real>(out: &mut [T], x: &[T], mask: &[T]) {
    for ((o, &a), &m) in out.iter_mut().zip(x).zip(mask) {
        *o = a + m;
    }
    softmax_in_place(out, T::one());
}

/// `row ← softmax(scale · row)` (`scale > 0`). The max and the sum run in eight lanes, which
/// the compiler can vectorize (a single running sum fixes the order of the additions, and
/// forbids it).
#[inline(always)]
pub(super) fn softmax_in_place<T: Real>(row: &mut [T], scale: T) {
    let max = max_of(row);
    row.iter_mut().for_each(|a| *a = ((*a - max) * scale).exp());
    let inv = T::one() / sum_of(row, |a| a);
    row.iter_mut().for_each(|a| *a *= inv);
}

/// The largest of `x` (−∞ for none), in eight lanes.
#[inline(always)]
fn max_of<T: Real>(x: &[T]) -> T {
    let max = |m: T, a: T| if a > m { a } else { m };
    let mut acc = [T::from_f64(f64::NEG_INFINITY); 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(acc[0], |m, &a| max(m, a));
    for c in chunks {
        for k in 0..8 {
            acc[k] = max(acc[k], c[k]);
        }
    }
    acc.iter().fold(tail, |m, &a| max(m, a))
}

/// `Σ f(x_i)`, in eight lanes.
#[inline(always)]
pub(super) fn sum_of<T: Real>(x: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(T::zero(), |s, &a| s + f(a));
    for c in chunks {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// `Σ a_i b_i`, in eight lanes.
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in chunks_a.zip(chunks_b) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

vectorized!(softmax_row, (out: &mut [T], x: &[T], mask: &[T]) -> (), softmax_row_scalar(out, x, mask));

struct MaskedSoftmax;

impl MaskedSoftmax {
    fn run<T: Real>(x: &[T], mask: &[T], dims: &[usize], mask_batch: usize) -> Vec<T> {
        let (h, t, tk) = (dims[1], dims[2], dims[3]);
        par_rows(x.len(), tk, |row, o| {
            let (b, i) = (row / (h * t), row % t);
            let m = if mask_batch == 1 { i } else { b * t + i };
            softmax_row(o, &x[row * tk..(row + 1) * tk], &mask[m * tk..(m + 1) * tk]);
        })
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
        par_rows(y.len(), n, |row, d| {
            let (y, dy) = (&y[row * n..(row + 1) * n], &dy[row * n..(row + 1) * n]);
            let mut dot = T::zero();
            for (&a, &b) in y.iter().zip(dy) {
                dot += a * b;
            }
            for ((d, &a), &b) in d.iter_mut().zip(y).zip(dy) {
                *d = a * (b - dot);
            }
        })
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
                cross_entropy_row(&x[row * v..(row + 1) * v], t as usize)
            })
            .collect()
    }
}

/// `logsumexp(x) − x[t]` for one row.
#[inline(always)]
fn cross_entropy_row_scalar<T: Real>(x: &[T], t: usize) -> T {
    let max = max_of(x);
    let sum = sum_of(x, |a| (a - max).exp());
    sum.ln() + max - x[t]
}
vectorized!(cross_entropy_row, (x: &[T], t: usize) -> T, cross_entropy_row_scalar(x, t));

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

    /// The forward's output gives each row's log-normaliser back, `logsumexp(x_i) = loss_i +
    /// x_i[t_i]`, so the backward reads the logits once instead of recomputing their maximum and
    /// sum: it gets `loss` and `dloss` stacked as one `(2, N)` tensor (a `CustomOp3` takes three
    /// inputs).
    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        loss: &Tensor,
        dloss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let loss_and_dloss = Tensor::stack(&[loss, &dloss.to_dtype(loss.dtype())?], 0)?;
        let dx = x.apply_op3_no_bwd(targets, &loss_and_dloss, &CrossEntropyBackward)?;
        Ok((Some(dx), None))
    }
}

/// `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i`, with `softmax(x_i)_j = exp(x_ij − lse_i)` and
/// `lse_i = loss_i + x_i[t_i]`. Inputs: logits `(N, V)`, targets `(N)`, `[loss; dloss]` `(2, N)`.
struct CrossEntropyBackward;

impl CrossEntropyBackward {
    fn run<T: Real>(x: &[T], targets: &[u32], loss_and_dloss: &[T], v: usize) -> Vec<T> {
        let (loss, dloss) = loss_and_dloss.split_at(targets.len());
        par_rows(x.len(), v, |row, d| {
            let t = targets[row];
            if t == IGNORE_INDEX {
                d.fill(T::zero());
            } else {
                let x = &x[row * v..(row + 1) * v];
                let lse = loss[row] + x[t as usize];
                cross_entropy_backward_row(x, t as usize, lse, dloss[row], d);
            }
        })
    }
}

/// `d = (exp(x − lse) − onehot(t)) · g` for one row: one pass over it (recomputing the softmax's
/// maximum and sum took four).
#[inline(always)]
fn cross_entropy_backward_row_scalar<T: Real>(x: &[T], t: usize, lse: T, g: T, d: &mut [T]) {
    for (d, &a) in d.iter_mut().zip(x) {
        *d = (a - lse).exp() * g;
    }
    d[t] -= g;
}
vectorized!(cross_entropy_backward_row, (x: &[T], t: usize, lse: T, g: T, d: &mut [T]) -> (), cross_entropy_backward_row_scalar(x, t, lse, g, d));

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
#[inline(always)]
fn normal<T: Real>(x: T) -> (T, T) {
    let cdf =
        T::from_f64(0.5) * (T::one() + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (x * x * T::from_f64(-0.5)).exp() * T::from_f64(0.398_942_280_401_432_7);
    (cdf, pdf)
}

impl Gelu {
    fn run<T: Real>(x: &[T]) -> Vec<T> {
        par_rows(x.len(), 4096, |i, y| {
            gelu_chunk(&x[i * 4096..][..y.len()], y)
        })
    }
}

#[inline(always)]
fn gelu_chunk_scalar<T: Real>(x: &[T], y: &mut [T]) {
    for (y, &a) in y.iter_mut().zip(x) {
        *y = a * normal(a).0;
    }
}
vectorized!(gelu_chunk, (x: &[T], y: &mut [T]) -> (), gelu_chunk_scalar(x, y));

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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gelu_forward(s, l)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluBackward)?))
    }
}

/// `dx = dy·(Φ(x) + x·φ(x))`.
struct GeluBackward;

impl GeluBackward {
    fn run<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
        par_rows(x.len(), 4096, |i, dx| {
            let (x, dy) = (&x[i * 4096..][..dx.len()], &dy[i * 4096..][..dx.len()]);
            gelu_backward_chunk(x, dy, dx)
        })
    }
}

#[inline(always)]
fn gelu_backward_chunk_scalar<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    for ((d, &a), &g) in dx.iter_mut().zip(x).zip(dy) {
        let (cdf, pdf) = normal(a);
        *d = g * (cdf + a * pdf);
    }
}
vectorized!(gelu_backward_chunk, (x: &[T], dy: &[T], dx: &mut [T]) -> (), gelu_backward_chunk_scalar(x, dy, dx));

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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gelu_backward(s1, l1, s2, l2)
    }
}

/// `y = x + bias`, row by row.
struct AddBias;

impl AddBias {
    fn run<T: Real>(x: &[T], bias: &[T]) -> Vec<T> {
        let d = bias.len();
        par_rows(x.len(), d, |i, y| {
            for ((y, &x), &b) in y.iter_mut().zip(&x[i * d..]).zip(bias) {
                *y = x + b;
            }
        })
    }
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "tinygpt-add-bias"
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
            _ => candle_core::bail!("add bias: f32 or f64 only"),
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
        super::fused_cuda::add_bias(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dbias = dy.apply_op1_no_bwd(&ColumnSum(bias.dim(0)?))?;
        Ok((Some(dy), Some(dbias)))
    }
}

/// `Σ_rows x` for `x` `(…, D)`: `(D)`. Each thread sums its rows, then the partial sums are added.
struct ColumnSum(usize);

impl ColumnSum {
    fn run<T: Real>(x: &[T], d: usize) -> Vec<T> {
        sum_over_rows(x.len() / d, d, |row, acc| {
            let row = &x[row * d..(row + 1) * d];
            acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x);
        })
    }
}

/// `Σ_rows` of what `add_row(row, acc)` adds into a `(d)` accumulator, rows in parallel: each
/// thread sums its rows into its own accumulator, then the accumulators are added.
pub(super) fn sum_over_rows<T: Real>(
    rows: usize,
    d: usize,
    add_row: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    (0..rows)
        .into_par_iter()
        .with_min_len(64)
        .fold(
            || vec![T::zero(); d],
            |mut acc, row| {
                add_row(row, &mut acc);
                acc
            },
        )
        .reduce(
            || vec![T::zero(); d],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "tinygpt-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(Self::run(slice::<f32>(s, l)?, self.0)),
            CpuStorage::F64(_) => CpuStorage::F64(Self::run(slice::<f64>(s, l)?, self.0)),
            _ => candle_core::bail!("column sum: f32 or f64 only"),
        };
        Ok((out, Shape::from(self.0)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::column_sum(s, l, self.0)
    }
}
