//! Text generation: run the prompt once, then one token at a time with a KV cache, sampling
//! each next token from the model's distribution.
//!
//! Sampling knobs, applied in this order to the logits of the next token:
//! - `temperature`: divide the logits by it; below 1 sharper (more predictable), above 1 flatter;
//!   0 means greedy (always the most likely token).
//! - `top_k`: keep only the k most likely tokens.
//! - `top_p` (nucleus): keep the most likely tokens until their probabilities add up to p.

use candle_core::{DType, Tensor};

use super::decode::CpuDecoder;
use super::gpt::{Gpt, KvCache};
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    /// Stop after producing this token (the end-of-text token: the story is over).
    pub stop_token: Option<u32>,
    /// Sample only among the first this many ids: the tokenizer's vocabulary, when the model's
    /// is padded beyond it (50,257 → 50,304) and the extra rows are ids no text decodes from.
    pub vocab_limit: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            temperature: 1.0,
            top_k: Some(50),
            top_p: None,
            seed: 1337,
            stop_token: None,
            vocab_limit: None,
        }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!(
                "--temperature must be 0 (greedy) or positive, not {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Invalid(
                "--top-k must be at least 1 (leave it out to keep every token)".into(),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Invalid(format!(
                    "--top-p must be in (0, 1], not {p}"
                )));
            }
        }
        Ok(())
    }
}

/// Picks next tokens from logits according to the options, with its own seeded generator.
pub struct Sampler {
    options: GenerateOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(options: &GenerateOptions) -> Self {
        Sampler {
            options: options.clone(),
            rng: Rng::new(options.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let o = &self.options;
        if o.temperature == 0.0 {
            return argmax(logits);
        }
        // (token, logit / temperature), most likely first.
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / o.temperature))
            .collect();
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = o.top_k {
            cands.truncate(k.max(1));
        }
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if let Some(top_p) = o.top_p {
            let mut cumulative = 0.0;
            let keep = probs.iter().position(|p| {
                cumulative += p;
                cumulative >= top_p
            });
            probs.truncate(keep.map_or(probs.len(), |i| i + 1));
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.uniform() as f32 * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return cands[i].0;
            }
        }
        cands[probs.len() - 1].0
    }
}

/// The index of the largest value (the first one on ties, as llama2.c).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new_tokens` after `prompt` (which must hold at least one token: start
/// a story with the end-of-text / BOS token, as training did). `on_token` sees every new token
/// as soon as it is chosen (for streaming) and may return `false` to stop. Returns the new tokens.
///
/// A prompt longer than the context keeps its *last* `block_size` tokens. When the context is
/// full, the oldest token is dropped and the window is run again from scratch (positions must
/// restart at 0), so each further token costs a full pass over the window.
///
/// On the CPU in f32 the steps run on [`CpuDecoder`] (plain loops, much faster for one token at a
/// time); elsewhere on the model's tensors with a [`KvCache`]. Both give the same logits.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    options.validate()?;
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty: start with the end-of-text (BOS) token".into(),
        ));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(&bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(Error::Invalid(format!(
            "prompt token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    if model.device().is_cpu() && model.compute_dtype() == DType::F32 {
        let mut decoder = CpuDecoder::new(model)?;
        let mut stepper = |tokens: &[u32], restart: bool| -> Result<Vec<f32>> {
            if restart {
                decoder.reset();
            }
            let mut logits = vec![];
            for &t in tokens {
                logits = decoder.step(t)?;
            }
            Ok(logits)
        };
        sample_loop(
            model.config().block_size,
            prompt,
            options,
            &mut stepper,
            on_token,
        )
    } else {
        let mut cache = KvCache::default();
        let mut stepper = |tokens: &[u32], restart: bool| -> Result<Vec<f32>> {
            if restart {
                cache = KvCache::default();
            }
            let idx = Tensor::from_slice(tokens, (1, tokens.len()), model.device())?;
            Ok(model
                .forward_cached(&idx, &mut cache)?
                .squeeze(0)?
                .to_dtype(DType::F32)?
                .to_vec1()?)
        };
        sample_loop(
            model.config().block_size,
            prompt,
            options,
            &mut stepper,
            on_token,
        )
    }
}

/// Feeds tokens to a model (after those cached, or after none when the flag says restart) and
/// returns the logits of the next token.
type StepFn<'a> = dyn FnMut(&[u32], bool) -> Result<Vec<f32>> + 'a;

/// The generation loop. `step(tokens, restart)` feeds tokens after those already cached (after
/// none when `restart`) and returns the logits of the next token.
fn sample_loop(
    block_size: usize,
    prompt: &[u32],
    options: &GenerateOptions,
    step: &mut StepFn<'_>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(options);
    let mut tokens = prompt.to_vec();
    let mut new_tokens = Vec::new();
    let mut cached = 0;
    let mut pending: Vec<u32> = tokens[tokens.len().saturating_sub(block_size)..].to_vec();
    let mut restart = true;
    while new_tokens.len() < options.max_new_tokens {
        if cached + pending.len() > block_size {
            pending = tokens[tokens.len() - block_size..].to_vec();
            restart = true;
        }
        if restart {
            cached = 0;
        }
        let mut logits = step(&pending, restart)?;
        if let Some(n) = options.vocab_limit {
            logits.truncate(n.max(1));
        }
        cached += pending.len();
        restart = false;
        let next = sampler.sample(&logits);
        tokens.push(next);
        new_tokens.push(next);
        pending = vec![next];
        if !on_token(next) || Some(next) == options.stop_token {
            break;
        }
    }
    Ok(new_tokens)
}
