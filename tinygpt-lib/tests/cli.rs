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
fn counts_and_peaks_of_zero_are_refused_by_name() {
    // Each of these once ran: a panic (--block-size 0), NaN losses (--batch-size 0), or a
    // meaningless figure (0 GFLOP/s, "best of 0", MFU inf%).
    for (command, flag) in [
        ("bench train --preset tiny --block-size 0", "--block-size"),
        ("bench train --preset tiny --batch-size 0", "--batch-size"),
        ("bench train --preset tiny --peak-tflops 0", "--peak-tflops"),
        ("bench matmul --size 0", "--size"),
        ("bench matmul --repeats 0", "--repeats"),
        ("bench decode --preset tiny --tokens 0", "--tokens"),
        ("prepare --shard-tokens 0", "--shard-tokens"),
        (
            "eval --checkpoint x --data y --batch-size 0",
            "--batch-size",
        ),
        (
            "train --preset tiny --data y --grad-accum 0",
            "--grad-accum",
        ),
        (
            "train --preset tiny --data y --peak-tflops=-5",
            "--peak-tflops",
        ),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        let err = failure(&run_tinygpt(&args, &[]));
        assert!(
            err.starts_with("error: ") && err.contains(flag) && !err.contains("panicked"),
            "{command}: {err}"
        );
    }
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

fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "tinygpt failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn model_commands_init_summary_generate_export() {
    let dir = scratch("model");
    let ckpt = dir.join("tiny");
    let tok = gpt2_tokenizer();
    // A tiny model with GPT-2's vocabulary does not fit: the tokenizer has 50,257 ids.
    let output = run_tinygpt(
        &[
            "init",
            "--preset",
            "tiny",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--out",
            ckpt.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("50257") && stderr.contains("4096"),
        "{stderr}"
    );
    // seed-61m fits it.
    let seed = dir.join("seed");
    let out = stdout_of(&run_tinygpt(
        &[
            "init",
            "--preset",
            "seed-61m",
            "--seed",
            "3",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--out",
            seed.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.contains("63847424 parameters"), "{out}");
    let summary = stdout_of(&run_tinygpt(
        &["summary", "--checkpoint", seed.to_str().unwrap()],
        &[],
    ));
    assert!(
        summary.contains("total: 63,847,424 parameters") && summary.contains("89,603,072"),
        "{summary}"
    );
    // Generation streams text after the prompt; the same seed gives the same text.
    let args = [
        "generate",
        "--checkpoint",
        seed.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
    ];
    let text = stdout_of(&run_tinygpt(&args, &[]));
    assert!(
        text.starts_with("Once upon a time") && text.len() > "Once upon a time".len(),
        "{text}"
    );
    assert_eq!(text, stdout_of(&run_tinygpt(&args, &[])));
    // Export to Hugging Face format.
    let hf = dir.join("hf");
    let out = stdout_of(&run_tinygpt(
        &[
            "export",
            "--checkpoint",
            seed.to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        out.contains("Gpt2")
            && hf.join("model.safetensors").is_file()
            && hf.join("tokenizer.json").is_file(),
        "{out}"
    );
    // A folder that holds files is not written over (it may be a training run's checkpoint)
    // unless --force says so; a file is not a folder.
    let weights = std::fs::read(seed.join("model.safetensors")).unwrap();
    let into_seed = |command: &str, force: bool| {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.extend(["--out", seed.to_str().unwrap()]);
        if force {
            args.push("--force");
        }
        run_tinygpt(&args, &[])
    };
    let hf_arg = format!("export --checkpoint {}", hf.display());
    for command in ["init --preset seed-61m", hf_arg.as_str()] {
        let err = failure(&into_seed(command, false));
        assert!(
            err.contains("already holds files") && err.contains("--force"),
            "{command}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(seed.join("model.safetensors")).unwrap(),
        weights
    );
    stdout_of(&into_seed("init --preset tiny", true));
    assert_ne!(
        std::fs::read(seed.join("model.safetensors")).unwrap(),
        weights
    );
    let file = hf.join("config.json");
    let err = failure(&run_tinygpt(
        &["init", "--preset", "tiny", "--out", file.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("is a file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama2c_checkpoints_generate_ids_and_export_as_llama() {
    let dir = scratch("llama2c");
    let bin = shared().join("data/models/stories260K/stories260K.bin");
    let out = stdout_of(&run_tinygpt(
        &[
            "generate",
            "--checkpoint",
            bin.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
            "--format",
            "ids",
        ],
        &[],
    ));
    assert_eq!(out.trim(), "461 461 401 401 401 461");
    // Without a tokenizer, text output is refused with the fix.
    let output = run_tinygpt(&["generate", "--checkpoint", bin.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--format ids"));
    // By name, from the (offline) hub cache.
    let hf_home = hub_cache(&dir.join("hf-home"));
    let out = stdout_of(&run_tinygpt(
        &[
            "generate",
            "--checkpoint",
            "stories260K",
            "--temperature",
            "0",
            "--max-new-tokens",
            "3",
            "--format",
            "ids",
        ],
        &[("HF_HOME", &hf_home)],
    ));
    assert_eq!(out.trim(), "461 461 401");
    let hf = dir.join("hf");
    let out = stdout_of(&run_tinygpt(
        &[
            "export",
            "--checkpoint",
            bin.to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.contains("Llama"), "{out}");
    let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    assert!(
        config.contains("\"num_key_value_heads\": 4")
            && config.contains("\"intermediate_size\": 172"),
        "{config}"
    );
    // A name that is neither a file nor a known model.
    let output = run_tinygpt(
        &[
            "summary",
            "--checkpoint",
            dir.join("nothing").to_str().unwrap(),
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs tinygpt with `stdin` as its standard input.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(tinygpt_bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn tokenizer_train_encode_decode_round_trip() {
    let dir = scratch("tokenizer");
    let out = dir.join("tok.json");
    let corpus = shared().join("data/bpe-fixtures/corpus.en");
    let text = stdout_of(&run_tinygpt(
        &[
            "tokenizer",
            "train",
            "--input",
            corpus.to_str().unwrap(),
            "--vocab-size",
            "500",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(text.contains("trained 500 tokens (243 merges)"), "{text}");
    let story = "Once upon a time, Tom saw a dog.<|endoftext|>Héllo 🙃\n";
    let ids = stdout_of(&run_with_stdin(
        &["tokenizer", "encode", "--tokenizer", out.to_str().unwrap()],
        story.as_bytes(),
    ));
    let parsed: Vec<u32> = ids.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert!(
        parsed.contains(&0),
        "<|endoftext|> is one token, id 0: {ids}"
    );
    assert!(parsed.iter().all(|&id| id < 500));
    let back = stdout_of(&run_with_stdin(
        &["tokenizer", "decode", "--tokenizer", out.to_str().unwrap()],
        ids.as_bytes(),
    ));
    assert_eq!(back, story);
    // The same file through the `tokenizers` crate gives the same ids.
    let theirs = tokenizers::Tokenizer::from_file(&out).unwrap();
    assert_eq!(
        theirs.encode(story, false).unwrap().get_ids(),
        parsed.as_slice()
    );
    // Bad input.
    let bad = |args: &[&str], stdin: &[u8], expected: &[&str]| {
        let output = run_with_stdin(args, stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && expected.iter().all(|e| stderr.contains(e)),
            "{args:?}: {stderr}"
        );
    };
    bad(
        &[
            "tokenizer",
            "train",
            "--input",
            corpus.to_str().unwrap(),
            "--vocab-size",
            "100",
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
        &["--vocab-size 100", "256"],
    );
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    bad(
        &[
            "tokenizer",
            "train",
            "--input",
            latin1.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
        &["latin1.txt", "offset 3"],
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    bad(
        &[
            "tokenizer",
            "train",
            "--input",
            empty.to_str().unwrap(),
            "--vocab-size",
            "300",
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
        &["empty"],
    );
    bad(
        &["tokenizer", "decode", "--tokenizer", out.to_str().unwrap()],
        b"1 2 99999",
        &["99999", "500"],
    );
    bad(
        &["tokenizer", "decode", "--tokenizer", out.to_str().unwrap()],
        b"1 two",
        &["`two`"],
    );
    // The failed trainings left the good file in place.
    assert_eq!(
        tinygpt::Tokenizer::from_file(&out).unwrap().vocab_size(),
        500
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prepare_trains_our_bpe_then_reuses_it() {
    let dir = scratch("prepare-bpe");
    let out = dir.join("bpe");
    let source = tinystories_dir();
    let args = [
        "prepare",
        "--source",
        source.to_str().unwrap(),
        "--tokenizer",
        "bpe:400",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    let first = stdout_of(&run_tinygpt(&args, &[]));
    assert!(first.contains("trained our BPE (400 tokens)"), "{first}");
    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(manifest.tokenizer.vocab_size, 400);
    let tok = tinygpt::Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    assert_eq!(manifest.tokenizer.fingerprint, tok.fingerprint());
    let second = stdout_of(&run_tinygpt(&args, &[]));
    assert!(
        second.contains("reusing") && second.contains("nothing to do"),
        "{second}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_writes_metrics_and_checkpoints_and_resumes() {
    let dir = scratch("train");
    let data = dir.join("data");
    let source = tinystories_dir();
    stdout_of(&run_tinygpt(
        &[
            "prepare",
            "--source",
            source.to_str().unwrap(),
            "--tokenizer",
            "bpe:300",
            "--out",
            data.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    ));
    let run = dir.join("run");
    let four_steps = ["--max-steps", "4", "--eval-interval", "2"];
    let out = stdout_of(&train_in(&data, &run, &four_steps));
    assert!(out.contains("4 steps"), "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[1]["val_bits_per_byte"].as_f64().unwrap() > 0.0 && lines[0].get("val_loss").is_none()
    );
    assert!(
        run.join("checkpoint/model.safetensors").is_file()
            && run.join("checkpoint/optimizer.safetensors").is_file()
    );
    // The checkpoint generates text with its tokenizer.
    let text = stdout_of(&run_tinygpt(
        &[
            "generate",
            "--checkpoint",
            run.join("checkpoint").to_str().unwrap(),
            "--prompt",
            "Once",
            "--max-new-tokens",
            "5",
        ],
        &[],
    ));
    assert!(text.starts_with("Once"), "{text}");
    // Resuming a finished run does nothing; a time budget of 0 stops after one step.
    let resume = [&four_steps[..], &["--resume"]].concat();
    assert!(stdout_of(&train_in(&data, &run, &resume)).contains("nothing to do"));
    let short = dir.join("short");
    let out = stdout_of(&train_in(&data, &short, &["--time-budget", "0"]));
    assert!(
        out.contains("1 steps") && short.join("checkpoint/trainer.json").is_file(),
        "{out}"
    );
    // Shards whose vocabulary does not fit the model.
    let neo = dir.join("neo");
    stdout_of(&run_tinygpt(
        &[
            "prepare",
            "--source",
            source.to_str().unwrap(),
            "--tokenizer",
            gpt2_tokenizer().to_str().unwrap(),
            "--out",
            neo.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    ));
    let stderr = failure(&train_in(&neo, &dir.join("bad"), &[]));
    assert!(
        stderr.contains("50257") && stderr.contains("4096"),
        "{stderr}"
    );
    // `eval` of the checkpoint gives the validation loss the run recorded last; on shards of
    // another tokenizer it refuses.
    let ckpt = run.join("checkpoint");
    let eval = |data: &Path| {
        let (ckpt, data) = (ckpt.to_str().unwrap(), data.to_str().unwrap());
        run_tinygpt(
            &[
                "eval",
                "--checkpoint",
                ckpt,
                "--data",
                data,
                "--batch-size",
                "2",
            ],
            &[],
        )
    };
    let out = stdout_of(&eval(&data));
    let recorded = lines[3]["val_loss"].as_f64().unwrap();
    assert!(
        out.contains(&format!("validation loss {recorded:.4}")),
        "{out} vs {recorded}"
    );
    assert!(failure(&eval(&neo)).contains("50257"));
    train_run_folder_errors_and_configs(&dir, &data, &run, &short);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tinygpt train` with `--out`, the tiny preset, 2 rows per step, and `extra` flags.
fn train_in(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "2",
    ];
    args.extend(extra);
    run_tinygpt(&args, &[])
}

fn failure(output: &std::process::Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        stdout_of(output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn trainer_step(ckpt: &Path) -> u64 {
    let text = std::fs::read_to_string(ckpt.join("trainer.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["step"]
        .as_u64()
        .unwrap()
}

/// The run folder of a finished run (`run`: 4 steps, evaluated every 2) and of a 1-step run
/// (`short`): history and best copies, refusals, config files, corrupt checkpoints, a full disk.
fn train_run_folder_errors_and_configs(dir: &Path, data: &Path, run: &Path, short: &Path) {
    assert!(run
        .join("history/step-00000002/model.safetensors")
        .is_file());
    assert!(run.join("history/step-00000004/trainer.json").is_file());
    assert!(run.join("best/best.json").is_file());
    // A fresh run into a folder that holds one is refused: nothing is overwritten.
    let err = failure(&train_in(data, run, &["--max-steps", "4"]));
    assert!(
        err.contains("--resume") && err.contains("already holds a run"),
        "{err}"
    );
    // --resume continues a run as it was started: a setting the command line chooses that
    // differs from the run's is refused by name, not ignored; a preset chooses them all.
    let err = failure(&train_in(data, run, &["--max-steps", "8", "--resume"]));
    assert!(
        err.contains("max_steps 8 (the run's: 4)") && !err.contains("batch_size"),
        "{err}"
    );
    let (data_arg, run_arg) = (data.to_str().unwrap(), run.to_str().unwrap());
    let without_preset = ["train", "--data", data_arg, "--out", run_arg, "--resume"];
    let err = failure(&run_tinygpt(
        &[&without_preset[..], &["--grad-accum", "3"]].concat(),
        &[],
    ));
    assert!(err.contains("grad_accum 3 (the run's: 1)"), "{err}");
    let err = failure(&run_tinygpt(
        &[&without_preset[..], &["--preset", "small"]].concat(),
        &[],
    ));
    assert!(err.contains("model.n_layer 6 (the run's: 4)"), "{err}");
    // Without a preset, flags it does not give are the run's own: nothing to refuse.
    assert!(stdout_of(&run_tinygpt(&without_preset, &[])).contains("nothing to do"));
    // --resume where there is nothing to resume; a corrupt checkpoint.
    let err = failure(&train_in(data, &dir.join("empty"), &["--resume"]));
    assert!(err.contains("nothing to resume"), "{err}");
    let corrupt = dir.join("corrupt/checkpoint");
    std::fs::create_dir_all(&corrupt).unwrap();
    for f in std::fs::read_dir(run.join("checkpoint")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, corrupt.join(f.file_name().unwrap())).unwrap();
    }
    let model = corrupt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = failure(&train_in(data, &dir.join("corrupt"), &["--resume"]));
    assert!(err.contains("model.safetensors"), "{err}");
    // Flags: devices, durations.
    let err = failure(&train_in(data, &dir.join("x"), &["--devices", "cuda:0"]));
    assert!(
        err.contains("--devices cuda:0") && err.contains("without CUDA"),
        "{err}"
    );
    let err = failure(&train_in(data, &dir.join("x"), &["--devices", "gpu"]));
    assert!(err.contains("--devices gpu"), "{err}");
    for twice in ["cuda:0,0", "cuda,cuda:0", "cuda:1,cuda:0,01"] {
        let err = failure(&train_in(data, &dir.join("x"), &["--devices", twice]));
        assert!(
            err.contains(&format!("--devices {twice}")) && err.contains("listed twice"),
            "{err}"
        );
    }
    let err = failure(&train_in(data, &dir.join("x"), &["--time-budget", "10x"]));
    assert!(err.contains("not a duration"), "{err}");
    let file = run.join("metrics.jsonl");
    let err = failure(&train_in(data, &file, &[]));
    assert!(err.contains("is a file, not a folder"), "{err}");
    // The original run as a config file: printed, read back, and refused when malformed.
    let printed = stdout_of(&run_tinygpt(
        &["train", "--preset", "seed-2x4090", "--print-config"],
        &[],
    ));
    for line in [
        "devices = \"cuda:0,1\"",
        "batch_size = 32",
        "grad_accum = 16",
        "max_steps = 9500",
        "n_layer = 12",
        "vocab_size = 50304",
        "dtype = \"bf16\"",
    ] {
        assert!(printed.contains(line), "{line} in\n{printed}");
    }
    let file = dir.join("seed.toml");
    std::fs::write(&file, &printed).unwrap();
    let again = stdout_of(&run_tinygpt(
        &[
            "train",
            "--config",
            file.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    ));
    assert_eq!(again, printed);
    std::fs::write(
        &file,
        printed.replace("batch_size = 32", "batch_size = \"many\""),
    )
    .unwrap();
    let err = failure(&run_tinygpt(
        &[
            "train",
            "--config",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        err.contains("seed.toml") && err.contains("batch_size"),
        "{err}"
    );
    // A full disk while checkpointing (files may grow to 1 MB; the model alone is larger): the
    // run fails with the file's name, the previous checkpoint survives whole and resumes.
    assert_eq!(trainer_step(&short.join("checkpoint")), 1);
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 1024; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(tinygpt_bin())
        .args([
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            short.to_str().unwrap(),
        ])
        .args(["--resume", "--time-budget", "0"])
        .env_remove("TINYGPT_DATA")
        .output()
        .unwrap();
    let err = failure(&output);
    assert!(
        err.contains("checkpoint.tmp") && err.contains("too large"),
        "{err}"
    );
    assert_eq!(trainer_step(&short.join("checkpoint")), 1);
    let out = stdout_of(&train_in(data, short, &["--resume", "--time-budget", "0"]));
    assert!(out.contains("2 steps"), "{out}");
}

#[test]
fn quickstart_trains_below_the_unigram_entropy_and_writes_a_curve_and_a_story() {
    let dir = scratch("quickstart");
    let source = tinystories_dir();
    let args = [
        "quickstart",
        "--source",
        source.to_str().unwrap(),
        "--time-budget",
        "60",
        "--out",
        dir.to_str().unwrap(),
    ];
    let out = stdout_of(&run_tinygpt(&args, &[]));
    let line = out
        .lines()
        .find(|l| l.starts_with("4/4 validation loss"))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (val_loss, unigram) = (numbers[1], *numbers.last().unwrap());
    assert!(
        val_loss < unigram - 0.5,
        "validation loss {val_loss} is not clearly below the unigram entropy {unigram}: {out}"
    );
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(dir.join("run/checkpoint/model.safetensors").is_file());
    let story = out.split("A story:").nth(1).unwrap().trim();
    assert!(
        story.starts_with("Once upon a time") && story.split_whitespace().count() > 10,
        "{story}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
