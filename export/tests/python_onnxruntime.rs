//! The exported graphs are standard ONNX: the `onnx` package's full checker accepts them,
//! and the `onnxruntime` Python package, given only the export folder, reproduces
//! libtorch's logits (within 1e-4) and greedy tokens.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use edkd_export::{ExportOptions, export_folder};
use edkd_models::{Decoding, GenerationConfig, LoadOptions, Teacher, generate_seq2seq};
use serde_json::{Value, json};

const SCRIPT: &str = "tests/fixtures/check_with_onnxruntime.py";

fn python() -> PathBuf {
    std::env::var("EDKD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

fn run_check(export: &Path, expected: &Value) -> Value {
    let exp_path = export.join("expected.json");
    std::fs::write(&exp_path, expected.to_string()).unwrap();
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .arg(export)
        .arg(&exp_path)
        .output()
        .expect("running the venv's python (scripts/setup.sh makes it)");
    assert!(
        out.status.success(),
        "check_with_onnxruntime.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn onnxruntime_python_runs_the_student_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("student");
    let s = tiny_student(&src, 21);
    let c = s.model.config.clone();
    let rows = inputs(6, 2, c.vocab_size, 9);
    let dec: Vec<Vec<i64>> = inputs(6, 6, c.vocab_size, 4)
        .into_iter()
        .map(|r| std::iter::once(c.bos_token_id).chain(r).take(6).collect())
        .collect();
    let (ids, valid) = right_pad(&rows, c.pad_token_id);
    let dec_t = tch::Tensor::from_slice(&dec.concat()).reshape([6, 6]);
    let logits = to_vec(&tch::no_grad(|| {
        s.model.forward(&ids, &valid, &dec_t, false)
    }));
    let cfg = GenerationConfig {
        eos_token_ids: vec![c.eos_token_id],
        pad_token_id: c.pad_token_id,
        ..GenerationConfig::greedy(10)
    };
    let tokens = generate_seq2seq(&s.model, &rows, &cfg, Decoding::Cached).unwrap();
    let out = tmp.path().join("onnx");
    export_folder(&src, &out, &ExportOptions::default()).unwrap();
    let expected = json!({"inputs": rows, "decoder_ids": dec, "logits": logits,
                          "tokens": tokens, "max_new_tokens": 10});
    let r = run_check(&out, &expected);
    println!("{r}");
    assert_eq!(r["checker"], json!({"encoder": "ok", "decoder": "ok"}));
    assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
    assert!(r["chunked_max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
    assert_eq!(r["greedy_rows_equal"], json!(6), "{r}");
}

#[test]
fn onnxruntime_python_runs_the_twin_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("twin");
    tiny_twin(&src, 2);
    let t = Teacher::load(&src, LoadOptions::default()).unwrap();
    let rows = inputs(5, 3, t.model.config.vocab_size, 8);
    let (ids, valid) = right_pad(&rows, 0);
    let logits = tch::no_grad(|| t.model.forward_padded(&ids, &valid));
    let logits = to_vec(&(logits * valid.unsqueeze(-1).to_kind(tch::Kind::Float)));
    let out = tmp.path().join("onnx");
    export_folder(&src, &out, &ExportOptions::default()).unwrap();
    let r = run_check(&out, &json!({"inputs": rows, "logits": logits}));
    println!("{r}");
    assert_eq!(r["checker"], json!({"model": "ok"}));
    assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
}
