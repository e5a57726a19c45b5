//! The training step, on one device or data-parallel over several: micro-batches accumulated
//! into a step, gradients averaged over the workers, gradient clipping, AdamW on the cosine
//! schedule, evaluation in bits per byte, and checkpoints that resume exactly (weights,
//! optimizer moments, step, data cursor).
//!
//! A step, on every worker at once: for each of `grad_accum` micro-batches, forward, loss /
//! `grad_accum`, backward, add the gradients; all-reduce the gradients (see [`collective`]) and
//! divide by the number of workers; measure the global gradient norm, scale the update so that
//! norm is at most `grad_clip`, and let AdamW update every weight with this step's learning
//! rate. A step with a non-finite loss or gradient changes nothing and is reported as skipped.
//! There is no dropout, so a run's only randomness is the seeded initialisation and data order.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::collective::{self, Collective};
use super::optim::{clip_factor, grad_parts, AdamW, AdamWConfig};
use super::schedule::CosineSchedule;
use super::sum_squares::sum_of_squares;
use crate::data::loader::{Cursor, DataLoader, LoaderConfig, ValLoader};
use crate::data::{Manifest, Split};
use crate::device::parse_dtype;
use crate::model::params::Params;
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
    /// The compute dtype: `auto` (bf16 on a GPU, f32 on the CPU), `f32`, `bf16` or `f16`.
    /// Weights, gradients and optimizer moments stay f32 whatever it is (mixed precision).
    #[serde(default = "auto")]
    pub dtype: String,
}

fn auto() -> String {
    "auto".into()
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
            dtype: auto(),
        }
    }

    /// Refuses, by name, what no run can use: counts of zero, a learning rate that is not
    /// positive (or a floor above it), AdamW's betas outside `[0, 1)`, a zero ε (0/0 on the
    /// first step), negative weight decay, a clipping norm that is not positive (0 would scale
    /// every update to nothing) and an unknown compute dtype. Every number must be finite:
    /// checkpoints store them as JSON, which has no infinity.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("run config: {what}")));
        let o = &self.optimizer;
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad(
                "--batch-size and --grad-accum (batch_size, grad_accum) must be at least 1".into(),
            );
        }
        if !(self.max_lr > 0.0 && self.max_lr.is_finite()) {
            return bad(format!("max_lr = {} must be above 0", self.max_lr));
        }
        if !(0.0..=self.max_lr).contains(&self.min_lr) {
            return bad(format!(
                "min_lr = {} must lie between 0 and max_lr = {}",
                self.min_lr, self.max_lr
            ));
        }
        for (name, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(format!("optimizer.{name} = {beta} must lie in [0, 1)"));
            }
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return bad(format!("optimizer.eps = {} must be above 0", o.eps));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return bad(format!(
                "optimizer.weight_decay = {} must be 0 or more",
                o.weight_decay
            ));
        }
        if !["auto", "f32", "bf16", "f16"].contains(&self.dtype.as_str()) {
            return bad(format!(
                "dtype = \"{}\": expected auto, f32, bf16 or f16",
                self.dtype
            ));
        }
        if !(self.grad_clip > 0.0 && self.grad_clip.is_finite()) {
            return bad(format!(
                "grad_clip = {} must be a number above 0 (1e9 turns clipping off)",
                self.grad_clip
            ));
        }
        Ok(())
    }

    /// The learning-rate schedule of the run.
    pub fn schedule(&self) -> CosineSchedule {
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
    /// The mean training loss of the step's micro-batches, over all workers.
    pub loss: f32,
    pub lr: f64,
    /// The global gradient norm before clipping.
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
    /// Data-parallel workers of the run (the data order depends on it).
    #[serde(default = "one")]
    world_size: usize,
}

fn one() -> usize {
    1
}

/// One data-parallel worker: a model replica on its device, its optimizer, its share of the
/// data, and its end of the collective.
struct Replica {
    model: Gpt,
    optimizer: AdamW,
    loader: DataLoader,
    collective: Box<dyn Collective>,
}

/// What a replica's step found (the same on every replica: computed from all-reduced numbers).
struct ReplicaStep {
    loss: f32,
    norm: f64,
    skipped: bool,
    tokens: u64,
}

impl Replica {
    /// Forward and backward over `accum` micro-batches, the gradients (and the loss, for the
    /// log) averaged over all workers in one all-reduce, then clipped and applied.
    fn step(&mut self, accum: usize, lr: f64, clip: f64) -> Result<ReplicaStep> {
        let local = self.accumulate(accum);
        let device = self.model.device().clone();
        let n = self.model.params().count();
        // A worker that failed still joins the all-reduce (with NaNs, so that everyone skips the
        // update) instead of leaving the others waiting forever; then it reports its error.
        let flat = match &local {
            Ok((flat, _)) => flat.clone(),
            Err(_) => Tensor::full(f32::NAN, n + 1, &device)?,
        };
        let world = self.collective.world_size() as f64;
        let mean = (self.collective.all_reduce_sum(&flat)? / world)?;
        let tokens = local?.1 * world as u64;
        let grads = mean.narrow(0, 0, n)?;
        // One trip to the host for both numbers.
        let stats: Vec<f32> = Tensor::cat(
            &[sum_of_squares(&grads)?.reshape(1)?, mean.narrow(0, n, 1)?],
            0,
        )?
        .to_vec1()?;
        let (norm, loss) = ((stats[0] as f64).sqrt(), stats[1]);
        let skipped = !loss.is_finite() || !norm.is_finite();
        if !skipped {
            self.optimizer
                .step_flat(self.model.params(), &grads, lr, clip_factor(norm, clip))?;
        }
        Ok(ReplicaStep {
            loss,
            norm,
            skipped,
            tokens,
        })
    }

    /// This worker's gradients summed over `accum` micro-batches (each loss divided by
    /// `accum`), flattened in name order with the mean loss appended; and its target tokens.
    fn accumulate(&mut self, accum: usize) -> Result<(Tensor, u64)> {
        let mut grads: Option<GradStore> = None;
        let mut loss_sum: Option<Tensor> = None;
        let mut tokens = 0u64;
        for _ in 0..accum {
            let batch = self.loader.next_batch();
            tokens += batch.n_targets() as u64;
            let data = batch.to_tensors(self.model.device())?;
            let loss = (self.model.loss(&data)?.to_dtype(DType::F32)? / accum as f64)?;
            let g = loss.backward()?;
            // Detached: a loss that remembered how it was computed would keep this step's whole
            // graph (every activation) alive in the log value, and in everything derived from it.
            let loss = loss.detach();
            loss_sum = Some(match loss_sum {
                None => loss,
                Some(s) => (s + loss)?,
            });
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
        let (grads, loss) = (
            grads.expect("accum ≥ 1"),
            loss_sum.expect("accum ≥ 1").reshape(1)?,
        );
        // The gradients and the loss in one buffer, copied once: one all-reduce carries both.
        let mut parts = grad_parts(self.model.params(), &grads)?;
        parts.push(loss);
        Ok((Tensor::cat(&parts, 0)?, tokens))
    }

    /// Makes this replica's weights rank 0's (they already agree when every worker initialised
    /// from the same seed or loaded the same checkpoint; this makes sure).
    fn adopt_rank0_weights(&self) -> Result<()> {
        if self.collective.world_size() == 1 {
            return Ok(());
        }
        let params = self.model.params();
        let flat = Tensor::cat(
            &params
                .iter()
                .map(|(_, v)| v.as_tensor().flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?;
        let flat = self.collective.broadcast(&flat)?;
        for (name, tensor) in unflatten_named(params, &flat)? {
            params.get(&name).expect("own name").set(&tensor)?;
        }
        Ok(())
    }
}

/// The slices of a flat vector laid out in the params' (name) order, shaped like each weight.
fn unflatten_named(params: &Params, flat: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let mut offset = 0;
    let mut out = vec![];
    for (name, var) in params.iter() {
        let n = var.elem_count();
        out.push((
            name.clone(),
            flat.narrow(0, offset, n)?.reshape(var.shape())?,
        ));
        offset += n;
    }
    Ok(out)
}

/// The training run: one replica per device, stepping together.
pub struct Trainer {
    config: TrainConfig,
    replicas: Vec<Replica>,
    data_dir: PathBuf,
    tokenizer: Option<Tokenizer>,
    step: u64,
    tokens: u64,
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer.json";

impl Trainer {
    /// A fresh run on the shards in `data_dir` (written by `tinygpt prepare`; a `tokenizer.json`
    /// there, as `--tokenizer bpe:N` leaves, is checked against them and saved with checkpoints),
    /// data-parallel over `devices` (one worker each; `&[Device::Cpu]` for one CPU worker).
    pub fn new(config: TrainConfig, data_dir: &Path, devices: &[Device]) -> Result<Self> {
        let models = devices
            .iter()
            .map(|d| Gpt::new(&config.model, config.seed, d))
            .collect::<Result<Vec<_>>>()?;
        let optimizers = devices
            .iter()
            .map(|_| AdamW::new(config.optimizer.clone()))
            .collect();
        Self::assemble(
            config,
            models,
            optimizers,
            data_dir,
            0,
            0,
            Cursor::default(),
        )
    }

    fn assemble(
        config: TrainConfig,
        models: Vec<Gpt>,
        optimizers: Vec<AdamW>,
        data_dir: &Path,
        step: u64,
        tokens: u64,
        cursor: Cursor,
    ) -> Result<Self> {
        config.validate()?;
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
        let devices: Vec<Device> = models.iter().map(|m| m.device().clone()).collect();
        let collectives = collective::for_devices(&devices)?;
        let world_size = devices.len();
        let mut replicas = vec![];
        for (rank, ((mut model, mut optimizer), collective)) in models
            .into_iter()
            .zip(optimizers)
            .zip(collectives)
            .enumerate()
        {
            optimizer.config = config.optimizer.clone();
            model.set_compute_dtype(parse_dtype(&config.dtype, model.device())?);
            let loader_config = LoaderConfig {
                batch_size: config.batch_size,
                block_size: config.model.block_size,
                rank,
                world_size,
                seed: config.seed,
            };
            let mut loader =
                DataLoader::open(data_dir, Split::Train, loader_config, tokenizer.as_ref())?;
            loader.set_cursor(cursor)?;
            replicas.push(Replica {
                model,
                optimizer,
                loader,
                collective,
            });
        }
        let trainer = Trainer {
            config,
            replicas,
            data_dir: data_dir.to_owned(),
            tokenizer,
            step,
            tokens,
        };
        trainer.on_every_replica(|r| r.adopt_rank0_weights())?;
        Ok(trainer)
    }

    /// Continues the run saved in the checkpoint folder `dir` exactly where it stopped, on
    /// `devices` (as many as the run had).
    pub fn resume(dir: &Path, data_dir: &Path, devices: &[Device]) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| {
            Error::data(
                dir,
                format!("is not a training checkpoint ({STATE_FILE}: {e}); nothing to resume"),
            )
        })?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::data(&state_path, format!("is not a trainer state ({e})")))?;
        if state.world_size != devices.len() {
            return Err(Error::data(
                dir,
                format!(
                    "was written by a run on {} devices, and its data order depends on that; resume it with {} devices in --devices (not {})",
                    state.world_size,
                    state.world_size,
                    devices.len()
                ),
            ));
        }
        let (mut models, mut optimizers) = (vec![], vec![]);
        for device in devices {
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
            models.push(loaded.model);
            optimizers.push(optimizer);
        }
        Self::assemble(
            state.config,
            models,
            optimizers,
            data_dir,
            state.step,
            state.tokens,
            state.cursor,
        )
    }

    /// The model (rank 0's replica; all replicas hold the same weights).
    pub fn model(&self) -> &Gpt {
        &self.replicas[0].model
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn tokens_seen(&self) -> u64 {
        self.tokens
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Data-parallel workers.
    pub fn world_size(&self) -> usize {
        self.replicas.len()
    }

    /// Tokens per optimizer step: `batch_size · block_size · grad_accum · world_size`.
    pub fn tokens_per_step(&self) -> usize {
        self.config.batch_size
            * self.config.model.block_size
            * self.config.grad_accum
            * self.world_size()
    }

    /// Model FLOPs per trained token (see [`crate::model::ParamSummary::training_flops_per_token`]).
    pub fn flops_per_token(&self) -> f64 {
        crate::model::ParamSummary::of(self.model())
            .training_flops_per_token(&self.config.model, self.config.model.block_size)
    }

    /// Runs `f` on every replica at once (one thread per worker when there are several, as
    /// collectives need every worker to take part).
    fn on_every_replica<T: Send>(
        &self,
        f: impl Fn(&Replica) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        if let [only] = &self.replicas[..] {
            return Ok(vec![f(only)?]);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = self.replicas.iter().map(|r| s.spawn(|| f(r))).collect();
            handles.into_iter().map(join).collect()
        })
    }

    /// One optimizer step on every worker.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let lr = self.config.schedule().lr(self.step);
        let (accum, clip) = (self.config.grad_accum, self.config.grad_clip);
        let results = if let [only] = &mut self.replicas[..] {
            vec![only.step(accum, lr, clip)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .replicas
                    .iter_mut()
                    .map(|r| s.spawn(move || r.step(accum, lr, clip)))
                    .collect();
                handles.into_iter().map(join).collect::<Vec<_>>()
            })
        };
        let results = results
            .into_iter()
            .collect::<Result<Vec<_>>>()
            .map_err(|e| with_memory_advice(e, &self.config))?;
        let r = &results[0];
        if !r.skipped {
            self.step += 1;
            self.tokens += r.tokens;
        }
        Ok(StepMetrics {
            step: self.step,
            tokens: self.tokens,
            loss: r.loss,
            lr,
            grad_norm: r.norm,
            tokens_per_s: r.tokens as f64 / start.elapsed().as_secs_f64(),
            skipped: r.skipped,
        })
    }

    /// The validation loss and bits per byte of the model now (see [`evaluate`]).
    pub fn evaluate(&self) -> Result<(f64, f64)> {
        evaluate(
            self.model(),
            &self.data_dir,
            self.config.batch_size,
            self.tokenizer.as_ref(),
            self.config.eval_batches,
        )
    }

    /// Writes a checkpoint folder `dir` (model, tokenizer, optimizer, trainer state): first into
    /// `dir.tmp`, then swapped in, so a crash or a full disk never leaves a half-written
    /// checkpoint behind, and the previous one survives any failure.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let rank0 = &self.replicas[0];
        let tmp = atomic_dir(dir, "tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let written = (|| {
            checkpoint::save(&tmp, &rank0.model, self.tokenizer.as_ref())?;
            rank0
                .optimizer
                .save(&tmp.join(OPTIMIZER_FILE), rank0.model.params())?;
            let state = TrainerState {
                config: self.config.clone(),
                step: self.step,
                tokens: self.tokens,
                cursor: rank0.loader.cursor(),
                world_size: self.world_size(),
            };
            let json =
                serde_json::to_string_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
            atomic::write_bytes(&tmp.join(STATE_FILE), json.as_bytes())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
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

/// A GPU that runs out of memory says so in CUDA's words (`CUDA_ERROR_OUT_OF_MEMORY`, or
/// cuBLAS's `ALLOC_FAILED`); this adds what to change. The activations kept for the backward pass
/// grow with the micro-batch: `f` times fewer rows and `f` times more accumulation (`f`, the
/// smallest factor of `batch_size`) train on the same rows per step, so the same training, in
/// about `1/f` of that memory.
pub fn with_memory_advice(e: Error, config: &TrainConfig) -> Error {
    let text = e.to_string();
    if !(text.contains("OUT_OF_MEMORY") || text.contains("ALLOC_FAILED")) {
        return e;
    }
    let (b, t, accum) = (
        config.batch_size,
        config.model.block_size,
        config.grad_accum,
    );
    let fix = match (2..=b).find(|f| b % f == 0) {
        Some(f) => format!(
            "train with --batch-size {} --grad-accum {} (the same {} rows per step, so the same \
             training, with about {f}× less memory for activations)",
            b / f,
            accum * f,
            b * accum
        ),
        None => "a micro-batch of one row is the smallest: train a smaller model or a shorter \
                 context (n_layer, n_embd or block_size in a --config file)"
            .to_string(),
    };
    Error::Invalid(format!(
        "{text}. The GPU ran out of memory with micro-batches of {b} rows × {t} tokens: {fix}"
    ))
}

/// A worker thread's result; a panic in a worker becomes an error.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("a data-parallel worker panicked".into())))
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
    // [summed loss, counted targets] in f64, kept on the device until the end: reading them
    // after every batch would make the host wait for a GPU each time. Detached, or the total
    // would keep every batch's computation graph alive.
    let mut totals: Option<Tensor> = None;
    for batch in val.take(max_batches.unwrap_or(usize::MAX)) {
        let data = batch.to_tensors(model.device())?;
        let logits = model.forward(&data.x, &data.doc, &data.pos)?;
        let (sum, n) = cross_entropy_sum(&logits, &data.y)?;
        let both = Tensor::stack(&[sum.to_dtype(DType::F64)?, n.to_dtype(DType::F64)?], 0)?;
        totals = Some(match totals {
            None => both.detach(),
            Some(t) => (t + both)?.detach(),
        });
    }
    let (nats, count) = match totals {
        Some(t) => {
            let v = t.to_vec1::<f64>()?;
            (v[0], v[1])
        }
        None => (0.0, 0.0),
    };
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
