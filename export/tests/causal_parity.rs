//! `model.onnx` of decoder-only models (the student's twin and the teacher fixtures of
//! every family) under ONNX Runtime against edkd on libtorch: logits of a padded batch
//! within 1e-4 and batched greedy generation with left padding token for token. Models
//! with a feature the graph lacks fail with an error naming it.

mod common;

use std::path::Path;

use common::*;
use edkd_export::{Error, ExportOptions, OnnxModel, export_folder};
use edkd_models::{GenerationConfig, LoadOptions, Teacher, generate};

const TOL: f32 = 1e-4;
const NEW_TOKENS: usize = 8;

/// Right-padded rows and their 0/1 mask.
fn padded(rows: &[Vec<i64>], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let len = rows.iter().map(Vec::len).max().unwrap();
    rows.iter()
        .map(|r| {
            let mut ids = r.clone();
            ids.resize(len, pad);
            let mask = (0..len).map(|i| (i < r.len()) as i64).collect();
            (ids, mask)
        })
        .unzip()
}

/// Exports `dir` (f32) and checks it against libtorch; returns the max logits difference.
fn check_folder(dir: &Path, out: &Path, n_inputs: usize) -> Result<f32, Error> {
    let manifest = export_folder(dir, out, &ExportOptions::default())?;
    let t = Teacher::load(dir, LoadOptions::default()).unwrap();
    let c = &t.model.config;
    let rows = inputs(n_inputs, 1, c.vocab_size, 11);
    let (ids, mask) = padded(&rows, 0);
    let (b, len) = (ids.len() as i64, ids[0].len() as i64);
    let ids_t = tch::Tensor::from_slice(&ids.concat()).reshape([b, len]);
    let valid = tch::Tensor::from_slice(&mask.concat())
        .reshape([b, len])
        .ne(0);
    let want = to_vec(&tch::no_grad(|| t.model.forward_padded(&ids_t, &valid)));
    let mut m = OnnxModel::load(out, 1).unwrap();
    assert_eq!(manifest.decoder_layers, c.num_layers);
    let got = m.causal_logits(&ids, &mask).unwrap();
    // Padding positions are not compared: neither side defines them.
    let mut diff = 0f32;
    for (r, row) in mask.iter().enumerate() {
        for (p, &real) in row.iter().enumerate() {
            if real == 1 {
                let w = &want[(r * len as usize + p) * got.vocab..][..got.vocab];
                diff = diff.max(max_abs_diff(got.at(r, p), w));
            }
        }
    }
    let cfg = GenerationConfig {
        eos_token_ids: c.eos_token_ids.clone(),
        pad_token_id: c.pad_token_id.unwrap_or(0),
        ..GenerationConfig::greedy(NEW_TOKENS)
    };
    let want_tokens = generate(&t.model, &rows, &cfg).unwrap();
    let tokens = m.generate(&rows, &cfg).unwrap();
    let equal = tokens
        .iter()
        .zip(&want_tokens)
        .filter(|(a, b)| a == b)
        .count();
    println!(
        "{}: max |logits diff| {diff:.3e}, greedy rows equal {equal}/{}",
        dir.display(),
        rows.len()
    );
    assert!(diff <= TOL, "{}: logits differ by {diff}", dir.display());
    assert_eq!(tokens, want_tokens, "{}: greedy tokens", dir.display());
    Ok(diff)
}

#[test]
fn the_twin_matches_libtorch() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("twin");
    tiny_twin(&src, 5);
    check_folder(&src, &tmp.path().join("onnx"), 20).unwrap();
}

#[test]
fn teacher_fixtures_match_libtorch_or_name_what_is_missing() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers");
    let tmp = tempfile::tempdir().unwrap();
    let mut exported = Vec::new();
    let mut refused = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        match check_folder(&dir, &tmp.path().join(&name), 6) {
            Ok(_) => exported.push(name),
            Err(Error::Unsupported { feature, .. }) => {
                assert!(feature.contains("RoPE scaling"), "{name}: {feature}");
                refused.push(name);
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    println!("exported: {exported:?}\nrefused: {refused:?}");
    for must in ["llama_linear", "qwen2_tied", "llama3_bias_sharded"] {
        assert!(
            exported.iter().any(|e| e == must),
            "{must} was not exported"
        );
    }
    assert_eq!(refused, ["llama_dynamic_tied", "phi3_longrope"]);
}
