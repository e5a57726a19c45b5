//! Executes every `notebooks/*.ipynb` through a real Jupyter kernel (evcxr) and fails on any error
//! output. `scripts/notebooks.sh` finds or installs the tools (nbconvert, evcxr_jupyter) under
//! `~/.cache/tinygpt` and keeps evcxr's build folder there, so only the first run is slow.
//!
//! The notebooks run offline: `TINYGPT_DATA` points at the shared TinyStories sample and
//! `HF_HOME` at a hub cache holding GPT-Neo's tokenizer, so the hub code path is the real one.
//! `TINYGPT_NOTEBOOK_TEST=1` tells notebooks to keep long runs short (same code path).
//!
//! `TINYGPT_UPDATE_NOTEBOOKS=1 cargo test -p tinygpt-tests --test notebooks` also writes each
//! notebook that ran cleanly back over the committed one: that is how the committed outputs are made.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use tinygpt_tests::*;

fn notebooks() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo_root().join("notebooks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    found.sort();
    found
}

/// The error outputs of an executed notebook, each with the start of its cell's source.
fn errors(executed: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for (i, cell) in executed["cells"].as_array().unwrap().iter().enumerate() {
        if cell["cell_type"] != "code" {
            continue;
        }
        let source: String = match &cell["source"] {
            Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().unwrap_or_default().to_owned(),
        };
        let head: String = source
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect();
        if cell["execution_count"].is_null() && !source.trim().is_empty() {
            found.push(format!("cell {i} ({head}) was not executed"));
        }
        for output in cell["outputs"].as_array().into_iter().flatten() {
            if output["output_type"] == "error" {
                let trace: Vec<&str> = output["traceback"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                found.push(format!(
                    "cell {i} ({head}): {} {}\n{}",
                    output["ename"],
                    output["evalue"],
                    trace.join("\n")
                ));
            }
            let text = output["text"]
                .as_array()
                .map(|l| l.iter().filter_map(Value::as_str).collect::<String>());
            if output["name"] == "stderr" && text.as_deref().is_some_and(|t| t.contains("panicked"))
            {
                found.push(format!("cell {i} ({head}) panicked: {}", text.unwrap()));
            }
        }
    }
    found
}

fn execute(notebook: &Path, out: &Path, env: &[(&str, &Path)]) -> Value {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/notebooks.sh"))
        .arg("execute")
        .arg(notebook)
        .arg(out);
    command.env("TINYGPT_NOTEBOOK_TEST", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("bash runs scripts/notebooks.sh");
    assert!(
        output.status.success(),
        "executing {} failed:\n{}\n{}",
        notebook.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn every_notebook_runs_without_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let hf_home = hub_cache(&scratch.path().join("hf"));
    let data = tinystories_dir();
    let env = [
        ("TINYGPT_DATA", data.as_path()),
        ("HF_HOME", hf_home.as_path()),
    ];
    let notebooks = notebooks();
    assert!(!notebooks.is_empty(), "no notebooks found");
    let mut failures = Vec::new();
    for notebook in &notebooks {
        let name = notebook.file_name().unwrap();
        let start = Instant::now();
        let executed = execute(notebook, &scratch.path().join(name), &env);
        println!(
            "notebook {}: {:.1} s",
            name.to_string_lossy(),
            start.elapsed().as_secs_f64()
        );
        let errors = errors(&executed);
        if errors.is_empty() && std::env::var_os("TINYGPT_UPDATE_NOTEBOOKS").is_some() {
            std::fs::copy(scratch.path().join(name), notebook).unwrap();
        }
        failures.extend(
            errors
                .into_iter()
                .map(|e| format!("{}: {e}", name.to_string_lossy())),
        );
    }
    assert!(
        failures.is_empty(),
        "notebook errors:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn committed_notebooks_carry_outputs_and_no_errors() {
    for notebook in notebooks() {
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&notebook).unwrap()).unwrap();
        let errors = errors(&committed);
        assert!(
            errors.is_empty(),
            "{}: {}",
            notebook.display(),
            errors.join("\n")
        );
        let outputs = committed["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outputs"].as_array().is_some_and(|o| !o.is_empty()))
            .count();
        assert!(
            outputs > 0,
            "{} was committed without the outputs of a real run",
            notebook.display()
        );
    }
}
