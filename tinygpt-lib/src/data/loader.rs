//! Batches for training: inputs `x`, targets `y`, and for every token its document id and its
//! position inside that document.
//!
//! ## Documents in a packed row
//!
//! Shards hold stories back to back, each opened by the end-of-text token: `EOS a b c EOS d e …`.
//! A row of `T` tokens cut from that stream packs several stories, and attention must not cross
//! from one story into another. So every token gets
//! - `doc`: which document of the row it belongs to (0, 1, 2, … counted from the row's start),
//! - `pos`: its position inside that document, restarting at 0 where the document starts.
//!
//! A document starts **at the first token of the row** and **at every EOS**: the EOS is the first
//! token of its own story (position 0), exactly as a story run on its own, or a generation started
//! from EOS, sees it. The attention mask and the position ids therefore change at the same token
//! (the original project reset them one token apart), and no token is ever predicted from the
//! context of a different story. The EOS id comes from the shards' manifest, never a constant.
//!
//! ```text
//! x    EOS  a  b  EOS  c  d  EOS  e
//! doc   0   0  0   1   1  1   2   2
//! pos   0   1  2   0   1  2   0   1
//! ```
//!
//! ## Data parallel
//!
//! With `world_size` workers, each shard is cut into chunks of `B·T` tokens (+1 for the last
//! target) and worker `rank` reads chunks `rank, rank + world, rank + 2·world, …`: disjoint slices
//! that together cover the shard (the tail that does not fill a chunk for every worker is
//! dropped). The shard order of each epoch is shuffled from the seed alone, so every worker
//! computes the same order without talking to the others.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::npy::NpyU16;
use super::shards::Manifest;
use super::source::Split;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Targets with this value are padding and must add nothing to the loss (only the last batch of
/// the validation reader has any).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// One batch of `b` rows of `t` tokens, row-major (`x[i * t + j]` is row `i`, column `j`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    /// Input token ids, `(B, T)`.
    pub x: Vec<u32>,
    /// Target ids, `(B, T)`: `y[i, j]` is the token after `x[i, j]`.
    pub y: Vec<u32>,
    /// Document id of each input token inside its row, `(B, T)`.
    pub doc: Vec<u32>,
    /// Position of each input token inside its document, `(B, T)`.
    pub pos: Vec<u32>,
}

/// The same batch as candle tensors of shape `(B, T)` and dtype `u32`.
pub struct BatchTensors {
    pub x: candle_core::Tensor,
    pub y: candle_core::Tensor,
    pub doc: candle_core::Tensor,
    pub pos: candle_core::Tensor,
}

impl Batch {
    /// Builds a batch from rows of `t + 1` tokens (inputs and the one extra target).
    fn from_rows<'a>(rows: impl Iterator<Item = &'a [u16]>, t: usize, eos: u32) -> Self {
        let mut batch = Batch {
            b: 0,
            t,
            x: Vec::new(),
            y: Vec::new(),
            doc: Vec::new(),
            pos: Vec::new(),
        };
        for row in rows {
            let inputs: Vec<u32> = row.iter().take(t).map(|&v| v as u32).collect();
            let (doc, pos) = document_ids(&inputs, eos);
            let pad = t - inputs.len();
            batch.x.extend(&inputs);
            batch.x.extend(std::iter::repeat_n(eos, pad));
            batch.y.extend(row.iter().skip(1).map(|&v| v as u32));
            batch
                .y
                .extend(std::iter::repeat_n(IGNORE_INDEX, t - (row.len() - 1)));
            // Padding forms a document of its own, so it can never be attended to.
            let pad_doc = doc.last().map_or(0, |d| d + 1);
            batch.doc.extend(&doc);
            batch.doc.extend(std::iter::repeat_n(pad_doc, pad));
            batch.pos.extend(&pos);
            batch.pos.extend(0..pad as u32);
            batch.b += 1;
        }
        batch
    }

    /// Number of real (non-padding) targets.
    pub fn n_targets(&self) -> usize {
        self.y.iter().filter(|&&y| y != IGNORE_INDEX).count()
    }

    pub fn to_tensors(&self, device: &candle_core::Device) -> candle_core::Result<BatchTensors> {
        let shape = (self.b, self.t);
        let make = |v: &[u32]| candle_core::Tensor::from_slice(v, shape, device);
        Ok(BatchTensors {
            x: make(&self.x)?,
            y: make(&self.y)?,
            doc: make(&self.doc)?,
            pos: make(&self.pos)?,
        })
    }
}

/// Document ids and position ids of one row (see the module docs): a document starts at the
/// row's first token and at every `eos`.
pub fn document_ids(row: &[u32], eos: u32) -> (Vec<u32>, Vec<u32>) {
    let mut doc = Vec::with_capacity(row.len());
    let mut pos = Vec::with_capacity(row.len());
    let (mut d, mut p) = (0u32, 0u32);
    for (i, &token) in row.iter().enumerate() {
        if i > 0 {
            if token == eos {
                d += 1;
                p = 0;
            } else {
                p += 1;
            }
        }
        doc.push(d);
        pos.push(p);
    }
    (doc, pos)
}

/// Shape of the batches and this worker's place among the data-parallel workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Rows per batch (the micro-batch of one worker), `B`.
    pub batch_size: usize,
    /// Tokens per row, `T` (the model's context length, `block_size`).
    pub block_size: usize,
    pub rank: usize,
    pub world_size: usize,
    /// Seeds the shard order of every epoch.
    pub seed: u64,
}

/// Where a loader stands: enough to continue exactly where it stopped (saved in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Index into this epoch's shuffled shard order.
    pub shard: usize,
    /// Batches this worker has already read from that shard.
    pub step: usize,
}

/// The split's shards, memory-mapped, with their EOS id; shared by both loaders.
struct ShardSet {
    shards: Vec<NpyU16>,
    eos: u32,
}

impl ShardSet {
    fn open(dir: &Path, split: Split, tokenizer: Option<&Tokenizer>) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if let Some(tokenizer) = tokenizer {
            manifest.check_tokenizer(dir, tokenizer)?;
        }
        let info = manifest.splits.get(&split).ok_or_else(|| {
            Error::data(
                &dir.join(super::shards::MANIFEST),
                format!("lists no {} shards; re-run `tinygpt prepare`", split.name()),
            )
        })?;
        let mut shards = Vec::new();
        for (path, shard) in manifest.shard_paths(dir, split).iter().zip(&info.shards) {
            let npy = NpyU16::open(path)?;
            if npy.len() as u64 != shard.tokens {
                return Err(Error::data(
                    path,
                    format!(
                    "holds {} tokens but the manifest says {}; re-run `tinygpt prepare --force`",
                    npy.len(), shard.tokens
                ),
                ));
            }
            shards.push(npy);
        }
        Ok(Self {
            shards,
            eos: manifest.tokenizer.eos_id,
        })
    }
}

/// The training loader: endless, epoch after epoch, resumable.
pub struct DataLoader {
    set: ShardSet,
    config: LoaderConfig,
    cursor: Cursor,
    order: Vec<usize>,
}

impl DataLoader {
    /// Opens the shards of `split` in `dir` (written by `tinygpt prepare`). With a tokenizer, the
    /// manifest is checked against it first.
    pub fn open(
        dir: &Path,
        split: Split,
        config: LoaderConfig,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self> {
        let (b, t, world) = (config.batch_size, config.block_size, config.world_size);
        if b == 0 || t == 0 || world == 0 || config.rank >= world {
            return Err(Error::Invalid(format!(
                "loader: batch size {b}, block size {t}, rank {} of world size {world}: sizes must be \
                 at least 1 and the rank below the world size", config.rank
            )));
        }
        let set = ShardSet::open(dir, split, tokenizer)?;
        let loader = Self {
            order: shard_order(set.shards.len(), config.seed, 0),
            set,
            config,
            cursor: Cursor::default(),
        };
        if loader.batches_per_epoch() == 0 {
            let tokens: usize = loader.set.shards.iter().map(NpyU16::len).sum();
            return Err(Error::data(dir, format!(
                "the {} shards hold {tokens} tokens, too few for one batch of {b}×{t} tokens on each of {world} workers; \
                 use a smaller --batch-size, a shorter context (block_size in a --config file) or more stories", split.name()
            )));
        }
        Ok(loader)
    }

    /// Batches this worker reads per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        (0..self.set.shards.len()).map(|s| self.rounds(s)).sum()
    }

    /// Rounds of `world_size` chunks in shard `s`: one batch per worker per round.
    fn rounds(&self, shard: usize) -> usize {
        let chunk = self.config.batch_size * self.config.block_size;
        let len = self.set.shards[shard].len();
        (len.saturating_sub(1) / chunk) / self.config.world_size
    }

    /// The next batch; after the last batch of an epoch, the next epoch starts with a new order.
    pub fn next_batch(&mut self) -> Batch {
        loop {
            if self.cursor.shard == self.order.len() {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    shard: 0,
                    step: 0,
                };
                self.order =
                    shard_order(self.set.shards.len(), self.config.seed, self.cursor.epoch);
            }
            let shard = self.order[self.cursor.shard];
            if self.cursor.step < self.rounds(shard) {
                let batch = self.read(
                    shard,
                    self.cursor.step * self.config.world_size + self.config.rank,
                );
                self.cursor.step += 1;
                return batch;
            }
            self.cursor.shard += 1;
            self.cursor.step = 0;
        }
    }

    /// Chunk `k` of `shard`: `B` rows of `T + 1` tokens starting at token `k·B·T`.
    fn read(&self, shard: usize, k: usize) -> Batch {
        let (b, t) = (self.config.batch_size, self.config.block_size);
        let tokens = self.set.shards[shard].tokens();
        let start = k * b * t;
        let rows = (0..b).map(|i| &tokens[start + i * t..start + (i + 1) * t + 1]);
        Batch::from_rows(rows, t, self.set.eos)
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Continues from a saved cursor: the next batch is the one that followed it.
    pub fn set_cursor(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.shard > self.set.shards.len() {
            return Err(Error::Invalid(format!(
                "data cursor points at shard {} but there are {}: the checkpoint belongs to other data",
                cursor.shard, self.set.shards.len()
            )));
        }
        self.order = shard_order(self.set.shards.len(), self.config.seed, cursor.epoch);
        self.cursor = cursor;
        Ok(())
    }

    pub fn eos_id(&self) -> u32 {
        self.set.eos
    }
}

/// The shard order of one epoch: a Fisher–Yates shuffle driven by SplitMix64 of (seed, epoch).
/// Hand-written so the order never changes with a dependency's version.
pub fn shard_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The validation reader: every token of the split exactly once, in order, no shuffling.
///
/// Each shard is cut into rows of `T` inputs (the last row of a shard is shorter and padded: inputs
/// with EOS, targets with [`IGNORE_INDEX`]); rows are grouped into batches of up to `B` (the last
/// batch may have fewer rows). Worker `rank` gets batches `rank, rank + world, …`. Every token but
/// the first of each shard is a target exactly once.
pub struct ValLoader {
    set: ShardSet,
    batch_size: usize,
    block_size: usize,
    /// (shard, start token) of every row, in order.
    rows: Vec<(usize, usize)>,
    next_batch: usize,
    rank: usize,
    world_size: usize,
}

impl ValLoader {
    pub fn open(
        dir: &Path,
        batch_size: usize,
        block_size: usize,
        rank: usize,
        world_size: usize,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self> {
        if batch_size == 0 || block_size == 0 || world_size == 0 || rank >= world_size {
            return Err(Error::Invalid(
                "validation loader: sizes must be at least 1 and rank < world size".into(),
            ));
        }
        let set = ShardSet::open(dir, Split::Val, tokenizer)?;
        let rows = set
            .shards
            .iter()
            .enumerate()
            .flat_map(|(s, shard)| {
                (0..shard.len().saturating_sub(1))
                    .step_by(block_size)
                    .map(move |start| (s, start))
            })
            .collect();
        Ok(Self {
            set,
            batch_size,
            block_size,
            rows,
            next_batch: rank,
            rank,
            world_size,
        })
    }

    /// Batches over the whole split (for all workers together).
    pub fn n_batches(&self) -> usize {
        self.rows.len().div_ceil(self.batch_size)
    }

    /// Starts again from the first batch.
    pub fn reset(&mut self) {
        self.next_batch = self.rank;
    }
}

impl Iterator for ValLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let first = self.next_batch * self.batch_size;
        if first >= self.rows.len() {
            return None;
        }
        self.next_batch += self.world_size;
        let t = self.block_size;
        let rows = self.rows[first..(first + self.batch_size).min(self.rows.len())]
            .iter()
            .map(|&(s, start)| {
                let tokens = self.set.shards[s].tokens();
                &tokens[start..(start + t + 1).min(tokens.len())]
            });
        Some(Batch::from_rows(rows, t, self.set.eos))
    }
}
