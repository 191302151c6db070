//! A bad model folder gives one line naming the file and the problem.

use std::path::{Path, PathBuf};

use edkd_models::{LoadOptions, Teacher};
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/teachers")
        .join(name)
}

/// A scratch copy of a fixture folder.
fn copy_of(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    let err = Teacher::load(dir, LoadOptions::default())
        .err()
        .expect("load should fail");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut named = Tensor::read_safetensors(&path).unwrap();
    edit(&mut named);
    edkd_models::weights::save_tensors(&named, None, &path).unwrap();
}

#[test]
fn missing_config() {
    let dir = copy_of("qwen2_tied");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn missing_tensor() {
    let dir = copy_of("qwen2_tied");
    rewrite_weights(dir.path(), |named| {
        named.retain(|(k, _)| k != "model.layers.1.mlp.up_proj.weight")
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("missing tensors") && msg.contains("model.layers.1.mlp.up_proj.weight"),
        "{msg}"
    );
}

#[test]
fn unused_tensor() {
    let dir = copy_of("qwen2_tied");
    rewrite_weights(dir.path(), |named| {
        named.push((
            "model.layers.9.extra.weight".into(),
            Tensor::zeros([2], tch::kind::FLOAT_CPU),
        ))
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unused tensors") && msg.contains("model.layers.9.extra.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape() {
    let dir = copy_of("qwen2_tied");
    rewrite_weights(dir.path(), |named| {
        let entry = named
            .iter_mut()
            .find(|(k, _)| k == "model.norm.weight")
            .unwrap();
        entry.1 = Tensor::ones([47], tch::kind::FLOAT_CPU);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors")
            && msg.contains("model.norm.weight")
            && msg.contains("[47]")
            && msg.contains("[48]"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = copy_of("qwen2_tied");
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("Qwen2ForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&path, text).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("GPTNeoXForCausalLM")
            && msg.contains("LlamaForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM"),
        "{msg}"
    );
}

#[test]
fn corrupt_safetensors_header() {
    let dir = copy_of("qwen2_tied");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..20].copy_from_slice(b"not json at ");
    std::fs::write(&path, bytes).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("corrupt safetensors"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors() {
    let dir = copy_of("qwen2_tied");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("corrupt safetensors"),
        "{msg}"
    );
}

#[test]
fn missing_shard() {
    let dir = copy_of("llama3_bias_sharded");
    std::fs::remove_file(dir.path().join("model-00003-of-00004.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model-00003-of-00004.safetensors") && msg.contains("shard"),
        "{msg}"
    );
}

#[test]
fn invalid_config_json() {
    let dir = copy_of("qwen2_tied");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": ",
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
}

#[test]
fn fp16_on_cpu_is_refused() {
    let opts = LoadOptions {
        kind: tch::Kind::Half,
        ..Default::default()
    };
    let err = Teacher::load(&fixture("qwen2_tied"), opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Half") && err.contains("CPU"), "{err}");
}
