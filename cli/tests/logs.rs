//! Logs off a terminal, as `edkd ... > log 2>&1` or a cluster's collector sees them: no
//! ANSI escape codes and no progress-bar redraws in piped output, even with a colour
//! terminal named in `TERM`; with `--log-format json` (or `EDKD_LOG_FORMAT=json`) every
//! stderr line is one JSON object, failures included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edkd_data::synth::{self, Split};

const ESC: &str = "\x1b[";

fn teacher_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

/// `edkd args...` with stdout and stderr piped, as a terminal-less job runs it: no
/// `RUST_LOG` or `NO_COLOR` from the caller, and a `TERM` that would allow colours.
fn edkd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edkd"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("EDKD_LOG_FORMAT")
        .env("TERM", "xterm-256color");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeeded(what: &str, out: &Output) -> (String, String) {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Neither an escape sequence nor a carriage return (what a progress bar redraws with).
fn assert_plain(what: &str, s: &str) {
    assert!(!s.contains(ESC), "{what} has ANSI escapes:\n{s:?}");
    assert!(!s.contains('\r'), "{what} has carriage returns:\n{s:?}");
}

/// Every non-empty line of `stderr` as a JSON object.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(
                v.is_object() && v["level"].is_string() && v["timestamp"].is_string(),
                "{v}"
            );
            v
        })
        .collect()
}

fn write_config(dir: &Path, data: &Path) -> PathBuf {
    let teacher = teacher_dir();
    let text = format!(
        r#"seed = 1
threads = 1

[model]
preset = "tiny"

[data]
manifest = "{data}"
tokenizer = "{tokenizer}"

[teacher]
kind = "model"
model = "{teacher}"

[optim]
steps = 4
warmup_steps = 1

[batch]
max_tokens = 2000
max_rows = 4

[checkpoint]
every = 0

[eval]
every = 2
max_examples = 2
max_new_tokens = 2

[log]
progress = true
plot = true
tensorboard = false
"#,
        data = data.display(),
        tokenizer = teacher.join("tokenizer.json").display(),
        teacher = teacher.display(),
    );
    let path = dir.join("train.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn piped_logs_are_plain_and_json_lines_parse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tr, va) = (d.join("train.jsonl"), d.join("validation.jsonl"));
    synth::write_jsonl(&tr, &synth::generate("mix", Split::Train, 5, 24).unwrap()).unwrap();
    synth::write_jsonl(
        &va,
        &synth::generate("mix", Split::Validation, 5, 4).unwrap(),
    )
    .unwrap();
    let tokenizer = teacher_dir().join("tokenizer.json");
    let data = d.join("data");

    // `data prepare` shows a spinner on a terminal: none here.
    let path = |p: &Path| p.display().to_string();
    let (stdout, stderr) = succeeded(
        "data prepare",
        &edkd(&[
            "data",
            "prepare",
            "--input",
            &path(&tr),
            "--validation-input",
            &path(&va),
            "--tokenizer",
            &path(&tokenizer),
            "--max-input-tokens",
            "40",
            "--max-target-tokens",
            "8",
            "--out",
            &path(&data),
        ])
        .output()
        .unwrap(),
    );
    assert_plain("prepare stdout", &stdout);
    assert_plain("prepare stderr", &stderr);

    // Training with its progress bar on: text logs without escapes or redraws.
    let config = write_config(d, &data);
    let out = d.join("run-text");
    let (stdout, stderr) = succeeded(
        "train (text logs)",
        &edkd(&["train", "--config", &path(&config), "--out", &path(&out)])
            .output()
            .unwrap(),
    );
    assert_plain("train stdout", &stdout);
    assert_plain("train stderr", &stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("eval @ step 2")),
        "no plain INFO line for the evaluation:\n{stderr}"
    );
    assert!(
        !stderr.contains("steps ("),
        "a progress bar was drawn:\n{stderr}"
    );
    assert!(out.join("loss.png").exists(), "no loss figure");

    // The same run with JSON logs: every stderr line an object; the messages are there.
    let out = d.join("run-json");
    let (_, stderr) = succeeded(
        "train (json logs)",
        &edkd(&[
            "--log-format",
            "json",
            "train",
            "--config",
            &path(&config),
            "--out",
            &path(&out),
        ])
        .output()
        .unwrap(),
    );
    assert_plain("json stderr", &stderr);
    let lines = json_lines(&stderr);
    assert!(
        lines.iter().any(|v| v["level"] == "INFO"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("eval @ step 2"))),
        "no INFO evaluation line in {lines:?}"
    );

    // A failure through the environment variable is one JSON line too, naming the file.
    let missing = d.join("missing.toml");
    let out = edkd(&[
        "train",
        "--config",
        &path(&missing),
        "--out",
        &path(&d.join("x")),
    ])
    .env("EDKD_LOG_FORMAT", "json")
    .output()
    .unwrap();
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    let lines = json_lines(&stderr);
    let error = lines
        .iter()
        .find(|v| v["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line in {stderr}"));
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.toml")),
        "{error}"
    );

    // A bad value is refused by clap, naming the choices.
    let out = edkd(&["--log-format", "xml", "info"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}
