//! The model: a GPT built from candle tensors and our own small layers, read top-down:
//! [`config`] (the numbers) → [`gpt`] (embeddings, blocks, head, loss) → [`block`] →
//! [`attention`] (+ [`rope`]) and [`mlp`] → [`norm`], [`linear`]. [`params`] holds the weights
//! by name; [`mod@generate`] samples text; [`checkpoint`], [`hf`] and [`llama2c`] move weights in
//! and out; [`summary`] prints the parameter table. For speed, the hot spots also run as fused
//! kernels with hand-written backward passes, each tested against the formulas above:
//! [`fused`] (softmax, cross-entropy, GELU, bias), [`fused_attention`], [`fused_norm`],
//! [`embedding`], with [`fast_math`] for `exp`/`erf` and `fused.cu` for CUDA GPUs.

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod embedding;
pub mod fast_math;
pub mod fused;
pub mod fused_attention;
#[cfg(feature = "cuda")]
pub(crate) mod fused_cuda;
pub mod fused_norm;
pub mod generate;
pub mod gpt;
pub mod hf;
pub mod linear;
pub mod llama2c;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod rope;
pub mod summary;

/// The dtype that sums, norms and softmaxes run in: f32 for f32/bf16/f16 inputs (a mean of
/// thousands of bf16 values loses too much), f64 for f64 (the gradient checks).
pub(crate) fn wide(dtype: candle_core::DType) -> candle_core::DType {
    match dtype {
        candle_core::DType::F64 => candle_core::DType::F64,
        _ => candle_core::DType::F32,
    }
}

pub use config::{GptConfig, Mlp, Norm, Positions, PRESETS};
pub use generate::{generate, GenerateOptions, Sampler};
pub use gpt::{cross_entropy, cross_entropy_sum, Gpt, KvCache};
pub use summary::ParamSummary;
