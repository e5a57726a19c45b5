//! LayerNorm and RMSNorm, written out so that they have gradients.
//!
//! candle-nn's fused `layer_norm` / `rms_norm` kernels have no backward pass: a model built on
//! them trains everything *except* what sits behind them, silently. [`Norm::forward_composed`]
//! uses only differentiable tensor operations; on the CPU (f32, f64) and on CUDA GPUs (f32, bf16)
//! the same formulas run as one kernel each way with a hand-written backward
//! ([`super::fused_norm`]), tested against the composed version. Both normalise in `f32`, whatever
//! the input dtype: the mean of squares of thousands of `bf16` values loses too much precision.

use candle_core::{Module, Tensor, D};

use super::config::Norm as NormKind;
use super::params::{Init, ParamBuilder};
use crate::Result;

/// Normalises the last dimension `C` of `(…, C)`.
#[derive(Clone, Debug)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    pub fn new(
        p: &mut ParamBuilder,
        name: &str,
        kind: NormKind,
        dim: usize,
        bias: bool,
        eps: f64,
    ) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[dim], Init::Ones)?;
        let bias = match (kind, bias) {
            (NormKind::LayerNorm, true) => {
                Some(p.get(&format!("{name}.bias"), &[dim], Init::Zeros)?)
            }
            _ => None,
        };
        Ok(Norm {
            kind,
            weight,
            bias,
            eps,
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if super::fused_norm::available(x) {
            let rms = self.kind == NormKind::RmsNorm;
            let y = super::fused_norm::norm(x, &self.weight, rms, self.eps)
                .map_err(candle_core::Error::wrap)?;
            return match &self.bias {
                Some(b) => super::fused::add_bias(&y, b).map_err(candle_core::Error::wrap),
                None => Ok(y),
            };
        }
        self.forward_composed(x)
    }
}

impl Norm {
    /// The formulas from differentiable tensor operations (GPUs, bf16; the reference the fused
    /// CPU kernel is tested against).
    pub fn forward_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(super::wide(dtype))?;
        let x = match self.kind {
            // (x - mean) / sqrt(var + eps)
            NormKind::LayerNorm => {
                let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                centered.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
            // x / sqrt(mean(x²) + eps)
            NormKind::RmsNorm => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            }
        };
        let mut x = x.broadcast_mul(&self.weight.to_dtype(x.dtype())?)?;
        if let Some(b) = &self.bias {
            x = x.broadcast_add(&b.to_dtype(x.dtype())?)?;
        }
        x.to_dtype(dtype)
    }
}
