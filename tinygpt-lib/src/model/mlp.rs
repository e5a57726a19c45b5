//! The feed-forward network of a block: the same small network applied to every token.

use candle_core::{Module, Tensor};

use super::config::{GptConfig, Mlp as MlpKind};
use super::linear::Linear;
use super::params::ParamBuilder;
use crate::Result;

/// GPT-2: `c_proj(gelu(c_fc(x)))` with `c_fc: C → 4C`.
/// SwiGLU (Llama): `c_proj(silu(gate) * up)` where `c_fc: C → 2·hidden` computes `[gate | up]`
/// in one matrix multiplication (Llama's `w1` and `w3` stacked).
#[derive(Clone, Debug)]
pub struct Mlp {
    kind: MlpKind,
    hidden: usize,
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    pub fn new(
        p: &mut ParamBuilder,
        name: &str,
        cfg: &GptConfig,
        std: f64,
        proj_std: f64,
    ) -> Result<Self> {
        let hidden = cfg.mlp_hidden();
        let fc_out = match cfg.mlp {
            MlpKind::Gelu => hidden,
            MlpKind::SwiGlu { .. } => 2 * hidden,
        };
        Ok(Mlp {
            kind: cfg.mlp,
            hidden,
            c_fc: Linear::new(
                p,
                &format!("{name}.c_fc"),
                cfg.n_embd,
                fc_out,
                cfg.bias,
                std,
            )?,
            c_proj: Linear::new(
                p,
                &format!("{name}.c_proj"),
                hidden,
                cfg.n_embd,
                cfg.bias,
                proj_std,
            )?,
        })
    }
}

impl Module for Mlp {
    /// `(B, T, C)` → `(B, T, C)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = match self.kind {
            // The exact GELU, x·Φ(x), as PyTorch's nn.GELU() (and HF's "gelu").
            MlpKind::Gelu => super::fused::gelu(&h).map_err(candle_core::Error::wrap)?,
            MlpKind::SwiGlu { .. } => {
                let last = h.rank() - 1;
                let gate = h.narrow(last, 0, self.hidden)?;
                let up = h.narrow(last, self.hidden, self.hidden)?;
                (gate.silu()? * up)?
            }
        };
        self.c_proj.forward(&h)
    }
}
