//! `Σ x²` over a whole tensor, as one f32 number: the square of the gradient norm that clipping
//! needs, every step, over all 61M gradients at once.
//!
//! Written as tensor operations, `x.sqr()?.sum_all()?`, it is a new 61M-number tensor and then,
//! on a GPU, candle's reduction, which runs one thread block per *output* number: one block, on
//! one of an H200's 132 multiprocessors, reads the whole vector. Here it is one pass: on the CPU,
//! fixed chunks summed in parallel (in eight f32 lanes each) and then added in order (in f64); on
//! CUDA (`model/fused.cu`), a grid of blocks each summing its stretch, then one block adding their
//! sums in order. The chunks and the grid depend only on the length, so the same gradients give
//! the same norm, bit for bit, on every run. It is also more exact: a single f32 running sum (as
//! candle's `sum_all` adds on the CPU) of 4M squares drifts by 3e-5 of the total, since every
//! addition rounds against a sum grown large; short sums added up in f64 came within 1e-7 of
//! the exact total there (`tests/train.rs`). The gradient norms a run prints moved in their fifth
//! digit with it.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::model::fused::{self, vectorized, Real};
use crate::Result;

/// `Σ x²` over every element of `x` (any float dtype; summed in f32 or better), shape `()`, f32.
pub fn sum_of_squares(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
    Ok(x.apply_op1_no_bwd(&SumOfSquares)?)
}

struct SumOfSquares;

/// Numbers per CPU task.
const CHUNK: usize = 1 << 16;

/// `Σ x²` over one chunk, in eight f32 lanes (AVX where the CPU has it).
#[inline(always)]
fn chunk_sum_of_squares_scalar<T: Real>(x: &[T]) -> T {
    fused::dot(x, x)
}
vectorized!(chunk_sum_of_squares, (x: &[T]) -> T, chunk_sum_of_squares_scalar(x));

impl CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "tinygpt-sum-of-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = fused::slice::<f32>(s, l)?;
        let parts: Vec<f32> = x.par_chunks(CHUNK).map(chunk_sum_of_squares).collect();
        let total = parts.iter().map(|&p| p as f64).sum::<f64>() as f32;
        Ok((CpuStorage::F32(vec![total]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::model::fused_cuda::sum_of_squares(s, l)
    }
}
