//! Small measurements shared by `tinygpt bench` and the notebooks, so that a notebook cell and the
//! release binary time exactly the same code.

use std::time::Instant;

use candle_core::{Device, Tensor};

/// GFLOP/s of an `n×n · n×n` f32 matmul on the CPU (best of `repeats`, after one warm-up): a
/// multiply-add per inner-product term, so `2·n³` floating-point operations per matmul.
pub fn matmul_gflops(n: usize, repeats: usize) -> candle_core::Result<f64> {
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1f32, (n, n), &device)?;
    let b = Tensor::randn(0f32, 1f32, (n, n), &device)?;
    a.matmul(&b)?; // warm-up: thread pool start, page faults
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        std::hint::black_box(&c);
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}
