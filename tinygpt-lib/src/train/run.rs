//! The loop around [`Trainer::step`], shared by `tinygpt train`, `quickstart` and the notebooks:
//! evaluation and checkpoints at an interval, `metrics.jsonl`, and every way a run can stop.
//!
//! A run folder holds
//! ```text
//! metrics.jsonl        one JSON object per step (see Record); appended to across resumes
//! checkpoint/          the latest checkpoint: what `--resume` continues
//! best/                the checkpoint with the lowest validation loss so far (+ best.json)
//! history/step-N/      the last `keep_last` checkpoints (hard links: no extra disk)
//! STOP                 create this file to stop the run cleanly after the current step
//! ```
//! A run stops at the schedule's last step, at a time or step budget, at a `STOP` file, or at an
//! interrupt (Ctrl-C in the CLI): it finishes the step, evaluates, checkpoints and returns, so
//! nothing is lost and `--resume` continues exactly. A step whose loss is not finite is skipped
//! (the weights stay as they were); a checkpoint is never written from a model whose
//! validation loss is not finite, so a good checkpoint is never replaced by a broken one; after
//! `max_skipped` skipped steps in a row the run gives up with an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::trainer::Trainer;
use crate::{Error, Result};

/// How a run proceeds and when it stops.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run folder (see the module docs).
    pub out: PathBuf,
    /// Stop (after a checkpoint) once this much time has passed.
    pub time_budget: Option<Duration>,
    /// Stop (after a checkpoint) after this many steps in this call — a notebook cell's share
    /// of a long run; the schedule still runs to `max_steps` across calls.
    pub step_budget: Option<u64>,
    /// Evaluate and checkpoint every this many steps.
    pub eval_interval: u64,
    /// Also evaluate and checkpoint when this much time has passed since the last checkpoint.
    pub checkpoint_every: Option<Duration>,
    /// How many past checkpoints to keep under `history/` (0: none).
    pub keep_last: usize,
    /// When this flag turns true (a Ctrl-C handler sets it), the run finishes the current step,
    /// checkpoints and returns.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The devices' total peak FLOP/s, to report model FLOPs utilisation (MFU).
    pub peak_flops: Option<f64>,
    /// Give up after this many skipped (non-finite) steps in a row.
    pub max_skipped: u32,
}

impl RunOptions {
    /// Defaults: evaluate every 100 steps, checkpoint at least every 10 minutes, keep 3 past
    /// checkpoints, give up after 20 non-finite steps in a row.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        RunOptions {
            out: out.into(),
            time_budget: None,
            step_budget: None,
            eval_interval: 100,
            checkpoint_every: Some(Duration::from_secs(600)),
            keep_last: 3,
            interrupt: None,
            peak_flops: None,
            max_skipped: 20,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Record {
    pub step: u64,
    /// Training tokens seen so far.
    pub tokens: u64,
    /// JSON has no NaN: a non-finite loss or norm is written as `null` and read back as NaN.
    #[serde(deserialize_with = "f32_or_nan")]
    pub loss: f32,
    pub lr: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation of this step (with [`RunOptions::peak_flops`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    /// Seconds since this call of [`run`] started.
    pub elapsed_s: f64,
    pub skipped: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_bits_per_byte: Option<f64>,
    /// On a GPU, with each evaluation: the most memory that the first GPU's tensors held at once
    /// since this call of [`run`] started, in bytes ([`crate::device::gpu_memory`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu_peak_memory: Option<u64>,
}

fn f32_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(<Option<f32> as serde::Deserialize>::deserialize(d)?.unwrap_or(f32::NAN))
}

fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What [`run`] reports while it works.
pub enum Event<'a> {
    /// A step was done (and, if `record.val_loss` is set, evaluated and checkpointed).
    Step(&'a Record),
    /// Something worth telling the user (a skipped step, a checkpoint kept back, the stop).
    Message(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StopReason {
    /// The schedule's `max_steps` are done.
    Finished,
    TimeBudget,
    StepBudget,
    StopFile,
    Interrupted,
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub reason: StopReason,
    /// Steps done by this call.
    pub steps_now: u64,
    /// The last step's record (`None` when there was nothing left to do).
    pub last: Option<Record>,
    /// The lowest validation loss of the run so far, and its step.
    pub best: Option<(u64, f64)>,
}

/// Trains until a stop condition holds; see the module docs.
pub fn run(
    trainer: &mut Trainer,
    options: &RunOptions,
    mut on_event: impl FnMut(Event),
) -> Result<RunSummary> {
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let stop_file = out.join("STOP");
    let flops_per_token = trainer.flops_per_token();
    crate::device::reset_gpu_memory_peak(trainer.model().device())?;
    let max_steps = trainer.config().max_steps;
    let mut best = read_best(out);
    let start = Instant::now();
    let mut last_checkpoint = Instant::now();
    let (mut steps_now, mut skipped_in_a_row) = (0u64, 0u32);
    let mut last = None;
    let mut reason = StopReason::Finished;
    while trainer.steps_done() < max_steps {
        let m = trainer.step()?;
        steps_now += 1;
        let mut record = Record {
            step: m.step,
            tokens: m.tokens,
            loss: m.loss,
            lr: m.lr,
            grad_norm: m.grad_norm,
            tokens_per_s: m.tokens_per_s,
            mfu: options
                .peak_flops
                .map(|peak| m.tokens_per_s * flops_per_token / peak),
            elapsed_s: start.elapsed().as_secs_f64(),
            skipped: m.skipped,
            val_loss: None,
            val_bits_per_byte: None,
            gpu_peak_memory: None,
        };
        if m.skipped {
            skipped_in_a_row += 1;
            on_event(Event::Message(format!(
                "step {}: loss {} / gradient norm {} is not finite; update skipped",
                m.step + 1,
                m.loss,
                m.grad_norm
            )));
            if skipped_in_a_row >= options.max_skipped {
                writeln!(metrics, "{}", json(&record)).map_err(|e| Error::io(&metrics_path, e))?;
                return Err(Error::Invalid(format!(
                    "training diverged: {skipped_in_a_row} steps in a row had a non-finite loss or gradient \
                     (the weights are those of step {}); the last good checkpoint is in {}. Train again with a \
                     lower learning rate (`max_lr` in a --config file; `--print-config` writes one)",
                    m.step,
                    out.join("checkpoint").display()
                )));
            }
        } else {
            skipped_in_a_row = 0;
        }
        reason = if trainer.steps_done() >= max_steps {
            StopReason::Finished
        } else if options
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            StopReason::Interrupted
        } else if stop_file.exists() {
            StopReason::StopFile
        } else if options.time_budget.is_some_and(|t| start.elapsed() >= t) {
            StopReason::TimeBudget
        } else if options.step_budget.is_some_and(|n| steps_now >= n) {
            StopReason::StepBudget
        } else {
            reason
        };
        let stopping = trainer.steps_done() >= max_steps || reason != StopReason::Finished;
        let due = (!m.skipped && m.step % options.eval_interval.max(1) == 0)
            || options
                .checkpoint_every
                .is_some_and(|t| last_checkpoint.elapsed() >= t);
        if due || stopping {
            let (val_loss, bpb) = trainer.evaluate()?;
            record.val_loss = Some(val_loss);
            record.val_bits_per_byte = Some(bpb);
            record.gpu_peak_memory =
                crate::device::gpu_memory(trainer.model().device())?.map(|m| m.peak);
            if val_loss.is_finite() {
                save_checkpoints(trainer, options, val_loss, &mut best)?;
                last_checkpoint = Instant::now();
            } else {
                on_event(Event::Message(format!(
                    "step {}: validation loss {val_loss} is not finite; checkpoint not written (the previous one is kept)",
                    m.step
                )));
            }
        }
        writeln!(metrics, "{}", json(&record)).map_err(|e| Error::io(&metrics_path, e))?;
        on_event(Event::Step(&record));
        last = Some(record);
        if stopping {
            break;
        }
    }
    if reason != StopReason::Finished {
        on_event(Event::Message(format!(
            "stopped ({}) after step {}; `--resume` continues the run",
            match reason {
                StopReason::TimeBudget => "time budget reached",
                StopReason::StepBudget => "step budget reached",
                StopReason::StopFile => "STOP file found; delete it before resuming",
                StopReason::Interrupted => "interrupted",
                StopReason::Finished => unreachable!(),
            },
            trainer.steps_done()
        )));
    }
    Ok(RunSummary {
        reason,
        steps_now,
        last,
        best,
    })
}

fn json(record: &Record) -> String {
    serde_json::to_string(record).expect("a record serialises")
}

/// `checkpoint/`, then a hard-linked copy in `history/step-N/` (pruned to `keep_last`) and in
/// `best/` when the validation loss is the lowest so far.
fn save_checkpoints(
    trainer: &Trainer,
    options: &RunOptions,
    val_loss: f64,
    best: &mut Option<(u64, f64)>,
) -> Result<()> {
    let out = &options.out;
    let latest = out.join("checkpoint");
    trainer.save(&latest)?;
    let step = trainer.steps_done();
    if options.keep_last > 0 {
        let history = out.join("history");
        link_dir(&latest, &history.join(format!("step-{step:08}")))?;
        let mut kept: Vec<PathBuf> = std::fs::read_dir(&history)
            .map_err(|e| Error::io(&history, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            })
            .collect();
        kept.sort();
        for old in &kept[..kept.len().saturating_sub(options.keep_last)] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    if best.is_none_or(|(_, b)| val_loss < b) {
        link_dir(&latest, &out.join("best"))?;
        let note = serde_json::json!({ "step": step, "val_loss": val_loss });
        crate::atomic::write_bytes(&out.join("best/best.json"), note.to_string().as_bytes())?;
        *best = Some((step, val_loss));
    }
    Ok(())
}

/// The best checkpoint so far (from `best/best.json`), when resuming.
fn read_best(out: &Path) -> Option<(u64, f64)> {
    let text = std::fs::read_to_string(out.join("best/best.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v["step"].as_u64()?, v["val_loss"].as_f64()?))
}

/// Makes `dst` a copy of the folder `src` by hard links (copies where links are impossible),
/// replacing `dst` only once the copy is whole.
fn link_dir(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let from = entry.map_err(|e| Error::io(src, e))?.path();
        let to = tmp.join(from.file_name().expect("a file in a folder"));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    let _ = std::fs::remove_dir_all(dst);
    std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))
}

/// The records of a run's `metrics.jsonl` (for plots), oldest first.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                Error::data(
                    path,
                    format!("line {} is not a metrics record ({e})", i + 1),
                )
            })
        })
        .collect()
}
