#![allow(dead_code)] // each test file uses a part of it
//! Helpers shared by the integration tests: where the shared fixtures are, the `tinygpt` binary,
//! and an offline Hugging Face hub cache built from the shared TinyStories sample.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::*;

/// The read-only fixtures folder beside the checkout (`../shared`), or `$TINYGPT_SHARED`.
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("TINYGPT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"));
    assert!(
        dir.join("data").is_dir(),
        "the shared fixtures are missing at {}",
        dir.display()
    );
    dir
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

pub fn tinystories_dir() -> PathBuf {
    shared().join("data/tinystories")
}

pub fn gpt2_tokenizer() -> PathBuf {
    shared().join("data/tokenizers/gpt2/tokenizer.json")
}

/// The `tinygpt` binary. Cargo builds it for the integration tests of its own package
/// (`tinygpt-lib/tests/cli.rs`, which includes this file), and names it in CARGO_BIN_EXE_tinygpt.
pub fn tinygpt_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_tinygpt") {
        Some(bin) => PathBuf::from(bin),
        None => panic!("the tinygpt binary is only built for the tests in tinygpt-lib/tests/"),
    }
}

/// Runs `tinygpt ARGS` with extra environment variables.
pub fn run_tinygpt(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(tinygpt_bin());
    command.args(args).env_remove("TINYGPT_DATA");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("tinygpt runs")
}

/// Writes stories as a parquet file with a `text` column, as the hub's TinyStories files are.
pub fn write_parquet(path: &Path, stories: &[String]) {
    let mut frame = DataFrame::new_infer_height(vec![Column::new("text".into(), stories)]).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut frame)
        .unwrap();
}

/// Builds `$HF_HOME` (returned) holding, in hf-hub's cache layout, the TinyStories dataset at the
/// pinned revision as parquet files made from the shared sample (train split over 4 files, as on
/// the hub) and GPT-Neo-125M's tokenizer.json (the GPT-2 file: same vocab and merges). With it,
/// the real hub code path runs offline.
pub fn hub_cache(root: &Path) -> PathBuf {
    use tinygpt::data::source::{read_stories, HUB_DATASET, HUB_REVISION};
    let hub = root.join("hub");
    let dataset = hub.join(format!("datasets--{}", HUB_DATASET.replace('/', "--")));
    std::fs::create_dir_all(dataset.join("refs")).unwrap();
    std::fs::write(dataset.join("refs").join(HUB_REVISION), HUB_REVISION).unwrap();
    let snapshot = dataset.join("snapshots").join(HUB_REVISION).join("data");
    let train = read_stories(&tinystories_dir().join("train.txt")).unwrap();
    let train_files = [
        "train-00000-of-00004-2d5a1467fff1081b.parquet",
        "train-00001-of-00004-5852b56a2bd28fd9.parquet",
        "train-00002-of-00004-a26307300439e943.parquet",
        "train-00003-of-00004-d243063613e5a057.parquet",
    ];
    for (file, part) in train_files
        .iter()
        .zip(train.chunks(train.len().div_ceil(4)))
    {
        write_parquet(&snapshot.join(file), part);
    }
    let valid = read_stories(&tinystories_dir().join("valid.txt")).unwrap();
    write_parquet(
        &snapshot.join("validation-00000-of-00001-869c898b519ad725.parquet"),
        &valid,
    );

    let model = hub.join("models--EleutherAI--gpt-neo-125M");
    let commit = "0000000000000000000000000000000000000000";
    std::fs::create_dir_all(model.join("refs")).unwrap();
    std::fs::write(model.join("refs/main"), commit).unwrap();
    let snapshot = model.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(gpt2_tokenizer(), snapshot.join("tokenizer.json")).unwrap();

    let model = hub.join("models--karpathy--tinyllamas");
    std::fs::create_dir_all(model.join("refs")).unwrap();
    std::fs::write(model.join("refs/main"), commit).unwrap();
    let snapshot = model.join("snapshots").join(commit).join("stories260K");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(
        shared().join("data/models/stories260K/stories260K.bin"),
        snapshot.join("stories260K.bin"),
    )
    .unwrap();
    root.to_owned()
}

/// A batch of packed rows of `t + 1` tokens each (inputs and targets), with the loader's
/// document ids and positions for end-of-text id `eos`.
pub fn packed_batch(rows: &[Vec<u32>], eos: u32) -> tinygpt::data::Batch {
    let t = rows[0].len() - 1;
    let mut b = tinygpt::data::Batch {
        b: rows.len(),
        t,
        x: vec![],
        y: vec![],
        doc: vec![],
        pos: vec![],
    };
    for row in rows {
        let (doc, pos) = tinygpt::data::document_ids(&row[..t], eos);
        b.x.extend(&row[..t]);
        b.y.extend(&row[1..]);
        b.doc.extend(doc);
        b.pos.extend(pos);
    }
    b
}

/// The largest absolute difference between two tensors of the same shape, on any device.
pub fn max_abs_diff(a: &tinygpt::candle_core::Tensor, b: &tinygpt::candle_core::Tensor) -> f32 {
    use tinygpt::candle_core::{DType, Device};
    let host = |t: &tinygpt::candle_core::Tensor| {
        t.to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .unwrap()
    };
    largest(&(host(a) - host(b)).unwrap().abs().unwrap())
}

/// The largest number of a float tensor, as f32.
fn largest(t: &tinygpt::candle_core::Tensor) -> f32 {
    let t = t.to_dtype(tinygpt::candle_core::DType::F32).unwrap();
    t.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `n` numbers `x_i = (i mod 7) − 3` and the sum of their squares, by hand: each run of seven
/// gives 9 + 4 + 1 + 0 + 1 + 4 + 9 = 28.
pub fn sevens(n: usize) -> (Vec<f32>, f64) {
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let tail: f64 = x[n / 7 * 7..].iter().map(|&a| (a * a) as f64).sum();
    (x, (n / 7 * 28) as f64 + tail)
}

/// Seeded logits for the cross-entropy checks, `rows × vocab` (row-major): normal numbers with
/// σ = 3, and one large logit in row 1, so that its softmax has a probability near 1.
pub fn wide_logits(rows: usize, vocab: usize) -> Vec<f32> {
    let mut rng = tinygpt::rng::Rng::new(5);
    let mut x: Vec<f32> = (0..rows * vocab)
        .map(|_| 3.0 * rng.normal() as f32)
        .collect();
    x[vocab + 9] = 25.0;
    x
}

/// The largest `|a − b| / (rel·|b| + abs)` over two tensors of one shape, on any device: at most
/// 1 when every number of `a` is within `rel` of `b`'s (relatively), give or take `abs`.
pub fn max_share_of_bound(
    a: &tinygpt::candle_core::Tensor,
    b: &tinygpt::candle_core::Tensor,
    rel: f64,
    abs: f64,
) -> f32 {
    let bound = ((b.abs().unwrap() * rel).unwrap() + abs).unwrap();
    largest(&((a - b).unwrap().abs().unwrap() / bound).unwrap())
}

/// Three stories of a few tokens, each opened by `eos`.
pub fn three_stories(eos: u32) -> [Vec<u32>; 3] {
    [
        vec![eos, 5, 9, 3, 7],
        vec![eos, 12, 30, 2, 2, 8, 21],
        vec![eos, 39, 1, 4],
    ]
}

/// The largest logit difference between a row packing `stories` (with the loader's document
/// ids and positions) and each story run on its own, on the model's device.
pub fn packed_vs_separate(model: &tinygpt::Gpt, stories: &[Vec<u32>], eos: u32) -> f32 {
    use tinygpt::candle_core::Tensor;
    let dev = model.device();
    let row = |v: &[u32]| Tensor::from_slice(v, (1, v.len()), dev).unwrap();
    let packed: Vec<u32> = stories.concat();
    let (doc, pos) = tinygpt::data::document_ids(&packed, eos);
    let logits = model
        .forward(&row(&packed), &row(&doc), &row(&pos))
        .unwrap();
    assert_eq!(logits.dims(), &[1, packed.len(), model.config().vocab_size]);
    let mut start = 0;
    let mut worst = 0f32;
    for s in stories {
        let n = s.len();
        let positions: Vec<u32> = (0..n as u32).collect();
        let alone = model
            .forward(&row(s), &row(&vec![0; n]), &row(&positions))
            .unwrap();
        worst = worst.max(max_abs_diff(&logits.narrow(1, start, n).unwrap(), &alone));
        start += n;
    }
    worst
}
