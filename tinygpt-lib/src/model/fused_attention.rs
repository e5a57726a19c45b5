//! Document-masked causal attention as one CPU kernel, forward and backward.
//!
//! The composed attention ([`super::attention`]) builds the `(B, nh, T, T)` scores, adds the
//! `(B, 1, T, T)` mask, softmaxes and multiplies by the values: each step a new big tensor,
//! plus the transposes and copies that put heads and time in the right order, and all of it
//! again backward. Yet most of that square is masked: token `i` sees only the tokens of *its own
//! story* up to itself, `j ∈ [start(i), i]`, where `start(i)` is where its story begins in the
//! row. With TinyStories' ~180-token stories in 256-token rows that is a small part of the
//! causal triangle.
//!
//! Here, for each batch row `b` and key/value head `kh` (in parallel), and for each query head
//! `h` that shares it and each token `i`:
//!
//! ```text
//! s_j = q_i · k_j / √hd           for j in start(i)..=i   (nothing else is ever computed)
//! p   = softmax(s)
//! y_i = Σ_j p_j v_j
//! ```
//!
//! Backward recomputes `p` (cheaper than storing the scores) and, with `dy_i` the gradient of
//! `y_i`:
//!
//! ```text
//! dp_j = dy_i · v_j     D = Σ_j p_j dp_j     ds_j = p_j (dp_j − D)
//! dq_i = Σ_j ds_j k_j / √hd     dk_j += ds_j q_i / √hd     dv_j += p_j dy_i
//! ```
//!
//! The kernel reads queries, keys and values straight from `c_attn`'s output `(B, T, (nh +
//! 2·nkv)·hd)` and writes `(B, T, nh·hd)`, the layout `c_proj` wants: no transposes at all.
//! Tests check it against the composed attention in value and gradient, and by finite
//! differences through the whole model.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{slice, softmax_in_place, vectorized, Real};
use crate::Result;

/// Whether the fused attention runs for this device and compute dtype: f32 or f64 on the CPU.
pub fn available(device: &candle_core::Device, dtype: DType) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::F64)
}

/// Where each token's story begins in its row: what the document mask says, in `B·T` numbers.
#[derive(Clone, Debug)]
pub struct Documents {
    /// `start[b·T + i]`: the first position of the run of tokens with `i`'s document id.
    start: Arc<Vec<u32>>,
    batch: usize,
    time: usize,
}

impl Documents {
    /// From the loader's document ids `(B, T)`, `u32`. A story is a run of equal ids (the loader
    /// numbers the stories of a row in order), so token `i` sees `start(i)..=i`.
    pub fn new(doc: &Tensor) -> Result<Self> {
        let (batch, time) = doc.dims2()?;
        let ids = doc.flatten_all()?.to_vec1::<u32>()?;
        let mut start = vec![0u32; ids.len()];
        for (row, ids) in ids.chunks(time).enumerate() {
            for i in 1..time {
                let k = row * time + i;
                start[k] = if ids[i] == ids[i - 1] {
                    start[k - 1]
                } else {
                    i as u32
                };
            }
        }
        Ok(Documents {
            start: Arc::new(start),
            batch,
            time,
        })
    }

    fn start(&self, b: usize, i: usize) -> usize {
        self.start[b * self.time + i] as usize
    }
}

/// `qkv` `(B, T, (n_head + 2·n_kv_head)·hd)` (queries, keys, values side by side, as `c_attn`
/// makes them) → the heads' outputs `(B, T, n_head·hd)`. Call only when [`available`].
pub fn attention(
    qkv: &Tensor,
    docs: &Documents,
    n_head: usize,
    n_kv_head: usize,
) -> Result<Tensor> {
    let (b, t, width) = qkv.dims3()?;
    let hd = width / (n_head + 2 * n_kv_head);
    if (b, t) != (docs.batch, docs.time) || hd * (n_head + 2 * n_kv_head) != width {
        return Err(crate::Error::Invalid(format!(
            "fused attention: qkv {:?} does not fit documents ({}, {}) with {n_head} query and \
             {n_kv_head} key/value heads",
            qkv.dims(),
            docs.batch,
            docs.time
        )));
    }
    let op = DocumentAttention {
        docs: docs.clone(),
        n_head,
        n_kv_head,
        hd,
    };
    Ok(qkv.contiguous()?.apply_op1(op)?)
}

#[derive(Clone)]
struct DocumentAttention {
    docs: Documents,
    n_head: usize,
    n_kv_head: usize,
    hd: usize,
}

/// One `(batch row, key/value head)` pair's share of the work.
///
/// The inner loops are all `y += a·x` over contiguous numbers, the form compilers turn into
/// vector instructions: a score row `q · k_j` for all `j` at once is `Σ_d q[d] · kᵀ[d][j..]`,
/// so the keys (and, for backward, the values) are gathered transposed, `(hd, T)`. Rows of
/// queries, keys and values are read where `c_attn` wrote them.
struct Task<'a, T> {
    op: &'a DocumentAttention,
    qkv: &'a [T],
    b: usize,
    kh: usize,
    /// This head's keys transposed, `(hd, T)`, and its values transposed (backward only).
    kt: Vec<T>,
    vt: Vec<T>,
}

impl<'a, T: Real> Task<'a, T> {
    fn new(op: &'a DocumentAttention, qkv: &'a [T], b: usize, kh: usize, backward: bool) -> Self {
        let mut task = Task {
            op,
            qkv,
            b,
            kh,
            kt: vec![],
            vt: vec![],
        };
        task.kt = task.transposed(task.key_slot());
        if backward {
            task.vt = task.transposed(task.value_slot());
        }
        task
    }

    fn key_slot(&self) -> usize {
        self.op.n_head + self.kh
    }

    fn value_slot(&self) -> usize {
        self.op.n_head + self.op.n_kv_head + self.kh
    }

    /// Head `slot` of every token, `(hd, T)`.
    fn transposed(&self, slot: usize) -> Vec<T> {
        let (t, hd) = (self.op.docs.time, self.op.hd);
        let mut m = vec![T::zero(); t * hd];
        for i in 0..t {
            for (d, &x) in self.head(i, slot).iter().enumerate() {
                m[d * t + i] = x;
            }
        }
        m
    }

    /// Head `slot` (queries first, then keys, then values) of token `i`: `hd` numbers.
    #[inline(always)]
    fn head(&self, i: usize, slot: usize) -> &'a [T] {
        let op = self.op;
        let width = (op.n_head + 2 * op.n_kv_head) * op.hd;
        let at = (self.b * op.docs.time + i) * width + slot * op.hd;
        &self.qkv[at..at + op.hd]
    }

    /// The query heads that share this key/value head.
    fn query_heads(&self) -> std::ops::Range<usize> {
        let g = self.op.n_head / self.op.n_kv_head;
        self.kh * g..(self.kh + 1) * g
    }

    /// `out[j − start] = Σ_d a[d] · mt[d][j]` for `j` in `start..=i`: `a` against the rows
    /// `start..=i` of the matrix whose transpose `mt` `(hd, T)` is given.
    #[inline(always)]
    fn products(&self, a: &[T], mt: &[T], start: usize, i: usize, out: &mut [T]) {
        let t = self.op.docs.time;
        let out = &mut out[..i - start + 1];
        out.iter_mut().for_each(|o| *o = T::zero());
        for (d, &a_d) in a.iter().enumerate() {
            axpy(out, a_d, &mt[d * t + start..=d * t + i]);
        }
    }

    /// `p = softmax(q · k_j / √hd)` for `j` in `start..=i`, into `p[..i − start + 1]`.
    #[inline(always)]
    fn probabilities(&self, q: &[T], start: usize, i: usize, p: &mut [T]) {
        let scale = T::from_f64(1.0 / (self.op.hd as f64).sqrt());
        self.products(q, &self.kt, start, i, p);
        softmax_in_place(&mut p[..i - start + 1], scale);
    }

    /// The outputs of this task's query heads, `(g, T, hd)`.
    #[inline(always)]
    fn forward(&self) -> Vec<T> {
        let (t, hd) = (self.op.docs.time, self.op.hd);
        let heads = self.query_heads();
        let mut y = vec![T::zero(); heads.len() * t * hd];
        let mut p = vec![T::zero(); t];
        for (n, h) in heads.enumerate() {
            for i in 0..t {
                let start = self.op.docs.start(self.b, i);
                self.probabilities(self.head(i, h), start, i, &mut p);
                let y_i = &mut y[(n * t + i) * hd..(n * t + i + 1) * hd];
                for (j, &p_j) in (start..=i).zip(&p) {
                    axpy(y_i, p_j, self.head(j, self.value_slot()));
                }
            }
        }
        y
    }

    /// The gradients `(dq (g, T, hd), dk (T, hd), dv (T, hd))` for `dy` `(B, T, nh·hd)`.
    #[inline(always)]
    fn backward(&self, dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let op = self.op;
        let (t, hd) = (op.docs.time, op.hd);
        let scale = T::from_f64(1.0 / (hd as f64).sqrt());
        let heads = self.query_heads();
        let mut dq = vec![T::zero(); heads.len() * t * hd];
        // dk and dv are accumulated transposed, (hd, T), like the scores: long contiguous rows.
        let (mut dkt, mut dvt) = (vec![T::zero(); t * hd], vec![T::zero(); t * hd]);
        let (mut p, mut ds) = (vec![T::zero(); t], vec![T::zero(); t]);
        for (n, h) in heads.enumerate() {
            for i in 0..t {
                let start = op.docs.start(self.b, i);
                let len = i - start + 1;
                let q = self.head(i, h);
                self.probabilities(q, start, i, &mut p);
                let at = (self.b * t + i) * op.n_head * hd + h * hd;
                let dy_i = &dy[at..at + hd];
                // dp_j = dy_i · v_j, then ds_j = p_j (dp_j − Σ p·dp) / √hd.
                self.products(dy_i, &self.vt, start, i, &mut ds);
                let (p, ds) = (&p[..len], &mut ds[..len]);
                let d = p
                    .iter()
                    .zip(ds.iter())
                    .fold(T::zero(), |s, (&a, &b)| s + a * b);
                for (ds_j, &p_j) in ds.iter_mut().zip(p) {
                    *ds_j = p_j * (*ds_j - d) * scale;
                }
                let dq_i = &mut dq[(n * t + i) * hd..(n * t + i + 1) * hd];
                for (j, &ds_j) in (start..=i).zip(ds.iter()) {
                    axpy(dq_i, ds_j, self.head(j, self.key_slot()));
                }
                for d in 0..hd {
                    axpy(&mut dkt[d * t + start..=d * t + i], q[d], ds);
                    axpy(&mut dvt[d * t + start..=d * t + i], dy_i[d], p);
                }
            }
        }
        (dq, transpose(&dkt, hd, t), transpose(&dvt, hd, t))
    }
}

/// `(rows, cols)` → `(cols, rows)`.
fn transpose<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

vectorized!(forward_task, forward_task_avx2, (task: &Task<'_, T>) -> Vec<T>, task.forward());
vectorized!(backward_task, backward_task_avx2, (task: &Task<'_, T>, dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>), task.backward(dy));

/// `y += a·x`.
#[inline(always)]
fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

impl DocumentAttention {
    fn tasks(&self) -> Vec<(usize, usize)> {
        (0..self.docs.batch)
            .flat_map(|b| (0..self.n_kv_head).map(move |kh| (b, kh)))
            .collect()
    }

    fn forward<T: Real>(&self, qkv: &[T]) -> Vec<T> {
        let (t, hd, nh) = (self.docs.time, self.hd, self.n_head);
        let g = nh / self.n_kv_head;
        let parts: Vec<Vec<T>> = self
            .tasks()
            .into_par_iter()
            .map(|(b, kh)| forward_task(&Task::new(self, qkv, b, kh, false)))
            .collect();
        // Scatter (g, T, hd) per task into (B, T, nh·hd).
        let mut y = vec![T::zero(); self.docs.batch * t * nh * hd];
        for ((b, kh), part) in self.tasks().into_iter().zip(parts) {
            for (n, h) in (kh * g..(kh + 1) * g).enumerate() {
                for i in 0..t {
                    let to = (b * t + i) * nh * hd + h * hd;
                    y[to..to + hd].copy_from_slice(&part[(n * t + i) * hd..(n * t + i + 1) * hd]);
                }
            }
        }
        y
    }

    fn backward<T: Real>(&self, qkv: &[T], dy: &[T]) -> Vec<T> {
        let (t, hd, nh, nkv) = (self.docs.time, self.hd, self.n_head, self.n_kv_head);
        let g = nh / nkv;
        let width = (nh + 2 * nkv) * hd;
        let parts: Vec<_> = self
            .tasks()
            .into_par_iter()
            .map(|(b, kh)| backward_task(&Task::new(self, qkv, b, kh, true), dy))
            .collect();
        let mut dqkv = vec![T::zero(); qkv.len()];
        for ((b, kh), (dq, dk, dv)) in self.tasks().into_iter().zip(parts) {
            for i in 0..t {
                let row = (b * t + i) * width;
                for (n, h) in (kh * g..(kh + 1) * g).enumerate() {
                    dqkv[row + h * hd..row + (h + 1) * hd]
                        .copy_from_slice(&dq[(n * t + i) * hd..(n * t + i + 1) * hd]);
                }
                let k_at = row + (nh + kh) * hd;
                dqkv[k_at..k_at + hd].copy_from_slice(&dk[i * hd..(i + 1) * hd]);
                let v_at = row + (nh + nkv + kh) * hd;
                dqkv[v_at..v_at + hd].copy_from_slice(&dv[i * hd..(i + 1) * hd]);
            }
        }
        dqkv
    }
}

impl CustomOp1 for DocumentAttention {
    fn name(&self) -> &'static str {
        "tinygpt-document-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(slice::<f32>(s, l)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(slice::<f64>(s, l)?)),
            _ => candle_core::bail!("fused attention: f32 or f64 only"),
        };
        let shape = Shape::from((self.docs.batch, self.docs.time, self.n_head * self.hd));
        Ok((out, shape))
    }

    fn bwd(&self, qkv: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &dy.contiguous()?,
            &AttentionBackward(self.clone()),
        )?))
    }
}

/// `dqkv` from `qkv` and `dy`.
struct AttentionBackward(DocumentAttention);

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "tinygpt-document-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.0.backward(slice(s1, l1)?, slice(s2, l2)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.0.backward(slice(s1, l1)?, slice(s2, l2)?)),
            _ => candle_core::bail!("fused attention backward: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
}
