//! The whole model: token (and position) embeddings → `n_layer` blocks → final norm → `lm_head`.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, D};

use super::attention::{causal_mask, LayerCache, Mask};
use super::block::Block;
use super::config::{GptConfig, Positions};
use super::embedding;
use super::linear::Linear;
use super::norm::Norm;
use super::params::{Init, ParamBuilder, Params, WeightSource};
use super::rope::Rope;
use crate::data::loader::{BatchTensors, IGNORE_INDEX};
use crate::rng::Rng;
use crate::Result;

/// A GPT. Weights live in `f32` ([`Gpt::params`]); the forward pass computes in
/// [`Gpt::compute_dtype`] (`f32`, or `bf16` on a GPU).
#[derive(Clone)]
pub struct Gpt {
    config: GptConfig,
    params: Params,
    device: Device,
    compute_dtype: DType,
    /// Token embedding, `(vocab_size, C)`.
    wte: Tensor,
    /// Learned position embedding, `(block_size, C)`, or the rotary tables.
    wpe: Option<Tensor>,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// `C → vocab_size`; with tied embeddings its weight *is* `wte`.
    lm_head: Linear,
}

/// The KV cache of a generation: the keys and values of every layer for the tokens so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Gpt {
    /// A freshly initialised model. The same `seed` gives the same weights on every device.
    ///
    /// Initialisation (the original's): every matrix and embedding ~ N(0, σ²) with σ = C^-½, the
    /// two projections that write into the residual stream scaled down by (2·n_layer)^-½ (each
    /// block adds two of them, so the stream's variance stays put as depth grows); biases 0,
    /// norm gains 1.
    pub fn new(config: &GptConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::build(config, WeightSource::Init(Rng::new(seed)), device)
    }

    /// A model with the given weights (named as [`Gpt::params`] names them).
    pub fn from_tensors(
        config: &GptConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, WeightSource::Loaded(tensors), device)
    }

    fn build(config: &GptConfig, source: WeightSource, device: &Device) -> Result<Self> {
        config.validate()?;
        if device.is_cpu() {
            crate::device::tune_cpu();
        }
        let cfg = config;
        let mut p = ParamBuilder::new(source, device);
        let std = (cfg.n_embd as f64).powf(-0.5);
        let proj_std = std * (2.0 * cfg.n_layer as f64).powf(-0.5);
        let wte = p.get(
            "wte.weight",
            &[cfg.vocab_size, cfg.n_embd],
            Init::Normal(std),
        )?;
        let (wpe, rope) = match cfg.positions {
            Positions::Learned => (
                Some(p.get(
                    "wpe.weight",
                    &[cfg.block_size, cfg.n_embd],
                    Init::Normal(std),
                )?),
                None,
            ),
            Positions::Rope { theta } => (
                None,
                Some(Rope::new(theta, cfg.head_dim(), cfg.block_size, device)?),
            ),
        };
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(&mut p, &format!("h.{i}"), cfg, std, proj_std))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::new(&mut p, "ln_f", cfg.norm, cfg.n_embd, cfg.bias, cfg.norm_eps)?;
        let lm_head = if cfg.tied_embeddings {
            Linear {
                weight: wte.clone(),
                bias: None,
            }
        } else {
            Linear::new(&mut p, "lm_head", cfg.n_embd, cfg.vocab_size, false, std)?
        };
        Ok(Gpt {
            config: cfg.clone(),
            params: p.finish()?,
            device: device.clone(),
            compute_dtype: wte.dtype(),
            wte,
            wpe,
            rope,
            blocks,
            ln_f,
            lm_head,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The trainable tensors, sorted by name.
    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Compute in `dtype` (e.g. `BF16` on a GPU) while the weights stay `f32`.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute_dtype = dtype;
    }

    /// The logits `(B, T, vocab_size)` for token ids `idx`, document ids `doc` and positions `pos`,
    /// all `(B, T)` `u32` (from the loader: positions restart at 0 with every story).
    pub fn forward(&self, idx: &Tensor, doc: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let mask = Mask::for_documents(doc, self.compute_dtype)?;
        let x = self.embed(idx, pos)?;
        let rope = self.rope_angles(pos)?;
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, rope.as_ref(), &mask, None)?;
        }
        self.head(&x)
    }

    /// The mean cross-entropy of a batch (targets equal to `IGNORE_INDEX` do not count).
    pub fn loss(&self, batch: &BatchTensors) -> Result<Tensor> {
        let logits = self.forward(&batch.x, &batch.doc, &batch.pos)?;
        cross_entropy(&logits, &batch.y)
    }

    /// Generation step: runs `idx` `(B, T_new)` after the `cache.len()` tokens already cached
    /// (one story, positions continuing from there) and returns the logits of the *last* token,
    /// `(B, vocab_size)` in f32. The cache grows by `T_new`.
    pub fn forward_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        if cache.layers.is_empty() {
            cache.layers = vec![LayerCache::default(); self.blocks.len()];
        }
        let past = cache.len;
        if past + t > self.config.block_size {
            return Err(crate::Error::Invalid(format!(
                "{} tokens do not fit the model's context of {}",
                past + t,
                self.config.block_size
            )));
        }
        let pos: Vec<u32> = (0..b)
            .flat_map(|_| (past..past + t).map(|p| p as u32))
            .collect();
        let pos = Tensor::from_vec(pos, (b, t), &self.device)?;
        let mask = Mask::Additive(causal_mask(past, t, &self.device, self.compute_dtype)?);
        let rope = self.rope_angles(&pos)?;
        let mut x = self.embed(idx, &pos)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, rope.as_ref(), &mask, Some(layer_cache))?;
        }
        cache.len += t;
        let last = x.narrow(1, t - 1, 1)?;
        Ok(self
            .head(&last)?
            .squeeze(1)?
            .to_dtype(super::wide(self.compute_dtype))?)
    }

    /// Token embedding (+ learned position embedding): `(B, T)` → `(B, T, C)`.
    fn embed(&self, idx: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let c = self.config.n_embd;
        let mut x = embedding::lookup(&self.wte, &idx.flatten_all()?)?.reshape((b, t, c))?;
        if let Some(wpe) = &self.wpe {
            x = (x + embedding::lookup(wpe, &pos.flatten_all()?)?.reshape((b, t, c))?)?;
        }
        Ok(x.to_dtype(self.compute_dtype)?)
    }

    fn rope_angles(&self, pos: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        self.rope
            .as_ref()
            .map(|r| r.angles(pos, self.compute_dtype))
            .transpose()
    }

    /// Final norm and `lm_head`: `(B, T, C)` → `(B, T, vocab_size)`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(&self.ln_f.forward(x)?)?)
    }
}

/// The mean cross-entropy (in nats) of `logits` `(…, V)` against `targets` `(…)` (`u32`), over
/// the targets that are not `IGNORE_INDEX`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (sum, count) = cross_entropy_sum(logits, targets)?;
    Ok(sum.broadcast_div(&count)?)
}

/// The *summed* cross-entropy and the number of targets counted, both as scalars: what an
/// evaluation over many batches adds up (and bits per byte needs). On the CPU and on CUDA GPUs a
/// fused kernel ([`super::fused`]) computes it; elsewhere [`cross_entropy_composed`].
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let v = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), v))?; // (N, V)
    let targets = targets.flatten_all()?; // (N)
    if super::fused::available(&logits) {
        // The kernel reads bf16 logits as they are and sums in f32: no f32 copy of (N, V).
        let losses = super::fused::cross_entropy_rows(&logits, &targets)?; // (N), f32 or f64
        let count = targets
            .ne(IGNORE_INDEX)?
            .to_dtype(losses.dtype())?
            .sum_all()?;
        return Ok((losses.sum_all()?, count));
    }
    cross_entropy_composed(&logits.to_dtype(super::wide(logits.dtype()))?, &targets)
}

/// The cross-entropy from differentiable tensor operations, for `logits` `(N, V)` and `targets`
/// `(N)`: `loss_i = logsumexp(logits_i) − logits_i[target_i]`, with the row maximum subtracted
/// first so that `exp` cannot overflow. Returns the sum and the count of counted targets.
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let valid = targets.ne(IGNORE_INDEX)?; // (N) u8
    let safe_targets = valid.where_cond(targets, &targets.zeros_like()?)?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let logsumexp = shifted.exp()?.sum_keepdim(1)?.log()?; // (N, 1)
    let picked = shifted.gather(&safe_targets.unsqueeze(1)?, 1)?; // (N, 1)
    let nll = (logsumexp - picked)?.squeeze(1)?;
    let valid = valid.to_dtype(logits.dtype())?;
    Ok(((nll * &valid)?.sum_all()?, valid.sum_all()?))
}
