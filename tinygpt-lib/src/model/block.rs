//! One transformer block, pre-norm (GPT-2): `x + attn(norm(x))`, then `x + mlp(norm(x))`.
//!
//! The residual stream `x` passes through unchanged; each sub-layer only *adds* to it. Gradients
//! flow straight down the additions, which is what lets deep stacks train.

use candle_core::{Module, Tensor};

use super::attention::{Attention, LayerCache, Mask};
use super::config::GptConfig;
use super::mlp::Mlp;
use super::norm::Norm;
use super::params::ParamBuilder;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
}

impl Block {
    pub fn new(
        p: &mut ParamBuilder,
        name: &str,
        cfg: &GptConfig,
        std: f64,
        proj_std: f64,
    ) -> Result<Self> {
        Ok(Block {
            ln_1: Norm::new(
                p,
                &format!("{name}.ln_1"),
                cfg.norm,
                cfg.n_embd,
                cfg.bias,
                cfg.norm_eps,
            )?,
            attn: Attention::new(p, &format!("{name}.attn"), cfg, std, proj_std)?,
            ln_2: Norm::new(
                p,
                &format!("{name}.ln_2"),
                cfg.norm,
                cfg.n_embd,
                cfg.bias,
                cfg.norm_eps,
            )?,
            mlp: Mlp::new(p, &format!("{name}.mlp"), cfg, std, proj_std)?,
        })
    }

    /// `(B, T, C)` → `(B, T, C)`; see [`Attention::forward`] for `rope`, `mask` and `cache`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        mask: &Mask,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x)?, rope, mask, cache)?)?;
        let x = (&x + self.mlp.forward(&self.ln_2.forward(&x)?)?)?;
        Ok(x)
    }
}
