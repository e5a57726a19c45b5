//! Rotary position embeddings (RoPE; Su et al. 2021, as in Llama).
//!
//! Split each head's `hd` numbers into pairs and rotate pair `j` of the token at position `p` by
//! the angle `p · θ^(-2j/hd)`. A query at position `m` and a key at position `n` then meet with
//! a score that depends on `m − n` only: attention sees *distances*, not absolute places, and
//! nothing is added to the token embedding.
//!
//! Pairs: we pair number `j` with number `j + hd/2` ("rotate half", as Hugging Face's Llama).
//! llama2.c pairs neighbours `(2j, 2j+1)`; its importer permutes the query/key weights to match.
//! Written with differentiable tensor operations (candle-nn's fused `rope` kernels have no backward).

use candle_core::{DType, Device, Tensor};

use crate::Result;

#[derive(Clone, Debug)]
pub struct Rope {
    /// `cos(p · freq_j)` and `sin(p · freq_j)`, shape `(max_positions, hd/2)`, f32.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(theta: f32, head_dim: usize, max_positions: usize, device: &Device) -> Result<Self> {
        let (cos, sin) = tables(theta, head_dim, max_positions);
        let half = head_dim / 2;
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    /// The angles for the positions `pos` of shape `(B, T)`: `(cos, sin)`, each `(B, 1, T, hd/2)`
    /// in `dtype`, ready to broadcast over the heads. Computed once per forward pass.
    pub fn angles(&self, pos: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = pos.dims2()?;
        let half = self.cos.dim(1)?;
        let flat = pos.flatten_all()?;
        let pick = |table: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&flat, 0)?
                .reshape((b, 1, t, half))?
                .to_dtype(dtype)?)
        };
        Ok((pick(&self.cos)?, pick(&self.sin)?))
    }
}

/// `cos(p · θ^(-2j/hd))` and `sin(…)` for every position `p < max_positions` and pair
/// `j < hd/2`, row-major `(max_positions, hd/2)`, computed in f64 and stored as f32.
pub fn tables(theta: f32, head_dim: usize, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for p in 0..max_positions {
        for j in 0..half {
            let angle = p as f64 * (theta as f64).powf(-2.0 * j as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotates `x` of shape `(B, H, T, hd)`: `[x1, x2] → [x1·cos − x2·sin, x2·cos + x1·sin]`.
pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(3)? / 2;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[&r1, &r2], 3)?)
}
