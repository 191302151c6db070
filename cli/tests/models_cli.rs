//! The model subcommands end to end: `edkd info --preset`, `edkd convert`, `edkd generate`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn edkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn info_prints_the_mu_parameter_count_and_its_twin() {
    let (ok, out, err) = edkd(&["info", "--preset", "mu-330m"]);
    assert!(ok, "{err}");
    assert!(out.contains("parameters    332.0M"), "{out}");
    let ratio: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("twin/student"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((ratio - 1.0).abs() <= 0.02, "{out}");
    let (ok, _, err) = edkd(&["info", "--preset", "huge"]);
    assert!(
        !ok && err.contains("unknown preset `huge`") && err.contains("mu-330m"),
        "{err}"
    );
}

#[test]
fn convert_then_generate_from_the_student_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("student");
    let fx = fixtures().join("mu_reference");
    let tok = fixtures().join("teachers/qwen2_tied/tokenizer.json");
    let (ok, stdout, err) = edkd(&[
        "convert",
        "--weights",
        fx.join("model.safetensors").to_str().unwrap(),
        "--config",
        fx.join("config.json").to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("3 encoder + 2 decoder layers"), "{stdout}");
    let (ok, stdout, err) = edkd(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--input-ids",
        "5,6,7,8,9",
        "--max-new-tokens",
        "7",
    ]);
    assert!(ok, "{err}");
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .unwrap();
    assert_eq!(ids.split(',').count(), 7, "{stdout}");
    // Sampling is seeded: the same seed gives the same ids.
    let args = [
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--input",
        "the student",
        "--max-new-tokens",
        "6",
        "--sample",
        "--temperature",
        "1.2",
        "--seed",
        "3",
    ];
    let (ok, a, err) = edkd(&args);
    assert!(ok, "{err}");
    assert_eq!(a, edkd(&args).1);
}

#[test]
fn generate_from_a_teacher_folder() {
    let dir = fixtures().join("teachers/llama_linear");
    let (ok, stdout, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        "the teacher scores",
        "--max-new-tokens",
        "20",
    ]);
    assert!(ok, "{err}");
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .unwrap();
    assert!(!ids.is_empty() && ids.split(',').count() <= 20, "{stdout}");
}

#[test]
fn bad_flags_are_explained() {
    let dir = fixtures().join("teachers/llama_linear");
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        "1,2,999",
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        !ok && err.contains("999") && err.contains("vocabulary"),
        "{err}"
    );
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        "1",
        "--dtype",
        "f16",
    ]);
    assert!(!ok && err.contains("Half"), "{err}");
    let (ok, _, err) = edkd(&["generate", "--model", "/nonexistent", "--input-ids", "1"]);
    assert!(!ok && err.contains("/nonexistent/config.json"), "{err}");
}
