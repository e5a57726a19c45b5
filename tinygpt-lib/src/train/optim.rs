//! AdamW (Loshchilov & Hutter 2019), written out, with gradient-norm clipping.
//!
//! For each weight θ with gradient g, at step t (from 1), with learning rate η:
//! ```text
//! m ← β1·m + (1−β1)·g          (running mean of gradients: momentum)
//! v ← β2·v + (1−β2)·g²         (running mean of squared gradients: per-weight scale)
//! θ ← θ − η·λ·θ                (decoupled weight decay, only for matrices: see below)
//! θ ← θ − η · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)
//! ```
//! exactly as PyTorch's `torch.optim.AdamW`. Weight decay pulls weights towards 0; it is applied
//! to the ≥2-D tensors (matrices and embeddings) only: shrinking biases and norm gains does not
//! regularise anything useful. The moments live in f32 beside the f32 master weights and are
//! saved with the checkpoint, so a resumed run continues exactly.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::adamw_fused::{Moments, Update};
use super::sum_squares::sum_of_squares;
use crate::model::params::Params;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The original's: β = (0.9, 0.95), ε = 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates done so far (t − 1 during the next update).
    step: u64,
    /// The first and second moments of every weight, laid end to end in the params' name order
    /// as the gradients are (see [`flatten_grads`]): row 0 holds `m`, row 1 `v`, `(2, N)` f32 for
    /// `N` numbers in all, so that one pass updates them all. `None` before the first step.
    moments: Option<Tensor>,
}

/// Whether weight decay applies to a tensor: matrices and embeddings yes, vectors no.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

/// Every weight's gradient flattened and laid end to end in the params' name order, f32 (zeros
/// for a weight without one): the layout of the data-parallel all-reduce and of AdamW's moments.
pub fn flatten_grads(params: &Params, grads: &GradStore) -> Result<Tensor> {
    Ok(Tensor::cat(&grad_parts(params, grads)?, 0)?)
}

/// The pieces [`flatten_grads`] lays end to end, one flat f32 tensor per weight in name order
/// (for a caller that appends more before the one copy).
pub fn grad_parts(params: &Params, grads: &GradStore) -> Result<Vec<Tensor>> {
    let mut parts = vec![];
    for (_, var) in params.iter() {
        parts.push(match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
        });
    }
    Ok(parts)
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: None,
        }
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// One update of every weight, from its gradient in `grads` multiplied by `grad_scale` first
    /// (the clipping factor; 1.0 for none). A weight without a gradient counts as a zero one.
    pub fn step(
        &mut self,
        params: &Params,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step_flat(params, &flatten_grads(params, grads)?, lr, grad_scale)
    }

    /// [`AdamW::step`] from the gradients already laid end to end ([`flatten_grads`]'s layout,
    /// `(N)` f32), as the data-parallel trainer has them after its all-reduce.
    pub fn step_flat(
        &mut self,
        params: &Params,
        grads: &Tensor,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let n = params.count();
        if grads.dims() != [n] {
            return Err(Error::Invalid(format!(
                "AdamW: the gradients laid end to end have shape {:?}; the model's {n} weights need ({n})",
                grads.dims()
            )));
        }
        if let Some((name, var)) = params.iter().find(|(_, v)| v.dtype() != DType::F32) {
            return Err(Error::Invalid(format!(
                "AdamW keeps f32 master weights and moments, but `{name}` is {:?}",
                var.dtype()
            )));
        }
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let device = grads.device();
        let mv = match self.moments.take() {
            Some(mv) => mv,
            None => Tensor::zeros((2, n), DType::F32, device)?,
        };
        // In place (model/fused.cu on a GPU): see `adamw_fused` for the formulas.
        let moments = Moments {
            beta1: c.beta1,
            beta2: c.beta2,
            scale: grad_scale,
        };
        mv.inplace_op2(&grads.to_dtype(DType::F32)?.contiguous()?, &moments)?;
        let mut offset = 0;
        for (_, var) in params.iter() {
            let k = var.elem_count();
            let (m, v) = (
                mv.get(0)?.narrow(0, offset, k)?,
                mv.get(1)?.narrow(0, offset, k)?,
            );
            let decay = if decays(var.dims()) {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let update = Update {
                decay,
                step: lr / bias1,
                bias2_sqrt: bias2.sqrt(),
                eps: c.eps,
            };
            var.as_tensor().inplace_op3(&m, &v, &update)?;
            offset += k;
        }
        self.moments = Some(mv);
        Ok(())
    }

    /// Saves the moments (`m.NAME` and `v.NAME`, shaped like each of `params`' weights) and the
    /// step count (`step`), so that a resumed run continues exactly.
    pub fn save(&self, path: &Path, params: &Params) -> Result<()> {
        let mut tensors = BTreeMap::new();
        if let Some(mv) = &self.moments {
            let mut offset = 0;
            for (name, var) in params.iter() {
                let k = var.elem_count();
                for (row, prefix) in ["m", "v"].into_iter().enumerate() {
                    let moment = mv.get(row)?.narrow(0, offset, k)?.reshape(var.shape())?;
                    tensors.insert(format!("{prefix}.{name}"), moment);
                }
                offset += k;
            }
        }
        tensors.insert(
            "step".to_string(),
            Tensor::new(&[self.step as u32, (self.step >> 32) as u32], &Device::Cpu)?,
        );
        crate::model::checkpoint::save_weights(path, &tensors)
    }

    /// Restores what [`AdamW::save`] wrote, checking every moment against the model's weights
    /// (a weight the file has no moments for starts from zeros, as at the first step).
    pub fn load(config: AdamWConfig, path: &Path, params: &Params) -> Result<Self> {
        let mut tensors = crate::model::checkpoint::load_weights(path, &Device::Cpu)?;
        let bad = |why: String| Error::data(path, why);
        let step: Vec<u32> = tensors
            .remove("step")
            .ok_or_else(|| bad("has no step count".into()))?
            .to_vec1()?;
        let (mut ms, mut vs) = (vec![], vec![]);
        for (name, var) in params.iter() {
            let mut take = |prefix: &str| -> Result<Option<Tensor>> {
                match tensors.remove(&format!("{prefix}.{name}")) {
                    None => Ok(None),
                    Some(t) if t.dims() == var.dims() => Ok(Some(t.to_dtype(DType::F32)?)),
                    Some(t) => Err(bad(format!(
                        "holds moments of shape {:?} for `{name}`, whose shape is {:?}",
                        t.dims(),
                        var.dims()
                    ))),
                }
            };
            let zeros = || Tensor::zeros(var.shape(), DType::F32, &Device::Cpu);
            let (m, v) = match (take("m")?, take("v")?) {
                (Some(m), Some(v)) => (m, v),
                _ => (zeros()?, zeros()?),
            };
            ms.push(m.flatten_all()?);
            vs.push(v.flatten_all()?);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(bad(format!("holds optimizer state for `{extra}`, which the model does not have: it belongs to another model")));
        }
        let step = step[0] as u64 | (step[1] as u64) << 32;
        let moments = match params.iter().next() {
            Some((_, first)) if step > 0 => Some(
                Tensor::stack(&[Tensor::cat(&ms, 0)?, Tensor::cat(&vs, 0)?], 0)?
                    .to_device(first.device())?,
            ),
            _ => None,
        };
        Ok(AdamW {
            config,
            step,
            moments,
        })
    }
}

/// The global L2 norm of all gradients, `√(Σ‖g‖²)`, as one number (it waits for the device):
/// one [`sum_of_squares`] over the gradients laid end to end.
pub fn grad_norm(params: &Params, grads: &GradStore) -> Result<f64> {
    let sum = sum_of_squares(&flatten_grads(params, grads)?)?;
    Ok((sum.to_scalar::<f32>()? as f64).sqrt())
}

/// The factor that brings the gradient norm down to `max_norm` (1.0 when it is already below),
/// as PyTorch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}
