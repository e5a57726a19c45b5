//! Bad input: each case is a clear error that names the file (or flag) and the fix, and nothing
//! already written is destroyed.

use std::path::{Path, PathBuf};

use tinygpt::data::npy::{self, NpyU16};
use tinygpt::data::{prepare, DataLoader, LoaderConfig, Manifest, PrepareOptions, Source, Split};
use tinygpt::Tokenizer;
use tinygpt_tests::*;

fn options() -> PrepareOptions {
    PrepareOptions {
        progress: false,
        ..PrepareOptions::default()
    }
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(&gpt2_tokenizer()).unwrap()
}

/// A folder with a small valid dataset: `n` stories per split.
fn small_dataset(dir: &Path, n: usize) -> PathBuf {
    let story = "Tom had a red ball. He threw it to his dog.\n";
    let text: String = (0..n)
        .map(|i| format!("{story}Story {i}.\n<|endoftext|>\n"))
        .collect();
    std::fs::write(dir.join("train.txt"), &text).unwrap();
    std::fs::write(dir.join("valid.txt"), &text).unwrap();
    dir.to_owned()
}

fn prepare_err(source: &Source, out: &Path) -> String {
    match prepare(source, &gpt2(), out, &options()) {
        Ok(_) => panic!("prepare should have failed"),
        Err(e) => e.to_string(),
    }
}

/// Every file under `dir` with its bytes, to prove a failed run changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn missing_or_empty_source_folder() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-such-folder");
    let err = prepare_err(&Source::Dir(missing.clone()), out.path());
    assert!(
        err.contains(missing.to_str().unwrap())
            && err.contains("does not exist")
            && err.contains("--source"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = prepare_err(&Source::Dir(empty.path().to_owned()), out.path());
    assert!(
        err.contains("no train files") && err.contains("TINYGPT_DATA"),
        "{err}"
    );
}

#[test]
fn text_without_separators_and_text_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    small_dataset(dir.path(), 3);
    std::fs::write(
        dir.path().join("train.txt"),
        "One long text.\nNo separators at all.\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = prepare_err(&Source::Dir(dir.path().to_owned()), out.path());
    assert!(
        err.contains("train.txt")
            && err.contains("<|endoftext|>")
            && err.contains("after every story"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("train.txt"),
        b"Good start.\n\xff\xfe bad bytes\n<|endoftext|>\n",
    )
    .unwrap();
    let err = prepare_err(&Source::Dir(dir.path().to_owned()), out.path());
    assert!(
        err.contains("train.txt") && err.contains("not UTF-8") && err.contains("offset 12"),
        "{err}"
    );
}

#[test]
fn corrupt_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    small_dataset(dir.path(), 3);
    std::fs::remove_file(dir.path().join("train.txt")).unwrap();
    let bad = dir.path().join("train-00000-of-00001.parquet");
    write_parquet(&bad, &vec!["a story".to_string(); 50]);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = prepare_err(&Source::Dir(dir.path().to_owned()), out.path());
    assert!(
        err.contains("train-00000-of-00001.parquet")
            && err.contains("not a readable parquet file")
            && err.contains("download it again"),
        "{err}"
    );

    std::fs::write(&bad, b"PAR1 this is not parquet").unwrap();
    let err = prepare_err(&Source::Dir(dir.path().to_owned()), out.path());
    assert!(err.contains("not a readable parquet file"), "{err}");
}

#[test]
fn bad_npy_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.npy");
    npy::write_u16(&path, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(NpyU16::open(&path).unwrap().tokens(), [1, 2, 3, 4, 5]);
    let good = std::fs::read(&path).unwrap();

    let check = |bytes: &[u8], expect: &str| {
        std::fs::write(&path, bytes).unwrap();
        let err = NpyU16::open(&path).err().expect("must fail").to_string();
        assert!(
            err.contains("shard.npy") && err.contains(expect) && err.contains("tinygpt prepare"),
            "{err}"
        );
    };
    check(&good[..good.len() - 3], "truncated");
    check(&good[..20], "truncated");
    let mut magic = good.clone();
    magic[1] = b'X';
    check(&magic, "magic");
    let mut wrong_dtype = good.clone();
    let at = good.windows(3).position(|w| w == b"<u2").unwrap();
    wrong_dtype[at + 2] = b'4';
    check(&wrong_dtype, "not uint16");
    check(b"", "magic");
}

#[test]
fn shards_made_by_another_tokenizer() {
    let data = tempfile::tempdir().unwrap();
    small_dataset(data.path(), 40);
    let out = tempfile::tempdir().unwrap();
    prepare(
        &Source::Dir(data.path().to_owned()),
        &gpt2(),
        out.path(),
        &options(),
    )
    .unwrap();

    // The same tokenizer with one token more: a different vocabulary size (and fingerprint).
    let mut other = tokenizers::Tokenizer::from_file(gpt2_tokenizer()).unwrap();
    other
        .add_tokens([tokenizers::AddedToken::from("<|pad|>", true)])
        .unwrap();
    let other_path = data.path().join("other.json");
    other.save(&other_path, false).unwrap();
    let other = Tokenizer::from_file(&other_path).unwrap();
    let config = LoaderConfig {
        batch_size: 1,
        block_size: 8,
        rank: 0,
        world_size: 1,
        seed: 0,
    };
    let err = DataLoader::open(out.path(), Split::Train, config.clone(), Some(&other))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("manifest.json")
            && err.contains("vocab size 50257 vs 50258")
            && err.contains("tinygpt prepare"),
        "{err}"
    );

    // A manifest whose EOS id disagrees with the tokenizer's.
    let mut manifest = Manifest::load(out.path()).unwrap();
    manifest.tokenizer.eos_id = 0;
    manifest.save(out.path()).unwrap();
    let err = DataLoader::open(out.path(), Split::Train, config.clone(), Some(&gpt2()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("EOS id 0 vs 50256"), "{err}");

    // No manifest at all.
    let empty = tempfile::tempdir().unwrap();
    let err = DataLoader::open(empty.path(), Split::Train, config, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("manifest.json") && err.contains("run `tinygpt prepare"),
        "{err}"
    );
}

#[test]
fn a_failed_prepare_leaves_earlier_shards_alone() {
    let data = tempfile::tempdir().unwrap();
    small_dataset(data.path(), 40);
    let out = tempfile::tempdir().unwrap();
    prepare(
        &Source::Dir(data.path().to_owned()),
        &gpt2(),
        out.path(),
        &options(),
    )
    .unwrap();
    let before = snapshot(out.path());

    // The same output folder, now with a broken validation file.
    std::fs::write(data.path().join("valid.txt"), "no separators here\n").unwrap();
    let err = prepare_err(&Source::Dir(data.path().to_owned()), out.path());
    assert!(err.contains("valid.txt"), "{err}");
    assert_eq!(snapshot(out.path()), before);
    assert!(
        !out.path().join(".prepare-staging").exists(),
        "the half-done work is cleaned up"
    );
}

#[test]
fn oversized_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = tokenizers::Tokenizer::from_file(gpt2_tokenizer()).unwrap();
    let extra: Vec<tokenizers::AddedToken> = (0..15_300)
        .map(|i| tokenizers::AddedToken::from(format!("<|extra_{i}|>"), true))
        .collect();
    big.add_tokens(extra).unwrap();
    let path = dir.path().join("big.json");
    big.save(&path, false).unwrap();
    let big = Tokenizer::from_file(&path).unwrap();
    assert!(big.vocab_size() > 65_536);
    small_dataset(dir.path(), 3);
    let err = prepare(
        &Source::Dir(dir.path().to_owned()),
        &big,
        &dir.path().join("out"),
        &options(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("uint16") && err.contains("65,536") && err.contains("smaller vocabulary"),
        "{err}"
    );
}

#[test]
fn bad_tokenizer_and_source_flags() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::load(dir.path().join("missing.json").to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing.json") && err.contains("--tokenizer"),
        "{err}"
    );
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"not\": \"a tokenizer\"}").unwrap();
    let err = Tokenizer::load(junk.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("junk.json") && err.contains("not a valid"),
        "{err}"
    );
    let err = Source::parse("hub:v9").err().unwrap().to_string();
    assert!(err.contains("--source hub:v9"), "{err}");
}

#[test]
fn a_benchmark_of_empty_batches_is_refused() {
    use tinygpt::bench::{train_throughput, TrainBenchOptions};
    let options = |batch_size, block_size| TrainBenchOptions {
        config: tinygpt::GptConfig::preset("tiny").unwrap(),
        device: tinygpt::candle_core::Device::Cpu,
        dtype: tinygpt::candle_core::DType::F32,
        batch_size,
        block_size,
        warmup_steps: 0,
        steps: 1,
        peak_flops: Some(1e12),
    };
    for (b, t) in [(0, 16), (2, 0)] {
        let err = train_throughput(&options(b, t)).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{b} × {t}: {err}");
    }
}

#[test]
fn a_driver_too_old_for_the_kernels_is_named_with_the_fix() {
    use tinygpt::device::kernel_failure_advice;
    // What cudarc reports when the driver rejects PTX from a newer CUDA.
    let ptx = "DriverError(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, \"the provided PTX was compiled \
               with an unsupported toolchain.\")";
    // CUDA numbers its versions 1000 · major + 10 · minor.
    let advice = kernel_failure_advice(ptx, Some(12040));
    assert!(
        advice.contains("supports CUDA 12.4,")
            && advice.contains("no newer than 12.4")
            && advice.contains("580")
            && advice.contains("docs/GPU.md"),
        "{advice}"
    );
    assert!(kernel_failure_advice(ptx, Some(12090)).contains("CUDA 12.9,"));
    // CUDA's libraries newer than the driver (cudaErrorInsufficientDriver's words).
    let libraries = "CUDA driver version is insufficient for CUDA runtime version";
    assert!(kernel_failure_advice(libraries, Some(12080)).contains("no newer than 12.8"));
    // Another failure: the driver's version only, as a clue.
    assert_eq!(
        kernel_failure_advice("CUDA_ERROR_OUT_OF_MEMORY", Some(13000)),
        " (the driver supports CUDA 13.0)"
    );
    // No driver to ask: nothing to add.
    assert_eq!(kernel_failure_advice(ptx, None), "");
}
