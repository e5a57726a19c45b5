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

use super::adamw_fused::{Moment, Update};
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
    /// First and second moments per weight name.
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

/// Whether weight decay applies to a tensor: matrices and embeddings yes, vectors no.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// One update of every weight that has a gradient, with the gradients multiplied by
    /// `grad_scale` first (the clipping factor; 1.0 for none).
    pub fn step(
        &mut self,
        params: &Params,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (name, var) in params.iter() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(var.dtype())?.contiguous()?;
            let (m, v) = match self.moments.remove(name) {
                Some(mv) => mv,
                None => (var.zeros_like()?, var.zeros_like()?),
            };
            // In place (model/fused.cu on a GPU): see `adamw_fused` for the formulas.
            let moment = |beta, square| Moment {
                beta,
                scale: grad_scale,
                square,
            };
            m.inplace_op2(&g, &moment(c.beta1, false))?;
            v.inplace_op2(&g, &moment(c.beta2, true))?;
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
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(())
    }

    /// Saves the moments and step count (`m.NAME`, `v.NAME` tensors; the step in the metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (name, (m, v)) in &self.moments {
            tensors.insert(format!("m.{name}"), m.clone());
            tensors.insert(format!("v.{name}"), v.clone());
        }
        tensors.insert(
            "step".to_string(),
            Tensor::new(&[self.step as u32, (self.step >> 32) as u32], &Device::Cpu)?,
        );
        crate::model::checkpoint::save_weights(path, &tensors)
    }

    /// Restores what [`AdamW::save`] wrote, checking every moment against the model's weights.
    pub fn load(config: AdamWConfig, path: &Path, params: &Params) -> Result<Self> {
        let mut tensors = crate::model::checkpoint::load_weights(path, &Device::Cpu)?;
        let bad = |why: String| Error::data(path, why);
        let step: Vec<u32> = tensors
            .remove("step")
            .ok_or_else(|| bad("has no step count".into()))?
            .to_vec1()?;
        let mut moments = BTreeMap::new();
        for (name, var) in params.iter() {
            let mut take = |prefix: &str| -> Result<Option<Tensor>> {
                match tensors.remove(&format!("{prefix}.{name}")) {
                    None => Ok(None),
                    Some(t) if t.dims() == var.dims() => {
                        Ok(Some(t.to_dtype(DType::F32)?.to_device(var.device())?))
                    }
                    Some(t) => Err(bad(format!(
                        "holds moments of shape {:?} for `{name}`, whose shape is {:?}",
                        t.dims(),
                        var.dims()
                    ))),
                }
            };
            if let (Some(m), Some(v)) = (take("m")?, take("v")?) {
                moments.insert(name.clone(), (m, v));
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(bad(format!("holds optimizer state for `{extra}`, which the model does not have: it belongs to another model")));
        }
        Ok(AdamW {
            config,
            step: step[0] as u64 | (step[1] as u64) << 32,
            moments,
        })
    }
}

/// The global L2 norm of all gradients, `√(Σ‖g‖²)`, as one number (it waits for the device):
/// the gradients laid end to end (in name order), then one [`sum_of_squares`] over them all.
pub fn grad_norm(params: &Params, grads: &GradStore) -> Result<f64> {
    let mut flat = vec![];
    for (_, var) in params.iter() {
        if let Some(g) = grads.get(var.as_tensor()) {
            flat.push(g.to_dtype(DType::F32)?.flatten_all()?);
        }
    }
    if flat.is_empty() {
        return Ok(0.0);
    }
    let sum = sum_of_squares(&Tensor::cat(&flat, 0)?)?;
    Ok((sum.to_scalar::<f32>()? as f64).sqrt())
}

/// The factor that brings the gradient norm down to `max_norm` (1.0 when it is already below),
/// as PyTorch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}
