//! # tinygpt
//!
//! Pretrain a GPT-2-style transformer on TinyStories, in Rust. This crate is the support library
//! of the notebooks in `notebooks/` and of the `tinygpt` command-line tool.
//!
//! The data flows one way: [`data::source`] (TinyStories from the hub or local files) →
//! [`tokenizer`] → [`data::shards`] (`uint16` `.npy` shards) → [`data::loader`] (batches with
//! document and position ids) → [`model`] (the GPT, its fused kernels, generation, checkpoints)
//! → [`train`] (AdamW, the learning-rate schedule, data parallel, the training loop). Beside
//! them: [`device`] (`--device`, `--dtype`), [`mod@bench`] (`tinygpt bench`), [`rng`] (seeded
//! initialisation and sampling), [`atomic`] (files written whole or not at all), [`error`].
//! [`plot`] draws the charts of the notebooks and the CLI.
//!
//! Notebooks use the crate by path: `:dep tinygpt = { path = "../tinygpt-lib" }`. The crates a
//! notebook needs besides are re-exported ([`polars`], [`candle_core`]) so that their versions
//! always match ours.

pub mod atomic;
pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod model;
pub mod plot;
pub mod rng;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::{Gpt, GptConfig};
pub use tokenizer::Tokenizer;

pub use candle_core;
pub use polars;
