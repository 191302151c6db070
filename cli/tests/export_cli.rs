//! The export round trip through the `edkd` binary: `edkd export` a student and a teacher,
//! then `edkd generate --runtime onnx` prints what libtorch prints and `edkd eval
//! --runtime onnx` scores what libtorch scores (f32), int8 close to it; unsupported models
//! and a missing ONNX Runtime fail with errors that say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};
use edkd_models::student::{StudentConfig, StudentModel};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/teachers")
        .join(name)
}

fn edkd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edkd"))
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = edkd(args);
    assert!(
        out.status.success(),
        "edkd {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A prepared dataset tokenized with the llama_linear fixture's tokenizer.
fn prepare(dir: &Path) -> PathBuf {
    let tr = dir.join("train.jsonl");
    synth::write_jsonl(&tr, &synth::generate("mix", Split::Train, 3, 24).unwrap()).unwrap();
    let out = dir.join("data");
    let config = PrepareConfig {
        max_input_tokens: Some(40),
        max_target_tokens: Some(12),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 32,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(
            &[&tr],
            &fixture("llama_linear").join("tokenizer.json"),
            &out,
        )
    };
    edkd_data::prepare::prepare(&config).unwrap();
    out
}

/// A tiny random student for the dataset's tokenizer, with peaked logits.
fn student(dir: &Path, data: &Path) -> PathBuf {
    let ds = edkd_data::Dataset::open(data, &edkd_data::OpenOptions::new("train")).unwrap();
    let t = &ds.manifest.tokenizer;
    let c = StudentConfig {
        vocab_size: StudentConfig::padded_vocab(t.vocab_size as i64),
        pad_token_id: t.special_ids.pad as i64,
        bos_token_id: t.special_ids.bos as i64,
        eos_token_id: t.special_ids.eos as i64,
        ..StudentConfig::preset("tiny").unwrap()
    };
    let m = StudentModel::init(&c, tch::Device::Cpu, 4).unwrap();
    tch::no_grad(|| {
        let mut e = m.vs.variables()["embed_tokens.weight"].shallow_clone();
        e.copy_(&edkd_models::rng::seeded(5, || e.randn_like()));
    });
    let out = dir.join("student");
    m.save(&out, Some(&fixture("llama_linear").join("tokenizer.json")))
        .unwrap();
    out
}

fn eval_json(model: &Path, data: &Path, json: &Path, runtime: &str) -> Value {
    ok(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(data),
        "--split",
        "train",
        "--max-examples",
        "10",
        "--max-new-tokens",
        "8",
        "--runtime",
        runtime,
        "--threads",
        "1",
        "--json",
        s(json),
    ]);
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn ids_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("ids:"))
        .unwrap()
        .to_owned()
}

#[test]
fn export_generate_and_eval_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let model = student(tmp.path(), &data);
    let f32_dir = tmp.path().join("onnx");
    let printed = ok(&["export", "--model", s(&model), "--out", s(&f32_dir)]);
    assert!(
        printed.contains("encoder.onnx") && printed.contains("decoder.onnx"),
        "{printed}"
    );
    for f in [
        "encoder.onnx",
        "decoder.onnx",
        "export.json",
        "tokenizer.json",
    ] {
        assert!(f32_dir.join(f).is_file(), "{f} missing");
    }

    let generated = |m: &Path, runtime: &str| {
        ids_line(&ok(&[
            "generate",
            "--model",
            s(m),
            "--runtime",
            runtime,
            "--input",
            "key k3 is 7. what is k3?",
            "--max-new-tokens",
            "6",
        ]))
    };
    assert_eq!(generated(&f32_dir, "onnx"), generated(&model, "torch"));

    let torch = eval_json(&model, &data, &tmp.path().join("torch.json"), "torch");
    let onnx = eval_json(&f32_dir, &data, &tmp.path().join("onnx.json"), "onnx");
    let loss = |v: &Value| v["val_loss"].as_f64().unwrap();
    assert!(
        (loss(&torch) - loss(&onnx)).abs() < 1e-4,
        "{} vs {}",
        loss(&torch),
        loss(&onnx)
    );
    assert_eq!(torch["overall"], onnx["overall"]);
    assert_eq!(torch["samples"], onnx["samples"]);

    let int8_dir = tmp.path().join("onnx-int8");
    ok(&[
        "export",
        "--model",
        s(&model),
        "--out",
        s(&int8_dir),
        "--quantize",
        "int8",
    ]);
    let int8 = eval_json(&int8_dir, &data, &tmp.path().join("int8.json"), "onnx");
    let rel = (loss(&int8) - loss(&onnx)).abs() / loss(&onnx);
    println!("val_loss f32 {:.4} int8 {:.4}", loss(&onnx), loss(&int8));
    assert!(rel < 0.1, "int8 validation loss moved by {rel:.3}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(int8_dir.join("export.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["quantization"]["scheme"], "int8");
}

#[test]
fn a_teacher_exports_to_one_graph_and_generates_as_on_libtorch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("onnx");
    ok(&[
        "export",
        "--model",
        s(&fixture("qwen2_tied")),
        "--out",
        s(&out),
    ]);
    assert!(out.join("model.onnx").is_file());
    let generated = |m: &Path, runtime: &str| {
        ids_line(&ok(&[
            "generate",
            "--model",
            s(m),
            "--runtime",
            runtime,
            "--input-ids",
            "5,9,30,31,7",
            "--max-new-tokens",
            "6",
        ]))
    };
    assert_eq!(
        generated(&out, "onnx"),
        generated(&fixture("qwen2_tied"), "torch")
    );
}

#[test]
fn a_decoder_only_export_is_scored_as_on_libtorch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let teacher = fixture("llama_linear");
    let out = tmp.path().join("onnx");
    ok(&["export", "--model", s(&teacher), "--out", s(&out)]);
    let torch = eval_json(&teacher, &data, &tmp.path().join("torch.json"), "torch");
    let onnx = eval_json(&out, &data, &tmp.path().join("onnx.json"), "onnx");
    let loss = |v: &Value| v["val_loss"].as_f64().unwrap();
    assert!(
        (loss(&torch) - loss(&onnx)).abs() < 1e-4,
        "{} vs {}",
        loss(&torch),
        loss(&onnx)
    );
    assert_eq!(torch["overall"], onnx["overall"]);
    assert_eq!(torch["samples"], onnx["samples"]);
}

#[test]
fn unsupported_models_and_a_missing_runtime_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = edkd(&[
        "export",
        "--model",
        s(&fixture("llama_dynamic_tied")),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not support RoPE scaling `dynamic`"),
        "{err}"
    );

    let dir = tmp.path().join("onnx");
    ok(&[
        "export",
        "--model",
        s(&fixture("qwen2_tied")),
        "--out",
        s(&dir),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args([
            "generate",
            "--runtime",
            "onnx",
            "--model",
            s(&dir),
            "--input-ids",
            "5,6",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ONNX Runtime is not available"), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}
