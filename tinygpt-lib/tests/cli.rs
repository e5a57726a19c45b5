//! The `tinygpt` command line, run as a user runs it. These tests live in the binary's own package
//! so that cargo builds the binary for them (CARGO_BIN_EXE_tinygpt); they share the fixture
//! helpers of the workspace's `tests/` folder.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::*;
use tinygpt::data::{Manifest, Split};

/// A fresh, empty scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinygpt-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_source_folder_is_a_clear_error_not_a_panic() {
    let out = scratch("bad-source");
    let missing = out.join("no-such-folder");
    let output = run_tinygpt(
        &[
            "prepare",
            "--source",
            missing.to_str().unwrap(),
            "--tokenizer",
            gpt2_tokenizer().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.starts_with("error: ")
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no-such-folder") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn hub_path_runs_offline_from_a_populated_cache() {
    let hf_home = hub_cache(&scratch("hf-home"));
    let out_dir = scratch("hub-shards").join("shards");
    let output = run_tinygpt(
        &[
            "prepare",
            "--source",
            "hub",
            "--tokenizer",
            "gpt-neo",
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ],
        &[("HF_HOME", &hf_home)],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = Manifest::load(&out_dir).unwrap();
    assert_eq!(manifest.tokenizer.name, "gpt-neo");
    assert_eq!(manifest.splits[&Split::Train].stories, 8_650);
    assert_eq!(manifest.splits[&Split::Val].stories, 194);
    assert!(manifest.source.contains("roneneldan/TinyStories"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("MB/s"), "{stdout}");

    // Run again: the shards are reused.
    let output = run_tinygpt(
        &[
            "prepare",
            "--source",
            "hub",
            "--tokenizer",
            "gpt-neo",
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ],
        &[("HF_HOME", &hf_home)],
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("already holds these shards"));

    // An empty cache and no network: a clear error that names the repository and the way out.
    let empty = scratch("empty-hf-home");
    let output = run_tinygpt(
        &[
            "prepare",
            "--source",
            "hub",
            "--tokenizer",
            "gpt-neo",
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ],
        &[
            ("HF_HOME", empty.as_path()),
            ("HF_ENDPOINT", Path::new("http://127.0.0.1:9")),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("hub") && stderr.contains("--source DIR"),
        "{stderr}"
    );
    assert_eq!(
        Manifest::load(&out_dir).unwrap(),
        manifest,
        "a failed run leaves the shards alone"
    );
}
