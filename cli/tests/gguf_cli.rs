//! GGUF files through the CLI: `edkd info`, `edkd generate` and `edkd convert --from-gguf`
//! (the tiny quantized Llama of models/tests/fixtures/gguf).

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

fn gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/gguf/tiny_quant.gguf")
}

fn generated_ids(model: &Path) -> String {
    let (ok, out, err) = edkd(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        "Licensed under the Apache License",
        "--max-new-tokens",
        "6",
    ]);
    assert!(ok, "{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .unwrap_or_else(|| panic!("no ids in {out}"))
        .to_string()
}

#[test]
fn info_describes_a_gguf_file() {
    let (ok, out, err) = edkd(&["info", "--model", gguf().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("GGUF v3, llama -> LlamaForCausalLM"), "{out}");
    assert!(out.contains("2 layers, d=256, heads 4/2 kv"), "{out}");
    assert!(out.contains("Q4_K") && out.contains("F32"), "{out}");
}

#[test]
fn convert_from_gguf_then_generate_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("teacher");
    let (ok, stdout, err) = edkd(&[
        "convert",
        "--from-gguf",
        gguf().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("LlamaForCausalLM (llama)"), "{stdout}");
    assert!(stdout.contains("with tokenizer.json"), "{stdout}");
    let from_file = generated_ids(&gguf());
    assert_eq!(from_file.split(',').count(), 6, "{from_file}");
    assert_eq!(generated_ids(&out), from_file);

    // --weights and --from-gguf are two different imports.
    let (ok, _, err) = edkd(&[
        "convert",
        "--from-gguf",
        gguf().to_str().unwrap(),
        "--weights",
        "x.safetensors",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
