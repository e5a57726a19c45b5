//! Training: the optimizer ([`optim`]: AdamW, gradient clipping), the learning-rate schedule
//! ([`schedule`]) and the loop that drives them ([`trainer`]).

pub mod optim;
pub mod schedule;
pub mod trainer;

pub use optim::{clip_factor, grad_norm, AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
pub use trainer::{evaluate, StepMetrics, TrainConfig, Trainer};
