//! Causal self-attention with grouped key/value heads and a document mask.
//!
//! Every token asks a question (query), offers an answer key (key) and a content (value).
//! Token `i` mixes the values of the tokens `j` it may see, weighted by `softmax(q_i · k_j / √hd)`.
//! It may see `j` only if `j ≤ i` (causal: no peeking at the future) **and** `j` belongs to the
//! same story as `i` (the document mask: a row packs several stories, and they must not mix).
//!
//! Grouped-query attention (GQA; Ainslie et al. 2023): `n_head` query heads but only `n_kv_head`
//! key/value heads, each shared by a group of `g = n_head / n_kv_head` consecutive query heads.
//! Fewer keys and values mean a smaller KV cache in generation (by the factor `g`).
//!
//! Written here with tensor operations (the reference, and the GPU path); training on the CPU
//! runs the same computation as one kernel, [`super::fused_attention`], chosen by [`Mask`].

use candle_core::{DType, Device, Module, Tensor, D};

use super::config::GptConfig;
use super::fused_attention::{self, Documents};
use super::linear::Linear;
use super::params::ParamBuilder;
use super::rope;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Attention {
    /// Queries, keys and values in one matrix multiplication: `C → (n_head + 2·n_kv_head)·hd`.
    c_attn: Linear,
    /// The heads' outputs, concatenated, back to the residual stream: `n_head·hd → C`.
    c_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// The keys and values of the tokens seen so far, for one layer: `(B, n_kv_head, T_past, hd)`.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl Attention {
    pub fn new(
        p: &mut ParamBuilder,
        name: &str,
        cfg: &GptConfig,
        std: f64,
        proj_std: f64,
    ) -> Result<Self> {
        let hd = cfg.head_dim();
        let qkv = (cfg.n_head + 2 * cfg.n_kv_head) * hd;
        Ok(Attention {
            c_attn: Linear::new(p, &format!("{name}.c_attn"), cfg.n_embd, qkv, cfg.bias, std)?,
            c_proj: Linear::new(
                p,
                &format!("{name}.c_proj"),
                cfg.n_head * hd,
                cfg.n_embd,
                cfg.bias,
                proj_std,
            )?,
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: hd,
        })
    }

    /// `x`: `(B, T, C)`. `rope`: the rotary angles when the model uses RoPE. `mask`: who may
    /// look at whom (see [`Mask`]). `cache`: in generation, the past keys and values (extended
    /// here with the new ones).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        mask: &Mask,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let mask = match mask {
            Mask::Additive(mask) => mask,
            Mask::Documents(docs) if cache.is_none() => return self.forward_fused(x, rope, docs),
            Mask::Documents(_) => {
                return Err(crate::Error::Invalid(
                    "attention: a KV cache needs an additive mask".into(),
                ))
            }
        };
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let qkv = self
            .c_attn
            .forward(x)?
            .reshape((b, t, nh + 2 * nkv, hd))?
            .transpose(1, 2)?; // (B, nh+2nkv, T, hd)
        let mut q = qkv.narrow(1, 0, nh)?; // (B, nh, T, hd)
        let mut k = qkv.narrow(1, nh, nkv)?.contiguous()?; // (B, nkv, T, hd)
        let mut v = qkv.narrow(1, nh + nkv, nkv)?.contiguous()?; // (B, nkv, T, hd)
        if let Some((cos, sin)) = rope {
            q = rope::rotate(&q, cos, sin)?;
            k = rope::rotate(&k, cos, sin)?;
        }
        if let Some(cache) = cache {
            if let Some((pk, pv)) = &cache.kv {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let tk = k.dim(2)?;
        // Group the query heads that share a key/value head along the time axis,
        // (B, nh, T, hd) → (B, nkv, g·T, hd), so that one batched matmul serves the whole group
        // without copying the keys g times.
        let g = nh / nkv;
        let q = (q * (1.0 / (hd as f64).sqrt()))?
            .contiguous()?
            .reshape((b, nkv, g * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nh, t, tk))?; // (B, nh, T, Tk)
        let att = if super::fused::available(&scores) {
            super::fused::masked_softmax(&scores, mask)?
        } else {
            softmax_last_dim(&scores.broadcast_add(mask)?)?
        };
        let y = att.reshape((b, nkv, g * t, tk))?.matmul(&v)?; // (B, nkv, g·T, hd)
        let y = y
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?; // (B, T, C)
        Ok(self.c_proj.forward(&y)?)
    }

    /// The same on the CPU through the fused kernel ([`super::fused_attention`]), which reads
    /// `c_attn`'s output in place and writes `c_proj`'s input directly.
    fn forward_fused(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        docs: &Documents,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let mut qkv = self.c_attn.forward(x)?; // (B, T, (nh+2nkv)·hd)
        if let Some((cos, sin)) = rope {
            // Rotate the queries and keys, then pack them back beside the values.
            let heads = qkv.reshape((b, t, nh + 2 * nkv, hd))?;
            let rotated = |from: usize, n: usize| -> Result<Tensor> {
                let x = heads.narrow(2, from, n)?.transpose(1, 2)?; // (B, n, T, hd)
                Ok(rope::rotate(&x, cos, sin)?.transpose(1, 2)?)
            };
            let v = heads.narrow(2, nh + nkv, nkv)?;
            qkv = Tensor::cat(&[&rotated(0, nh)?, &rotated(nh, nkv)?, &v], 2)?.reshape((
                b,
                t,
                (nh + 2 * nkv) * hd,
            ))?;
        }
        let y = fused_attention::attention(&qkv, docs, nh, nkv)?; // (B, T, nh·hd)
        Ok(self.c_proj.forward(&y)?)
    }
}

/// Who may look at whom.
#[derive(Clone, Debug)]
pub enum Mask {
    /// An additive mask `(B or 1, 1, T, T_past + T)`: 0 where a token may look, −∞ where not.
    Additive(Tensor),
    /// Training and evaluation where the fused kernel runs (the CPU; a CUDA GPU when opted in,
    /// see [`fused_attention::available`]): each token sees its own story up to itself, and the
    /// kernel reads where each story starts instead of a `(T, T)` mask.
    Documents(Documents),
}

impl Mask {
    /// The mask of a training batch with document ids `doc` `(B, T)`: the fused kernel's
    /// [`Documents`] where it runs, else the additive [`document_mask`].
    pub fn for_documents(doc: &Tensor, dtype: DType) -> Result<Mask> {
        if fused_attention::available(doc.device(), dtype) {
            Ok(Mask::Documents(Documents::new(doc)?))
        } else {
            Ok(Mask::Additive(document_mask(doc, dtype)?))
        }
    }
}

/// Softmax over the last dimension, from differentiable operations (candle-nn's fused
/// `softmax_last_dim` has no backward). Computed in f32; the max is subtracted for stability
/// (a constant shift that changes nothing mathematically, hence `detach`).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(super::wide(dtype))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        .to_dtype(dtype)?)
}

/// The additive mask of a training batch, `(B, 1, T, T)`: token `i` sees token `j` when `j ≤ i`
/// and both carry the same document id (`doc`: `(B, T)`, from the loader). Built once per batch.
pub fn document_mask(doc: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = doc.dims2()?;
    let dev = doc.device();
    let row = doc.unsqueeze(2)?.broadcast_as((b, t, t))?; // doc[i] along rows
    let col = doc.unsqueeze(1)?.broadcast_as((b, t, t))?; // doc[j] along columns
    let same_doc = row.eq(&col)?;
    let causal = Tensor::tril2(t, DType::U8, dev)?
        .unsqueeze(0)?
        .broadcast_as((b, t, t))?;
    let allowed = (same_doc * causal)?;
    additive(&allowed, dtype)?.unsqueeze(1).map_err(Into::into)
}

/// The causal mask of `t_new` tokens that follow `t_past` cached ones (one document),
/// `(1, 1, t_new, t_past + t_new)`.
pub fn causal_mask(t_past: usize, t_new: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let tk = t_past + t_new;
    let allowed: Vec<u8> = (0..t_new)
        .flat_map(|i| (0..tk).map(move |j| u8::from(j <= t_past + i)))
        .collect();
    let allowed = Tensor::from_vec(allowed, (t_new, tk), device)?;
    Ok(additive(&allowed, dtype)?.reshape((1, 1, t_new, tk))?)
}

/// 1 → 0.0, 0 → −∞.
fn additive(allowed: &Tensor, dtype: DType) -> Result<Tensor> {
    let zeros = allowed.zeros_like()?.to_dtype(dtype)?;
    let minus_inf =
        Tensor::full(f32::NEG_INFINITY, allowed.shape(), allowed.device())?.to_dtype(dtype)?;
    Ok(allowed.where_cond(&zeros, &minus_inf)?)
}
