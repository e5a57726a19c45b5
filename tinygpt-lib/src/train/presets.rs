//! Training presets: a model preset plus the batch, schedule and devices of a run.

use super::trainer::TrainConfig;
use crate::model::GptConfig;
use crate::Result;

/// The named runs, with what they are.
pub const TRAIN_PRESETS: &[(&str, &str)] = &[
    ("seed-2x4090", "the original run: seed-61m, 2 GPUs × 16 micro-batches × 32 rows × 512 tokens = 524,288 tokens per step, 9,500 steps, bf16"),
    ("seed-1gpu", "the original run on one GPU: 32 micro-batches of 32 × 512 instead of 2 × 16 (the same 524,288-token steps)"),
];

/// A run preset by name: one of [`TRAIN_PRESETS`], or any model preset (see
/// [`GptConfig::preset`]) trained on one CPU with 8 rows per step for 1,000 steps. Returns the
/// config and the `--devices` it is meant for.
pub fn train_preset(name: &str) -> Result<(TrainConfig, &'static str)> {
    let seed = |grad_accum| TrainConfig {
        dtype: "bf16".into(),
        ..TrainConfig::recipe(
            GptConfig::preset("seed-61m").expect("a preset"),
            32,
            grad_accum,
            9_500,
        )
    };
    Ok(match name {
        "seed-2x4090" => (seed(16), "cuda:0,1"),
        "seed-1gpu" => (seed(32), "cuda:0"),
        model => (
            TrainConfig::recipe(GptConfig::preset(model)?, 8, 1, 1_000),
            "cpu",
        ),
    })
}
