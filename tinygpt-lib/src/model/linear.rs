//! `Linear`: `y = x Wᵀ + b`, the workhorse of the model.

use candle_core::{Module, Tensor};

use super::params::{Init, ParamBuilder};
use crate::Result;

/// A linear layer with weight `W` of shape `(out, in)` (PyTorch's layout) and an optional bias.
///
/// The weights are stored in `f32`; they are cast to the dtype of the input, so the same layer
/// computes in `f32` on the CPU and in `bf16` on a GPU (the cast is differentiable: gradients
/// flow back to the `f32` master weights).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(
        p: &mut ParamBuilder,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[d_out, d_in], Init::Normal(std))?;
        let bias = if bias {
            Some(p.get(&format!("{name}.bias"), &[d_out], Init::Zeros)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    /// `(…, in)` → `(…, out)`. The leading dims are flattened into one so that a single large
    /// matrix multiplication does the work (faster than a batched one with a broadcast weight).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let d_in = dims[dims.len() - 1];
        let rows = x.elem_count() / d_in;
        let w = self.weight.to_dtype(x.dtype())?;
        let mut y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            y = super::fused::add_bias(&y, b).map_err(candle_core::Error::wrap)?;
        }
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}
