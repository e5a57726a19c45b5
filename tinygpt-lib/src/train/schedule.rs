//! The learning-rate schedule: linear warmup, then cosine decay to a floor (the original:
//! 1e-3 → 1e-4, warmup over the first 1% of steps).
//!
//! Warmup keeps the first updates small while Adam's moment estimates are still noise; the
//! cosine then lowers the step size smoothly so the model settles into a minimum.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let decay_steps = (self.total_steps - self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps; // 0 → 1
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()); // 1 → 0
        self.min_lr + cosine * (self.max_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_then_floor() {
        let s = CosineSchedule {
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 1e-4); // 1e-3 · 1/10
        assert_eq!(s.lr(9), 1e-3);
        assert_eq!(s.lr(10), 1e-3); // cosine starts at the top
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-15); // halfway: the midpoint of 1e-3 and 1e-4
        assert!(
            (s.lr(35) - (1e-4 + 0.9e-3 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()))).abs()
                < 1e-15
        );
        assert_eq!(s.lr(110), 1e-4);
        assert_eq!(s.lr(5000), 1e-4);
    }
}
