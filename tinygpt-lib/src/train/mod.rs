//! Training: the optimizer ([`optim`]: AdamW, gradient clipping) and the learning-rate
//! schedule ([`schedule`]).

pub mod optim;
pub mod schedule;

pub use optim::{clip_factor, grad_norm, AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
