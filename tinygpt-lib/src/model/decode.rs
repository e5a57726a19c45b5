//! Batch-1 decoding on the CPU with plain loops over `f32` slices, in the spirit of llama2.c's
//! `run.c`: the same model as [`Gpt`], one token at a time, with the KV cache in flat arrays.
//!
//! Why a second implementation? Generating one token of a small model is a few hundred tiny
//! matrix-vector products. Through tensor operations each of them pays a fixed cost (allocation,
//! dispatch, shape checks) far larger than its arithmetic. Written as loops, the arithmetic is all
//! that is left. A test checks that it gives the logits of [`Gpt::forward_cached`] at every step.

use candle_core::cpu::erf::erf_f32;
use candle_core::DType;
use rayon::prelude::*;

use super::config::{GptConfig, Mlp, Norm, Positions};
use super::fused::{dot, vectorized, Real};
use super::gpt::Gpt;
use crate::{Error, Result};

/// One layer's weights as row-major `f32` vectors (`w[i * n_in + j]`, PyTorch's layout).
struct LayerWeights {
    ln_1: (Vec<f32>, Option<Vec<f32>>),
    c_attn: (Vec<f32>, Option<Vec<f32>>),
    attn_proj: (Vec<f32>, Option<Vec<f32>>),
    ln_2: (Vec<f32>, Option<Vec<f32>>),
    c_fc: (Vec<f32>, Option<Vec<f32>>),
    mlp_proj: (Vec<f32>, Option<Vec<f32>>),
}

pub struct CpuDecoder {
    cfg: GptConfig,
    wte: Vec<f32>,
    wpe: Option<Vec<f32>>,
    layers: Vec<LayerWeights>,
    ln_f: (Vec<f32>, Option<Vec<f32>>),
    /// `None` when tied to `wte`.
    lm_head: Option<Vec<f32>>,
    /// RoPE `cos`/`sin`, `(block_size, hd/2)`: the tables of [`super::rope::tables`].
    rope: Option<(Vec<f32>, Vec<f32>)>,
    /// Keys and values per layer, `(block_size, n_kv_head·hd)`.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    /// Tokens in the cache.
    len: usize,
}

impl CpuDecoder {
    /// Copies the model's weights into plain vectors.
    pub fn new(model: &Gpt) -> Result<Self> {
        let cfg = model.config().clone();
        let get = |name: &str| -> Result<Vec<f32>> {
            let var = model
                .params()
                .get(name)
                .ok_or_else(|| Error::Invalid(format!("missing weight `{name}`")))?;
            Ok(var.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let maybe = |name: &str| model.params().get(name).map(|_| get(name)).transpose();
        let pair = |name: &str| -> Result<(Vec<f32>, Option<Vec<f32>>)> {
            Ok((
                get(&format!("{name}.weight"))?,
                maybe(&format!("{name}.bias"))?,
            ))
        };
        let layers = (0..cfg.n_layer)
            .map(|i| {
                Ok(LayerWeights {
                    ln_1: pair(&format!("h.{i}.ln_1"))?,
                    c_attn: pair(&format!("h.{i}.attn.c_attn"))?,
                    attn_proj: pair(&format!("h.{i}.attn.c_proj"))?,
                    ln_2: pair(&format!("h.{i}.ln_2"))?,
                    c_fc: pair(&format!("h.{i}.mlp.c_fc"))?,
                    mlp_proj: pair(&format!("h.{i}.mlp.c_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let hd = cfg.head_dim();
        let rope = match cfg.positions {
            Positions::Learned => None,
            Positions::Rope { theta } => Some(super::rope::tables(theta, hd, cfg.block_size)),
        };
        let kv = cfg.n_kv_head * hd;
        Ok(CpuDecoder {
            wte: get("wte.weight")?,
            wpe: maybe("wpe.weight")?,
            ln_f: pair("ln_f")?,
            lm_head: if cfg.tied_embeddings {
                None
            } else {
                Some(get("lm_head.weight")?)
            },
            rope,
            k_cache: vec![vec![0.0; cfg.block_size * kv]; cfg.n_layer],
            v_cache: vec![vec![0.0; cfg.block_size * kv]; cfg.n_layer],
            len: 0,
            layers,
            cfg,
        })
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token (the next one is at position 0).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Runs one token at the next position and returns the logits of the token after it.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (c, p) = (cfg.n_embd, self.len);
        if p >= cfg.block_size {
            return Err(Error::Invalid(format!(
                "the context of {} tokens is full",
                cfg.block_size
            )));
        }
        if token as usize >= cfg.vocab_size {
            return Err(Error::Invalid(format!(
                "token id {token} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim());
        let group = nh / nkv;
        let mut x = self.wte[token as usize * c..(token as usize + 1) * c].to_vec();
        if let Some(wpe) = &self.wpe {
            x.iter_mut()
                .zip(&wpe[p * c..(p + 1) * c])
                .for_each(|(a, b)| *a += b);
        }
        for (l, w) in self.layers.iter().enumerate() {
            // Attention.
            let h = norm(&x, &w.ln_1, cfg);
            let mut qkv = matvec(dense(&w.c_attn), &h);
            if let Some((cos, sin)) = &self.rope {
                let (cos, sin) = (
                    &cos[p * hd / 2..(p + 1) * hd / 2],
                    &sin[p * hd / 2..(p + 1) * hd / 2],
                );
                for head in qkv[..(nh + nkv) * hd].chunks_exact_mut(hd) {
                    rotate_half(head, cos, sin);
                }
            }
            let kv = nkv * hd;
            self.k_cache[l][p * kv..(p + 1) * kv].copy_from_slice(&qkv[nh * hd..nh * hd + kv]);
            self.v_cache[l][p * kv..(p + 1) * kv]
                .copy_from_slice(&qkv[nh * hd + kv..nh * hd + 2 * kv]);
            let (keys, values) = (&self.k_cache[l], &self.v_cache[l]);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut y = vec![0.0f32; nh * hd];
            let mut att = vec![0.0f32; p + 1];
            for head in 0..nh {
                let q = &qkv[head * hd..(head + 1) * hd];
                let kv_off = (head / group) * hd;
                for (t, a) in att.iter_mut().enumerate() {
                    *a = dot(q, &keys[t * kv + kv_off..t * kv + kv_off + hd]) * scale;
                }
                softmax(&mut att);
                let out = &mut y[head * hd..(head + 1) * hd];
                for (t, &a) in att.iter().enumerate() {
                    out.iter_mut()
                        .zip(&values[t * kv + kv_off..t * kv + kv_off + hd])
                        .for_each(|(o, v)| *o += a * v);
                }
            }
            add(&mut x, &matvec(dense(&w.attn_proj), &y));
            // MLP.
            let h = norm(&x, &w.ln_2, cfg);
            let a = matvec(dense(&w.c_fc), &h);
            let a: Vec<f32> = match cfg.mlp {
                Mlp::Gelu => a
                    .iter()
                    .map(|&v| (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v)
                    .collect(),
                Mlp::SwiGlu { hidden } => a[..hidden]
                    .iter()
                    .zip(&a[hidden..])
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                    .collect(),
            };
            add(&mut x, &matvec(dense(&w.mlp_proj), &a));
        }
        self.len += 1;
        let x = norm(&x, &self.ln_f, cfg);
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        Ok(matvec((head, None), &x))
    }
}

/// `W x + b` for `W` of shape `(rows, x.len())`; rows in parallel when the matrix is big.
fn matvec((w, b): (&[f32], Option<&Vec<f32>>), x: &[f32]) -> Vec<f32> {
    let n = x.len();
    let rows = w.len() / n;
    let mut out = vec![0.0f32; rows];
    if w.len() >= 1 << 18 {
        out.par_chunks_mut(64).enumerate().for_each(|(chunk, o)| {
            for (i, v) in o.iter_mut().enumerate() {
                let r = chunk * 64 + i;
                *v = dot_product(&w[r * n..(r + 1) * n], x);
            }
        });
    } else {
        for (r, v) in out.iter_mut().enumerate() {
            *v = dot_product(&w[r * n..(r + 1) * n], x);
        }
    }
    if let Some(b) = b {
        add(&mut out, b);
    }
    out
}

fn dense((w, b): &(Vec<f32>, Option<Vec<f32>>)) -> (&[f32], Option<&Vec<f32>>) {
    (w, b.as_ref())
}

// The dot product of the fused kernels (eight lanes), compiled for the widest vector
// instructions this CPU has (see `vectorized!`).
vectorized!(dot_product, (a: &[T], b: &[T]) -> T, dot(a, b));

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn norm(x: &[f32], (w, b): &(Vec<f32>, Option<Vec<f32>>), cfg: &GptConfig) -> Vec<f32> {
    let n = x.len() as f32;
    let eps = cfg.norm_eps as f32;
    let (mean, inv) = match cfg.norm {
        Norm::LayerNorm => {
            let mean = x.iter().sum::<f32>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            (mean, 1.0 / (var + eps).sqrt())
        }
        Norm::RmsNorm => (
            0.0,
            1.0 / (x.iter().map(|v| v * v).sum::<f32>() / n + eps).sqrt(),
        ),
    };
    let mut out: Vec<f32> = x.iter().zip(w).map(|(v, g)| (v - mean) * inv * g).collect();
    if let Some(b) = b {
        add(&mut out, b);
    }
    out
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// RoPE on one head, pairing `j` with `j + hd/2` (see [`super::rope`]).
fn rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        x[j] = a * cos[j] - b * sin[j];
        x[j + half] = b * cos[j] + a * sin[j];
    }
}
