//! A parameter table, like PyTorch's `torchinfo`: every tensor with its shape and size.
//!
//! Tied weights are counted once. A per-module listing (what torchinfo prints) meets the tied
//! matrix twice, in `wte` and in `lm_head`: the original project's summary said 86M parameters
//! for a 61M model for that reason. Both totals are shown so the difference is visible.

use std::fmt;

use super::gpt::Gpt;

pub struct ParamSummary {
    /// `(name, shape, count)` in reading order (layers by number).
    pub rows: Vec<(String, Vec<usize>, usize)>,
    /// Every trainable number once.
    pub total: usize,
    /// What a per-module listing adds up to: `total` plus the tied `lm_head` counted again.
    pub listed: usize,
    /// `total` without the position embedding `wpe`, nanoGPT's "non-embedding" convention… with
    /// the token embedding kept because it is also the output layer.
    pub without_wpe: usize,
    pub tied_embeddings: bool,
}

impl ParamSummary {
    pub fn of(model: &Gpt) -> Self {
        let mut rows: Vec<(String, Vec<usize>, usize)> = model
            .params()
            .iter()
            .map(|(name, v)| (name.clone(), v.dims().to_vec(), v.elem_count()))
            .collect();
        rows.sort_by_key(|(name, _, _)| natural_key(name));
        let total: usize = rows.iter().map(|r| r.2).sum();
        let wte = model
            .params()
            .get("wte.weight")
            .map(|v| v.elem_count())
            .unwrap_or(0);
        let wpe = model
            .params()
            .get("wpe.weight")
            .map(|v| v.elem_count())
            .unwrap_or(0);
        let tied = model.config().tied_embeddings;
        ParamSummary {
            rows,
            total,
            listed: total + if tied { wte } else { 0 },
            without_wpe: total - wpe,
            tied_embeddings: tied,
        }
    }

    /// Model FLOPs per trained token (forward + backward) with rows of `t` tokens, as nanoGPT
    /// counts them: `6·N + 12·L·C·T` — 6 per weight (2 forward, 4 backward; the position table
    /// is a lookup, not a matmul) plus attention's scores and weighted sums. The numerator of MFU.
    pub fn training_flops_per_token(&self, config: &super::GptConfig, t: usize) -> f64 {
        6.0 * self.without_wpe as f64 + 12.0 * (config.n_layer * config.n_embd * t) as f64
    }
}

/// "h.10.attn" sorts after "h.9.attn": numbers compare as numbers.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_string(), 0),
        })
        .collect()
}

/// `1234567` → `"1,234,567"`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for ParamSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(10)
            .max(24);
        writeln!(
            f,
            "{:<width$}  {:<14}  {:>12}",
            "tensor", "shape", "parameters"
        )?;
        for (name, shape, count) in &self.rows {
            writeln!(
                f,
                "{:<width$}  {:<14}  {:>12}",
                name,
                format!("{shape:?}"),
                thousands(*count)
            )?;
        }
        if self.tied_embeddings {
            writeln!(
                f,
                "{:<width$}  {:<14}  {:>12}",
                "lm_head.weight", "= wte.weight", "(tied)"
            )?;
        }
        writeln!(
            f,
            "total: {} parameters ({:.2}M)",
            thousands(self.total),
            self.total as f64 / 1e6
        )?;
        if self.without_wpe != self.total {
            writeln!(
                f,
                "without the position embedding: {}",
                thousands(self.without_wpe)
            )?;
        }
        if self.tied_embeddings {
            writeln!(f, "a per-module listing would show {} ({:.2}M): it counts the tied wte/lm_head matrix twice", thousands(self.listed), self.listed as f64 / 1e6)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;

    #[test]
    fn training_flops_per_token_by_hand() {
        // 2 layers, 2 heads, C = 32, T = 64, vocab 300, biases, tied embeddings.
        let cfg = GptConfig::gpt2(2, 2, 32, 64, 300);
        let model = Gpt::new(&cfg, 1, &candle_core::Device::Cpu).unwrap();
        // Per block: ln_1 64 + c_attn 32·96 + 96 + c_proj 32·32 + 32 + ln_2 64
        //            + c_fc 32·128 + 128 + c_proj 128·32 + 32 = 12,704.
        let n = 300 * 32 + 2 * 12_704 + 64; // wte, blocks, ln_f (wpe left out)
        let summary = ParamSummary::of(&model);
        assert_eq!(summary.without_wpe, n);
        let expected = 6.0 * n as f64 + 12.0 * (2 * 32 * 64) as f64;
        assert_eq!(summary.training_flops_per_token(&cfg, 64), expected);
    }
}
