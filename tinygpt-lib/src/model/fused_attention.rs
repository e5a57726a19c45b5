//! Document-masked causal attention as one CPU kernel, forward and backward (and, opt-in, as
//! CUDA kernels of `fused.cu`: see [`available`]).
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
//! 2·nkv)·hd)` and writes `(B, T, nh·hd)`, the layout `c_proj` wants: no transposes of the
//! big tensors. The sums run four queries at a time, like a matrix product's inner kernel,
//! so that each key and value loaded serves four queries (see `Task`): about twice as fast
//! as one query at a time on the 2-core CPU (from a quarter of a training step to a seventh).
//! With AVX-512 they also run three chunks of 16 keys (or of a head's numbers) at a time, so
//! that each query number loaded serves 48 of them: with one chunk, the loads set the pace
//! (`perf`: the three kernels from 9.2% to 6.0% of a `small` training step's samples).
//! Tests check it against the composed attention in value and gradient, and by finite
//! differences through the whole model.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{dot, par_rows, slice, softmax_in_place, vectorized, Real};
use crate::Result;

/// Whether the fused attention runs for this device and compute dtype: f32 or f64 on the CPU;
/// on a CUDA GPU, f32 or bf16 when the environment says `TINYGPT_CUDA_ATTENTION=fused` (or
/// `fused-warp`).
///
/// The CUDA kernels are in `fused.cu`, flash style: no `(B, nh, T, T)` tensors. In bf16 with
/// heads of 64 or 128 numbers on a GPU of compute capability 8.0 or later they run on tensor
/// cores (`mma.sync`, FlashAttention-2's tiling); otherwise, or with `fused-warp`, one warp per
/// query or key on the CUDA cores. Both are opt-in until a GPU run has checked them:
/// `tests/cuda.rs` compares them with this CPU kernel in value and gradient, and
/// `scripts/gpu-check.sh` times the step with and without them. (CI already runs their source on
/// the CPU under an emulation: `tests/cuda_emulated`.)
pub fn available(device: &candle_core::Device, dtype: DType) -> bool {
    match device {
        candle_core::Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => {
            let fused = std::env::var("TINYGPT_CUDA_ATTENTION");
            matches!(fused.as_deref(), Ok("fused" | "fused-warp"))
                && matches!(dtype, DType::F32 | DType::BF16)
        }
        _ => false,
    }
}

/// Where each token's story begins in its row: what the document mask says, in `B·T` numbers.
#[derive(Clone, Debug)]
pub struct Documents {
    /// `start[b·T + i]`: the first position of the run of tokens with `i`'s document id, as a
    /// `(B, T)` u32 tensor on the batch's device (on a GPU it is computed there: reading the ids
    /// back would make the CPU wait for the GPU at every batch).
    start: Tensor,
    /// The same numbers on the host, for the CPU kernel (empty on a GPU).
    host: Arc<Vec<u32>>,
    batch: usize,
    time: usize,
}

impl Documents {
    /// From the loader's document ids `(B, T)`, `u32`. A story is a run of equal ids (the loader
    /// numbers the stories of a row in order), so token `i` sees `start(i)..=i`.
    pub fn new(doc: &Tensor) -> Result<Self> {
        let (batch, time) = doc.dims2()?;
        let start = doc.contiguous()?.apply_op1_no_bwd(&DocumentStarts)?;
        let host = match doc.device() {
            candle_core::Device::Cpu => start.flatten_all()?.to_vec1::<u32>()?,
            _ => vec![],
        };
        Ok(Documents {
            start,
            host: Arc::new(host),
            batch,
            time,
        })
    }

    fn start(&self, b: usize, i: usize) -> usize {
        self.host[b * self.time + i] as usize
    }
}

/// `start` from the document ids `(B, T)` (u32), row by row: position `i` starts a story when
/// its id differs from `i − 1`'s.
struct DocumentStarts;

/// The CPU version of [`DocumentStarts`].
fn document_starts(ids: &[u32], time: usize) -> Vec<u32> {
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
    start
}

impl CustomOp1 for DocumentStarts {
    fn name(&self) -> &'static str {
        "tinygpt-document-starts"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let time = l.dims().last().copied().unwrap_or(1).max(1);
        let start = document_starts(slice::<u32>(s, l)?, time);
        Ok((CpuStorage::U32(start), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::document_starts((s, l))
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
    if !docs.start.device().same_device(qkv.device()) {
        return Err(crate::Error::Invalid(format!(
            "fused attention: qkv is on {:?} but the documents on {:?}: build them from the \
             batch's document ids",
            qkv.device().location(),
            docs.start.device().location()
        )));
    }
    #[cfg(feature = "cuda")]
    if qkv.device().is_cuda() && hd > super::fused_cuda::ATTENTION_MAX_HEAD {
        return Err(crate::Error::Invalid(format!(
            "fused attention on CUDA: heads of {hd} numbers, at most {} (unset \
             TINYGPT_CUDA_ATTENTION to use the composed attention)",
            super::fused_cuda::ATTENTION_MAX_HEAD
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

/// How many queries a tile holds (`R`) and how many numbers one pass of the inner loops covers
/// (`L`: a column chunk of scores, or a chunk of a head's `hd` numbers). A tile's `R × L`
/// running sums stay in registers while the loop over the other dimension streams through
/// memory: each number loaded is used `R` times (for f32 with AVX-512, `L` is one register).
const R: usize = 4;
const L: usize = 16;

/// `n` rounded up to a multiple of [`L`].
fn padded(n: usize) -> usize {
    n.div_ceil(L) * L
}

/// One `(batch row, key/value head)` pair's share of the work.
///
/// Queries are taken `R` at a time, consecutive tokens of one story: `i0..i0 + R` all see the
/// keys `start..=i` of their story, so the tile computes their scores against the columns
/// `start..=i0 + R − 1` together, and each row masks the few columns past itself. The matrix
/// products are three small kernels with their running sums in registers (see [`R`]):
/// [`scores`] (`q · k_j` for a tile), [`mix`] (`Σ_j p_j v_j`) and [`accumulate`] (`dk`, `dv`).
/// They need the keys and values both as rows and transposed, `(hd, T)`, copied once per task
/// with zeros around them so that a chunk of `L` never runs off the end.
struct Task<'a, T> {
    op: &'a DocumentAttention,
    qkv: &'a [T],
    b: usize,
    kh: usize,
    /// Columns of the transposed copies (`T` padded), and numbers of a padded row (`hd` padded).
    cols: usize,
    hdp: usize,
    /// Keys transposed `(hd, cols)`; values as rows `(cols, hdp)`.
    kt: Vec<T>,
    v: Vec<T>,
    /// Backward only: values transposed `(hd, cols)`, keys as rows `(cols, hdp)`.
    vt: Vec<T>,
    k: Vec<T>,
}

/// A tile of queries: tokens `i0..i0 + rows` (`rows ≤ R`) of one story that starts at `start`.
#[derive(Clone, Copy)]
struct Tile {
    i0: usize,
    rows: usize,
    start: usize,
}

impl Tile {
    /// Columns `start..start + width()` hold every key a row of the tile sees (padded).
    fn width(&self) -> usize {
        padded(self.i0 + self.rows - self.start)
    }

    /// How many keys row `r` sees (0 for the rows past `rows`).
    fn seen(&self, r: usize) -> usize {
        if r < self.rows {
            self.i0 + r - self.start + 1
        } else {
            0
        }
    }
}

impl<'a, T: Real> Task<'a, T> {
    fn new(op: &'a DocumentAttention, qkv: &'a [T], b: usize, kh: usize, backward: bool) -> Self {
        let (t, hd) = (op.docs.time, op.hd);
        let mut task = Task {
            op,
            qkv,
            b,
            kh,
            cols: padded(t) + L,
            hdp: padded(hd),
            kt: vec![],
            v: vec![],
            vt: vec![],
            k: vec![],
        };
        task.kt = task.transposed(task.key_slot());
        task.v = task.rows(task.value_slot());
        if backward {
            task.vt = task.transposed(task.value_slot());
            task.k = task.rows(task.key_slot());
        }
        task
    }

    fn key_slot(&self) -> usize {
        self.op.n_head + self.kh
    }

    fn value_slot(&self) -> usize {
        self.op.n_head + self.op.n_kv_head + self.kh
    }

    /// Head `slot` of every token, transposed: `(hd, cols)`, zeros past `T`.
    fn transposed(&self, slot: usize) -> Vec<T> {
        let (t, hd) = (self.op.docs.time, self.op.hd);
        let mut m = vec![T::zero(); hd * self.cols];
        let src = &self.qkv[self.at(0, slot)..];
        transpose_into(src, self.width(), t, hd, &mut m, self.cols);
        m
    }

    /// Head `slot` of every token as rows: `(cols, hdp)`, zeros past `T` and `hd`.
    fn rows(&self, slot: usize) -> Vec<T> {
        let (hd, hdp) = (self.op.hd, self.hdp);
        let mut m = vec![T::zero(); self.cols * hdp];
        for i in 0..self.op.docs.time {
            m[i * hdp..i * hdp + hd].copy_from_slice(self.head(i, slot));
        }
        m
    }

    /// Numbers per token in `qkv`: all its query, key and value heads.
    fn width(&self) -> usize {
        (self.op.n_head + 2 * self.op.n_kv_head) * self.op.hd
    }

    /// Where head `slot` (queries first, then keys, then values) of token `i` starts in `qkv`.
    #[inline(always)]
    fn at(&self, i: usize, slot: usize) -> usize {
        (self.b * self.op.docs.time + i) * self.width() + slot * self.op.hd
    }

    /// Head `slot` of token `i`: `hd` numbers.
    #[inline(always)]
    fn head(&self, i: usize, slot: usize) -> &'a [T] {
        let at = self.at(i, slot);
        &self.qkv[at..at + self.op.hd]
    }

    /// The query heads that share this key/value head.
    fn query_heads(&self) -> std::ops::Range<usize> {
        let g = self.op.n_head / self.op.n_kv_head;
        self.kh * g..(self.kh + 1) * g
    }

    /// This row's tiles: runs of at most `R` consecutive tokens of one story.
    fn tiles(&self) -> Vec<Tile> {
        let (docs, b) = (&self.op.docs, self.b);
        let mut tiles = vec![];
        let mut i0 = 0;
        while i0 < docs.time {
            let start = docs.start(b, i0);
            let mut rows = 1;
            while rows < R && i0 + rows < docs.time && docs.start(b, i0 + rows) == start {
                rows += 1;
            }
            tiles.push(Tile { i0, rows, start });
            i0 += rows;
        }
        tiles
    }

    /// The `R` rows of a tile, `rows(i)` for its tokens and zeros past them, side by side in
    /// `out` `(R, hd)`.
    #[inline(always)]
    fn gather<'b>(tile: Tile, rows: impl Fn(usize) -> &'b [T], out: &mut [T]) {
        let hd = out.len() / R;
        for (r, out) in out.chunks_exact_mut(hd).enumerate() {
            if r < tile.rows {
                out.copy_from_slice(rows(tile.i0 + r));
            } else {
                out.fill(T::zero());
            }
        }
    }

    /// The tile's probabilities into `p` `(R, cols)`: row `r` holds `softmax(q_r · k_j / √hd)`
    /// for the keys it sees and zeros in the rest of the tile's width.
    #[inline(always)]
    fn probabilities(&self, tile: Tile, q: &[T], p: &mut [T]) {
        let scale = T::from_f64(1.0 / (self.op.hd as f64).sqrt());
        let width = tile.width();
        scores(q, &self.kt, self.cols, tile.start, width, p);
        for r in 0..R {
            let row = &mut p[r * self.cols..r * self.cols + width];
            let seen = tile.seen(r);
            softmax_in_place(&mut row[..seen], scale);
            row[seen..].iter_mut().for_each(|x| *x = T::zero());
        }
    }

    /// The outputs of this task's query heads, `(g, T, hd)`.
    #[inline(always)]
    fn forward(&self) -> Vec<T> {
        let (t, hd, cols, hdp) = (self.op.docs.time, self.op.hd, self.cols, self.hdp);
        let heads = self.query_heads();
        let mut y = vec![T::zero(); heads.len() * t * hd];
        let (mut p, mut y_tile) = (vec![T::zero(); R * cols], vec![T::zero(); R * hdp]);
        let mut q = vec![T::zero(); R * hd];
        for (n, h) in heads.enumerate() {
            for tile in self.tiles() {
                Self::gather(tile, |i| self.head(i, h), &mut q);
                self.probabilities(tile, &q, &mut p);
                mix(
                    &p,
                    cols,
                    tile.width(),
                    &self.v,
                    hdp,
                    tile.start,
                    &mut y_tile,
                );
                for r in 0..tile.rows {
                    let at = (n * t + tile.i0 + r) * hd;
                    y[at..at + hd].copy_from_slice(&y_tile[r * hdp..r * hdp + hd]);
                }
            }
        }
        y
    }

    /// The gradients `(dq (g, T, hd), dk (T, hd), dv (T, hd))` for `dy` `(B, T, nh·hd)`.
    #[inline(always)]
    fn backward(&self, dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let op = self.op;
        let (t, hd, cols, hdp) = (op.docs.time, op.hd, self.cols, self.hdp);
        let scale = T::from_f64(1.0 / (hd as f64).sqrt());
        let heads = self.query_heads();
        let mut dq = vec![T::zero(); heads.len() * t * hd];
        // dk and dv are accumulated transposed, (hd, cols), like the scores: long rows.
        let (mut dkt, mut dvt) = (vec![T::zero(); hd * cols], vec![T::zero(); hd * cols]);
        let (mut p, mut ds) = (vec![T::zero(); R * cols], vec![T::zero(); R * cols]);
        let mut dq_tile = vec![T::zero(); R * hdp];
        let (mut q, mut dy_tile) = (vec![T::zero(); R * hd], vec![T::zero(); R * hd]);
        for (n, h) in heads.enumerate() {
            for tile in self.tiles() {
                let width = tile.width();
                Self::gather(tile, |i| self.head(i, h), &mut q);
                let dy_row = |i| {
                    let at = ((self.b * t + i) * op.n_head + h) * hd;
                    &dy[at..at + hd]
                };
                Self::gather(tile, dy_row, &mut dy_tile);
                self.probabilities(tile, &q, &mut p);
                // dp_j = dy_i · v_j, then ds_j = p_j (dp_j − Σ p·dp) / √hd (0 where p is).
                scores(&dy_tile, &self.vt, cols, tile.start, width, &mut ds);
                for r in 0..R {
                    let (p, ds) = (&p[r * cols..][..width], &mut ds[r * cols..][..width]);
                    let d = dot(p, ds);
                    for (ds_j, &p_j) in ds.iter_mut().zip(p) {
                        *ds_j = p_j * (*ds_j - d) * scale;
                    }
                }
                mix(&ds, cols, width, &self.k, hdp, tile.start, &mut dq_tile);
                for r in 0..tile.rows {
                    let at = (n * t + tile.i0 + r) * hd;
                    dq[at..at + hd].copy_from_slice(&dq_tile[r * hdp..r * hdp + hd]);
                }
                accumulate(&mut dkt, cols, tile.start, width, &q, &ds);
                accumulate(&mut dvt, cols, tile.start, width, &dy_tile, &p);
            }
        }
        (
            dq,
            transpose(&dkt, hd, cols, t),
            transpose(&dvt, hd, cols, t),
        )
    }
}

/// `0..n` (a multiple of [`L`]) as passes `(start, chunks)` of `chunks` runs of `L` numbers:
/// `most` at a time while they fit, then two, then one.
fn passes(n: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let left = (n - at) / L;
        let chunks = if left >= most { most } else { left.min(2) };
        (chunks > 0).then(|| {
            at += chunks * L;
            (at - chunks * L, chunks)
        })
    })
}

/// Calls `$f::<T, C>($args)` with the const `C` equal to `$chunks` (1, 2 or 3).
macro_rules! with_chunks {
    ($chunks:expr, $f:ident($($arg:expr),*)) => {
        match $chunks {
            3 => $f::<T, 3>($($arg),*),
            2 => $f::<T, 2>($($arg),*),
            _ => $f::<T, 1>($($arg),*),
        }
    };
}

/// `out[r][c] = Σ_d a[r][d] · mt[d][col0 + c]` for `c < width` (a multiple of `L`): the `R`
/// rows of `a` `(R, hd)` against the columns `col0..col0 + width` of a transposed matrix `mt`
/// `(hd, cols)`. `out` is `(R, cols)`. `REGS` chunks of `L` columns at a time (see
/// [`vectorized`]).
#[inline(always)]
fn scores_kernel<T: Real, const REGS: usize>(
    a: &[T],
    mt: &[T],
    cols: usize,
    col0: usize,
    width: usize,
    out: &mut [T],
) {
    for (c, chunks) in passes(width, REGS) {
        with_chunks!(chunks, scores_pass(a, mt, cols, col0, c, out));
    }
}

/// One pass of [`scores_kernel`]: columns `c..c + C·L`, their `R × C·L` sums in registers.
/// For every `d`, `C` loads of `mt` and `R` of `a` feed `R·C` multiply-adds: with `C = 1` the
/// loads, not the arithmetic, set the pace.
#[inline(always)]
fn scores_pass<T: Real, const C: usize>(
    a: &[T],
    mt: &[T],
    cols: usize,
    col0: usize,
    c: usize,
    out: &mut [T],
) {
    let hd = a.len() / R;
    let mut acc = [[[T::zero(); L]; C]; R];
    for d in 0..hd {
        let row = &mt[d * cols + col0 + c..];
        let m: [[T; L]; C] = std::array::from_fn(|j| row[j * L..][..L].try_into().unwrap());
        for r in 0..R {
            let a_rd = a[r * hd + d];
            for j in 0..C {
                for l in 0..L {
                    acc[r][j][l] = a_rd.mul_add(m[j][l], acc[r][j][l]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * cols + c..][..C * L].copy_from_slice(acc.as_flattened());
    }
}

/// `out[r] = Σ_c w[r][c] · m[row0 + c]` for `c < width`: `R` weightings of the rows
/// `row0..row0 + width` of `m` `(cols, hdp)`. `w` is `(R, cols)`, `out` `(R, hdp)`. `REGS`
/// chunks of `L` of the `hdp` numbers at a time.
#[inline(always)]
fn mix_kernel<T: Real, const REGS: usize>(
    w: &[T],
    cols: usize,
    width: usize,
    m: &[T],
    hdp: usize,
    row0: usize,
    out: &mut [T],
) {
    for (d0, chunks) in passes(hdp, REGS) {
        with_chunks!(chunks, mix_pass(w, cols, width, m, hdp, row0, d0, out));
    }
}

/// One pass of [`mix_kernel`]: the numbers `d0..d0 + C·L` of each output row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mix_pass<T: Real, const C: usize>(
    w: &[T],
    cols: usize,
    width: usize,
    m: &[T],
    hdp: usize,
    row0: usize,
    d0: usize,
    out: &mut [T],
) {
    let mut acc = [[[T::zero(); L]; C]; R];
    for c in 0..width {
        let row = &m[(row0 + c) * hdp + d0..];
        let row: [[T; L]; C] = std::array::from_fn(|j| row[j * L..][..L].try_into().unwrap());
        for r in 0..R {
            let w_rc = w[r * cols + c];
            for j in 0..C {
                for l in 0..L {
                    acc[r][j][l] = w_rc.mul_add(row[j][l], acc[r][j][l]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * hdp + d0..][..C * L].copy_from_slice(acc.as_flattened());
    }
}

/// `mt[d][col0 + c] += Σ_r a[r][d] · w[r][c]` for `c < width`: the `R` rank-one updates of a
/// transposed gradient `mt` `(hd, cols)` by a tile, `a` `(R, hd)`, `w` `(R, cols)`. `REGS`
/// chunks of `L` columns at a time.
#[inline(always)]
fn accumulate_kernel<T: Real, const REGS: usize>(
    mt: &mut [T],
    cols: usize,
    col0: usize,
    width: usize,
    a: &[T],
    w: &[T],
) {
    for (c, chunks) in passes(width, REGS) {
        with_chunks!(chunks, accumulate_pass(mt, cols, col0, c, a, w));
    }
}

/// One pass of [`accumulate_kernel`]: columns `c..c + C·L`, the tile's `R × C·L` weights in
/// registers while each row `d` of `mt` is read, updated and written back.
#[inline(always)]
fn accumulate_pass<T: Real, const C: usize>(
    mt: &mut [T],
    cols: usize,
    col0: usize,
    c: usize,
    a: &[T],
    w: &[T],
) {
    let hd = a.len() / R;
    let w: [[[T; L]; C]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|j| w[r * cols + c + j * L..][..L].try_into().unwrap())
    });
    for d in 0..hd {
        let out = &mut mt[d * cols + col0 + c..][..C * L];
        let mut acc: [[T; L]; C] = std::array::from_fn(|j| out[j * L..][..L].try_into().unwrap());
        for r in 0..R {
            let a_rd = a[r * hd + d];
            for j in 0..C {
                for l in 0..L {
                    acc[j][l] = a_rd.mul_add(w[r][j][l], acc[j][l]);
                }
            }
        }
        out.copy_from_slice(acc.as_flattened());
    }
}

// Each kernel is a function of its own, compiled for the widest instructions the CPU has: small
// functions whose running sums and pointers all fit in registers. (Inlined into the one large
// task function, they reloaded their pointers from the stack at every step of the inner loops.)
vectorized!(scores, REGS, (a: &[T], mt: &[T], cols: usize, col0: usize, width: usize, out: &mut [T]) -> (), scores_kernel::<T, REGS>(a, mt, cols, col0, width, out));
vectorized!(mix, REGS, (w: &[T], cols: usize, width: usize, m: &[T], hdp: usize, row0: usize, out: &mut [T]) -> (), mix_kernel::<T, REGS>(w, cols, width, m, hdp, row0, out));
vectorized!(accumulate, REGS, (mt: &mut [T], cols: usize, col0: usize, width: usize, a: &[T], w: &[T]) -> (), accumulate_kernel::<T, REGS>(mt, cols, col0, width, a, w));

/// The first `n` columns of `m` `(rows, cols)`, transposed: `(n, rows)`.
fn transpose<T: Real>(m: &[T], rows: usize, cols: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n * rows];
    transpose_into(m, cols, rows, n, &mut out, rows);
    out
}

/// `dst[c][r] = src[r][c]` for a `(rows, cols)` block of `src` whose rows are `src_stride`
/// apart, into rows of `dst` `dst_stride` apart. Sixteen source rows at a time, so that each
/// row of `dst` gets sixteen numbers side by side (one cache line) from source rows that stay in
/// cache; element by element, every number landed in another line of `dst`.
fn transpose_into<T: Real>(
    src: &[T],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [T],
    dst_stride: usize,
) {
    for r0 in (0..rows).step_by(16) {
        let r1 = (r0 + 16).min(rows);
        for c in 0..cols {
            let out = &mut dst[c * dst_stride + r0..c * dst_stride + r1];
            for (k, out) in out.iter_mut().enumerate() {
                *out = src[(r0 + k) * src_stride + c];
            }
        }
    }
}

vectorized!(forward_task, (task: &Task<'_, T>) -> Vec<T>, task.forward());
vectorized!(backward_task, (task: &Task<'_, T>, dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>), task.backward(dy));

impl DocumentAttention {
    #[cfg(feature = "cuda")]
    fn dims(&self) -> super::fused_cuda::AttentionDims {
        super::fused_cuda::AttentionDims {
            b: self.docs.batch,
            t: self.docs.time,
            nh: self.n_head,
            nkv: self.n_kv_head,
            hd: self.hd,
        }
    }

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
        // Scatter (g, T, hd) per task into (B, T, nh·hd), one batch row per thread (the tasks
        // are numbered b · n_kv_head + kh).
        par_rows(self.docs.batch * t * nh * hd, t * nh * hd, |b, y| {
            for kh in 0..self.n_kv_head {
                let part = &parts[b * self.n_kv_head + kh];
                for (n, h) in (kh * g..(kh + 1) * g).enumerate() {
                    for i in 0..t {
                        let to = i * nh * hd + h * hd;
                        y[to..to + hd].copy_from_slice(&part[(n * t + i) * hd..][..hd]);
                    }
                }
            }
        })
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
        // Scatter the tasks' (dq, dk, dv) into (B, T, width), one batch row per thread.
        par_rows(qkv.len(), t * width, |b, dqkv| {
            for kh in 0..nkv {
                let (dq, dk, dv) = &parts[b * nkv + kh];
                for i in 0..t {
                    let row = i * width;
                    for (n, h) in (kh * g..(kh + 1) * g).enumerate() {
                        dqkv[row + h * hd..][..hd].copy_from_slice(&dq[(n * t + i) * hd..][..hd]);
                    }
                    let k_at = row + (nh + kh) * hd;
                    dqkv[k_at..k_at + hd].copy_from_slice(&dk[i * hd..(i + 1) * hd]);
                    let v_at = row + (nh + nkv + kh) * hd;
                    dqkv[v_at..v_at + hd].copy_from_slice(&dv[i * hd..(i + 1) * hd]);
                }
            }
        })
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (start, ls) = self.docs.start.storage_and_layout();
        let candle_core::Storage::Cuda(start) = &*start else {
            candle_core::bail!("fused attention: documents not on the GPU")
        };
        super::fused_cuda::attention_forward((s, l), (start, ls), self.dims())
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op3_no_bwd(
            y,
            &dy.contiguous()?,
            &AttentionBackward(self.clone()),
        )?))
    }
}

/// `dqkv` from `qkv`, the forward's output `y` (the tensor-core kernels take `D_i = dy_i · y_i`
/// from it) and `dy`.
struct AttentionBackward(DocumentAttention);

impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "tinygpt-document-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _y: &CpuStorage,
        _ly: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.0.backward(slice(s1, l1)?, slice(s3, l3)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.0.backward(slice(s1, l1)?, slice(s3, l3)?)),
            _ => candle_core::bail!("fused attention backward: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let op = &self.0;
        let (start, ls) = op.docs.start.storage_and_layout();
        let candle_core::Storage::Cuda(start) = &*start else {
            candle_core::bail!("fused attention backward: documents not on the GPU")
        };
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        super::fused_cuda::attention_backward(inputs, (start, ls), op.dims())
    }
}
