//! `GptConfig`: every number and choice that fixes a model's shape, with the presets.
//!
//! The names are the literature's (GPT-2 / nanoGPT):
//! - `n_layer`: transformer blocks; `n_embd`: the residual stream width `C`;
//! - `n_head`: query heads; `n_kv_head`: key/value heads, shared by `n_head / n_kv_head` query
//!   heads each (= `n_head`: multi-head attention, MHA; 1: multi-query, MQA; between: grouped-query, GQA);
//! - `block_size`: the longest sequence (context) the model sees; `vocab_size`: rows of the
//!   token embedding `wte` (padded up, e.g. 50,257 → 50,304, a multiple of 64 the GPU likes).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the model knows where a token is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Positions {
    /// A learned embedding `wpe` of shape `(block_size, C)` added to the token embedding (GPT-2).
    Learned,
    /// Rotary embeddings (RoFormer, Llama): queries and keys are rotated by an angle proportional
    /// to the position, so attention scores depend only on the distance between tokens.
    Rope { theta: f32 },
}

/// The normalisation before attention, before the MLP and at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Subtract the mean, divide by the standard deviation, then scale and shift (GPT-2).
    LayerNorm,
    /// Divide by the root mean square, then scale (Llama): cheaper, no mean, no shift.
    RmsNorm,
}

/// The feed-forward network of each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Mlp {
    /// `C → 4C → GELU → C` (GPT-2).
    Gelu,
    /// `silu(x W_gate) * (x W_up) → W_down` with a hidden size of its own (Llama).
    SwiGlu { hidden: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub vocab_size: usize,
    pub positions: Positions,
    pub norm: Norm,
    /// The small constant added under the square root of both norms.
    pub norm_eps: f64,
    pub mlp: Mlp,
    /// Biases in the linear layers (and LayerNorm's shift).
    pub bias: bool,
    /// The output layer `lm_head` reuses the token embedding `wte` (Press & Wolf 2017): one
    /// `(vocab_size, C)` matrix instead of two.
    pub tied_embeddings: bool,
}

/// The presets `--preset` accepts, with a line each for `--help` and errors.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "seed-61m",
        "the original: 12 layers, 4 heads, d 512, context 512, vocab 50304, GPT-2 style",
    ),
    (
        "seed-61m-gqa",
        "the original with grouped-query attention (2 key/value heads)",
    ),
    (
        "small",
        "CPU-sized GPT-2 style: 6 layers, 6 heads, d 288, context 256, vocab 4096",
    ),
    (
        "tiny",
        "CPU-sized GPT-2 style: 4 layers, 4 heads, d 128, context 256, vocab 4096",
    ),
    (
        "llama-small",
        "Llama style (RMSNorm, SwiGLU, RoPE, GQA 6/2, no biases): 6 layers, d 288, vocab 4096",
    ),
    (
        "llama-tiny",
        "Llama style: 4 layers, 4 heads / 2 key-value heads, d 128, context 256, vocab 4096",
    ),
];

impl GptConfig {
    /// A GPT-2 style model (learned positions, LayerNorm, GELU MLP, biases, tied embeddings).
    pub fn gpt2(
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        block_size: usize,
        vocab_size: usize,
    ) -> Self {
        GptConfig {
            n_layer,
            n_head,
            n_kv_head: n_head,
            n_embd,
            block_size,
            vocab_size,
            positions: Positions::Learned,
            norm: Norm::LayerNorm,
            norm_eps: 1e-5,
            mlp: Mlp::Gelu,
            bias: true,
            tied_embeddings: true,
        }
    }

    /// A Llama style model (RoPE, RMSNorm, SwiGLU, no biases, tied embeddings).
    pub fn llama(
        n_layer: usize,
        n_head: usize,
        n_kv_head: usize,
        n_embd: usize,
        hidden: usize,
        block_size: usize,
        vocab_size: usize,
    ) -> Self {
        GptConfig {
            n_layer,
            n_head,
            n_kv_head,
            n_embd,
            block_size,
            vocab_size,
            positions: Positions::Rope { theta: 10_000.0 },
            norm: Norm::RmsNorm,
            norm_eps: 1e-5,
            mlp: Mlp::SwiGlu { hidden },
            bias: false,
            tied_embeddings: true,
        }
    }

    /// One of [`PRESETS`] by name.
    pub fn preset(name: &str) -> Result<Self> {
        let config = match name {
            "seed-61m" => Self::gpt2(12, 4, 512, 512, 50304),
            "seed-61m-gqa" => GptConfig {
                n_kv_head: 2,
                ..Self::gpt2(12, 4, 512, 512, 50304)
            },
            "small" => Self::gpt2(6, 6, 288, 256, 4096),
            "tiny" => Self::gpt2(4, 4, 128, 256, 4096),
            "llama-small" => Self::llama(6, 6, 2, 288, 768, 256, 4096),
            "llama-tiny" => Self::llama(4, 4, 2, 128, 344, 256, 4096),
            _ => {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(Error::Invalid(format!(
                    "unknown preset `{name}`; the presets are: {}",
                    names.join(", ")
                )));
            }
        };
        Ok(config)
    }

    /// The width of one attention head, `C / n_head`.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The hidden width of the MLP.
    pub fn mlp_hidden(&self) -> usize {
        match self.mlp {
            Mlp::Gelu => 4 * self.n_embd,
            Mlp::SwiGlu { hidden } => hidden,
        }
    }

    /// Checks that the numbers fit together; the error says which ones do not and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(format!("model config: {msg}")));
        for (name, value) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
            ("mlp hidden size", self.mlp_hidden()),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not divisible by n_head {}: every head needs the same width",
                self.n_embd, self.n_head
            ));
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "n_head {} is not divisible by n_kv_head {}: each key/value head serves a whole group of query heads",
                self.n_head, self.n_kv_head
            ));
        }
        if let Positions::Rope { theta } = self.positions {
            if !self.head_dim().is_multiple_of(2) {
                return bad(format!(
                    "rotary embeddings rotate pairs of numbers, but the head width {} is odd",
                    self.head_dim()
                ));
            }
            if !(theta.is_finite() && theta > 1.0) {
                return bad(format!(
                    "rope theta must be a finite number above 1, not {theta}"
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!(
                "norm_eps must be a small positive number, not {}",
                self.norm_eps
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_named() {
        for (name, _) in PRESETS {
            GptConfig::preset(name).unwrap().validate().unwrap();
        }
        let err = GptConfig::preset("huge").unwrap_err().to_string();
        assert!(err.contains("seed-61m") && err.contains("huge"), "{err}");
    }

    #[test]
    fn config_errors_name_the_numbers() {
        let c = GptConfig {
            n_kv_head: 4,
            ..GptConfig::preset("small").unwrap()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("n_head 6") && err.contains("n_kv_head 4"),
            "{err}"
        );
        let c = GptConfig {
            n_embd: 100,
            ..GptConfig::preset("small").unwrap()
        };
        assert!(c.validate().unwrap_err().to_string().contains("n_embd 100"));
        let c = GptConfig {
            n_embd: 6 * 3,
            ..GptConfig::preset("llama-small").unwrap()
        };
        assert!(c.validate().unwrap_err().to_string().contains("odd"));
        let c = GptConfig {
            n_layer: 0,
            ..GptConfig::preset("tiny").unwrap()
        };
        assert!(c.validate().unwrap_err().to_string().contains("n_layer"));
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = GptConfig::preset("llama-small").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<GptConfig>(&json).unwrap(), c);
    }
}
