//! The training loop on one device: micro-batches accumulated into a step, gradient clipping,
//! AdamW on the cosine schedule, evaluation in bits per byte, and checkpoints that resume
//! exactly (weights, optimizer moments, step, data cursor).
//!
//! A step: for each of `grad_accum` micro-batches, forward, loss / `grad_accum`, backward, add
//! the gradients; then measure the global gradient norm, scale the update so that norm is at most
//! `grad_clip`, and let AdamW update every weight with the learning rate of this step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::optim::{clip_factor, grad_norm, AdamW, AdamWConfig};
use super::schedule::CosineSchedule;
use crate::data::loader::{Cursor, DataLoader, LoaderConfig, ValLoader};
use crate::data::{Manifest, Split};
use crate::model::{checkpoint, cross_entropy_sum, Gpt, GptConfig};
use crate::tokenizer::Tokenizer;
use crate::{atomic, Error, Result};

/// Everything that defines a run (saved in every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: GptConfig,
    /// Rows per micro-batch, `B` (each of `model.block_size` tokens).
    pub batch_size: usize,
    /// Micro-batches per optimizer step: a step sees `batch_size · grad_accum · block_size` tokens.
    pub grad_accum: usize,
    pub max_steps: u64,
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub optimizer: AdamWConfig,
    /// The largest global gradient norm an update may use.
    pub grad_clip: f64,
    pub seed: u64,
    /// Evaluate on the first this many validation batches only (`None`: the whole split). The
    /// full TinyStories validation split is 4.7M tokens: minutes on a CPU, at every evaluation.
    #[serde(default)]
    pub eval_batches: Option<usize>,
}

impl TrainConfig {
    /// The original's recipe (AdamW 0.9/0.95, weight decay 0.01, lr 1e-3 → 1e-4 with 1% warmup,
    /// clipping at 1.0) for `model`, `max_steps` steps of `batch_size × grad_accum` rows.
    pub fn recipe(model: GptConfig, batch_size: usize, grad_accum: usize, max_steps: u64) -> Self {
        TrainConfig {
            model,
            batch_size,
            grad_accum,
            max_steps,
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: (max_steps / 100).max(1),
            optimizer: AdamWConfig::default(),
            grad_clip: 1.0,
            seed: 1337,
            eval_batches: None,
        }
    }

    fn schedule(&self) -> CosineSchedule {
        CosineSchedule {
            max_lr: self.max_lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.max_steps,
        }
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub tokens: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// True when the loss or the gradients were not finite: the update was skipped.
    pub skipped: bool,
}

/// The state saved beside the weights and the optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    config: TrainConfig,
    step: u64,
    tokens: u64,
    cursor: Cursor,
}

pub struct Trainer {
    config: TrainConfig,
    model: Gpt,
    optimizer: AdamW,
    loader: DataLoader,
    data_dir: PathBuf,
    tokenizer: Option<Tokenizer>,
    step: u64,
    tokens: u64,
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer.json";

impl Trainer {
    /// A fresh run on the shards in `data_dir` (written by `tinygpt prepare`; a `tokenizer.json`
    /// there, as `--tokenizer bpe:N` leaves, is checked against them and saved with checkpoints).
    pub fn new(config: TrainConfig, data_dir: &Path, device: &Device) -> Result<Self> {
        let model = Gpt::new(&config.model, config.seed, device)?;
        Self::assemble(
            config,
            model,
            AdamW::new(AdamWConfig::default()),
            data_dir,
            0,
            0,
            Cursor::default(),
        )
    }

    fn assemble(
        config: TrainConfig,
        model: Gpt,
        mut optimizer: AdamW,
        data_dir: &Path,
        step: u64,
        tokens: u64,
        cursor: Cursor,
    ) -> Result<Self> {
        optimizer.config = config.optimizer.clone();
        if config.batch_size == 0 || config.grad_accum == 0 {
            return Err(Error::Invalid(
                "--batch-size and --grad-accum must be at least 1".into(),
            ));
        }
        let tokenizer_path = data_dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            Some(Tokenizer::from_file(&tokenizer_path)?)
        } else {
            None
        };
        let manifest = Manifest::load(data_dir)?;
        if manifest.tokenizer.vocab_size > config.model.vocab_size {
            return Err(Error::data(
                data_dir,
                format!("the shards use {} token ids but the model has only {} (vocab_size); pick a model whose vocabulary holds the tokenizer's", manifest.tokenizer.vocab_size, config.model.vocab_size),
            ));
        }
        let loader_config = LoaderConfig {
            batch_size: config.batch_size,
            block_size: config.model.block_size,
            rank: 0,
            world_size: 1,
            seed: config.seed,
        };
        let mut loader =
            DataLoader::open(data_dir, Split::Train, loader_config, tokenizer.as_ref())?;
        loader.set_cursor(cursor)?;
        Ok(Trainer {
            config,
            model,
            optimizer,
            loader,
            data_dir: data_dir.to_owned(),
            tokenizer,
            step,
            tokens,
        })
    }

    /// Continues the run saved in the checkpoint folder `dir` exactly where it stopped.
    pub fn resume(dir: &Path, data_dir: &Path, device: &Device) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| {
            Error::data(
                dir,
                format!("is not a training checkpoint ({STATE_FILE}: {e}); nothing to resume"),
            )
        })?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::data(&state_path, format!("is not a trainer state ({e})")))?;
        let loaded = checkpoint::load(dir, device)?;
        if loaded.model.config() != &state.config.model {
            return Err(Error::data(
                dir,
                "the weights' config.json differs from the run's config in trainer.json",
            ));
        }
        let optimizer = AdamW::load(
            state.config.optimizer.clone(),
            &dir.join(OPTIMIZER_FILE),
            loaded.model.params(),
        )?;
        if optimizer.steps_done() != state.step {
            return Err(Error::data(
                dir,
                format!(
                    "the optimizer has done {} steps but the run {}",
                    optimizer.steps_done(),
                    state.step
                ),
            ));
        }
        Self::assemble(
            state.config,
            loaded.model,
            optimizer,
            data_dir,
            state.step,
            state.tokens,
            state.cursor,
        )
    }

    pub fn model(&self) -> &Gpt {
        &self.model
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// One optimizer step.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let accum = self.config.grad_accum;
        let mut grads: Option<GradStore> = None;
        let mut loss_sum = 0f32;
        let mut step_tokens = 0u64;
        for _ in 0..accum {
            let batch = self.loader.next_batch();
            step_tokens += batch.n_targets() as u64;
            let data = batch.to_tensors(self.model.device())?;
            let loss = self.model.loss(&data)?;
            loss_sum += loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            let g = (loss / accum as f64)?.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (_, var) in self.model.params().iter() {
                        if let (Some(a), Some(b)) =
                            (acc.get(var.as_tensor()), g.get(var.as_tensor()))
                        {
                            let sum = (a + b)?;
                            acc.insert(var.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let grads = grads.expect("at least one micro-batch");
        let loss = loss_sum / accum as f32;
        let norm = grad_norm(self.model.params(), &grads)?;
        let lr = self.config.schedule().lr(self.step);
        let skipped = !loss.is_finite() || !norm.is_finite();
        if !skipped {
            self.optimizer.step(
                self.model.params(),
                &grads,
                lr,
                clip_factor(norm, self.config.grad_clip),
            )?;
            self.step += 1;
            self.tokens += step_tokens;
        }
        Ok(StepMetrics {
            step: self.step,
            tokens: self.tokens,
            loss,
            lr,
            grad_norm: norm,
            tokens_per_s: step_tokens as f64 / start.elapsed().as_secs_f64(),
            skipped,
        })
    }

    /// The validation loss and bits per byte of the model now (see [`evaluate`]).
    pub fn evaluate(&self) -> Result<(f64, f64)> {
        evaluate(
            &self.model,
            &self.data_dir,
            self.config.batch_size,
            self.tokenizer.as_ref(),
            self.config.eval_batches,
        )
    }

    /// Writes a checkpoint folder `dir` (model, tokenizer, optimizer, trainer state): first into
    /// `dir.tmp`, then swapped in, so a crash never leaves a half-written checkpoint behind.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = atomic_dir(dir, "tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        checkpoint::save(&tmp, &self.model, self.tokenizer.as_ref())?;
        self.optimizer.save(&tmp.join(OPTIMIZER_FILE))?;
        let state = TrainerState {
            config: self.config.clone(),
            step: self.step,
            tokens: self.tokens,
            cursor: self.loader.cursor(),
        };
        let json =
            serde_json::to_string_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
        atomic::write_bytes(&tmp.join(STATE_FILE), json.as_bytes())?;
        let old = atomic_dir(dir, "old");
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// The validation loss (nats per token) of `model` over the whole validation split in
/// `data_dir`, and the same in **bits per byte**: summed loss / ln 2 / UTF-8 bytes of the
/// validation text — a number that does not depend on the tokenizer, so runs with different
/// vocabularies compare. With a tokenizer, the shards are checked against it first. With
/// `max_batches`, only the first batches count, and their share of the text's bytes is estimated
/// from their share of the tokens.
pub fn evaluate(
    model: &Gpt,
    data_dir: &Path,
    batch_size: usize,
    tokenizer: Option<&Tokenizer>,
    max_batches: Option<usize>,
) -> Result<(f64, f64)> {
    let manifest = Manifest::load(data_dir)?;
    if manifest.tokenizer.vocab_size > model.config().vocab_size {
        return Err(Error::data(
            data_dir,
            format!("the shards use {} token ids but the model has only {}: they were not made for each other", manifest.tokenizer.vocab_size, model.config().vocab_size),
        ));
    }
    let val = ValLoader::open(
        data_dir,
        batch_size.max(1),
        model.config().block_size,
        0,
        1,
        tokenizer,
    )?;
    let (mut nats, mut count) = (0f64, 0f64);
    for batch in val.take(max_batches.unwrap_or(usize::MAX)) {
        let data = batch.to_tensors(model.device())?;
        let logits = model.forward(&data.x, &data.doc, &data.pos)?;
        let (sum, n) = cross_entropy_sum(&logits, &data.y)?;
        nats += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let split = manifest.splits.get(&Split::Val);
    let (all_bytes, all_tokens) =
        split.map_or((0.0, 1.0), |s| (s.text_bytes as f64, s.tokens as f64));
    // Every validation token but the last is a target once, so the counted targets' share of the
    // tokens is the share of the text they cover.
    let bytes = if max_batches.is_some() {
        all_bytes * (count / (all_tokens - 1.0).max(1.0)).min(1.0)
    } else {
        all_bytes
    };
    Ok((
        nats / count.max(1.0),
        nats / std::f64::consts::LN_2 / bytes.max(1.0),
    ))
}

/// `ckpt` → `ckpt.tmp` (a sibling folder).
fn atomic_dir(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
