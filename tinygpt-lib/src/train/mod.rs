//! Training: the optimizer ([`optim`]: AdamW, gradient clipping, with [`adamw_fused`]'s in-place
//! update and [`sum_squares`]'s one-pass norm), the learning-rate schedule
//! ([`schedule`]), how data-parallel workers share gradients ([`collective`]), one optimizer step
//! on every worker ([`trainer`]), and the loop around it ([`mod@run`]: evaluation, metrics,
//! checkpoints, stopping) that the CLI and the notebooks share.

pub mod adamw_fused;
pub mod collective;
pub mod optim;
pub mod presets;
pub mod run;
pub mod schedule;
pub mod sum_squares;
pub mod trainer;

pub use collective::{Collective, LocalGroup, Single};
pub use optim::{clip_factor, flatten_grads, grad_norm, AdamW, AdamWConfig};
pub use presets::{train_preset, TRAIN_PRESETS};
pub use run::{read_metrics, run, Event, Record, RunOptions, RunSummary, StopReason};
pub use schedule::CosineSchedule;
pub use sum_squares::sum_of_squares;
pub use trainer::{evaluate, with_memory_advice, StepMetrics, TrainConfig, Trainer};
