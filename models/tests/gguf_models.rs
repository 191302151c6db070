//! GGUF teachers on tiny fixtures (from `fixtures/gguf/make_gguf.py`): a quantized Llama
//! against transformers' `gguf_file=` loading, llama.cpp-converted fixture teachers against
//! their own folders (q/k permutation undone exactly), rebuilt tokenizers against
//! transformers' GGUF tokenizers, and `convert_to_folder` round trips.

use std::path::{Path, PathBuf};

use edkd_models::gguf::{GgufFile, convert_to_folder};
use edkd_models::{GenerationConfig, LoadOptions, Teacher, generate};
use tch::{Kind, Tensor};

const LOGIT_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(fixture(name)).unwrap()
}

fn get(named: &[(String, Tensor)], key: &str) -> Tensor {
    named
        .iter()
        .find(|(n, _)| n == key)
        .unwrap()
        .1
        .shallow_clone()
}

fn logits(t: &Teacher, ids: &Tensor) -> Tensor {
    let valid = ids.ones_like().to_kind(Kind::Bool);
    tch::no_grad(|| t.model.forward_padded(ids, &valid))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn quantized_llama_matches_transformers() {
    let t = Teacher::load(&fixture("gguf/tiny_quant.gguf"), LoadOptions::default()).unwrap();
    let e = expected("gguf/tiny_quant.expected.safetensors");
    let ids = get(&e, "input_ids");
    let diff = max_diff(&logits(&t, &ids), &get(&e, "logits"));
    println!("tiny_quant: max |logits - transformers| = {diff:.2e}");
    assert!(diff <= LOGIT_TOL, "logits differ by {diff}");

    let generated = get(&e, "generated");
    let cfg = GenerationConfig::greedy(generated.size()[1] as usize);
    for r in 0..ids.size()[0] {
        let prompt = Vec::<i64>::try_from(ids.get(r).narrow(0, 0, 6)).unwrap();
        let got = generate(&t.model, &[prompt], &cfg).unwrap();
        let want = Vec::<i64>::try_from(generated.get(r)).unwrap();
        assert_eq!(got[0], want, "row {r}: greedy tokens differ");
    }
}

/// The GGUF written from a teacher fixture as llama.cpp would equals the folder exactly.
fn assert_gguf_equals_folder(name: &str) {
    let from_gguf = Teacher::load(
        &fixture(&format!("gguf/{name}.gguf")),
        LoadOptions::default(),
    )
    .unwrap();
    let from_dir = Teacher::load(
        &fixture(&format!("teachers/{name}")),
        LoadOptions::default(),
    )
    .unwrap();
    let (a, b) = (&from_gguf.model.config, &from_dir.model.config);
    assert_eq!(
        (
            a.family,
            a.num_heads,
            a.num_kv_heads,
            a.head_dim,
            a.tie_word_embeddings
        ),
        (
            b.family,
            b.num_heads,
            b.num_kv_heads,
            b.head_dim,
            b.tie_word_embeddings
        ),
        "{name}: configs differ"
    );
    assert_eq!(
        format!("{:?}", a.rope),
        format!("{:?}", b.rope),
        "{name}: rope"
    );
    let e = expected(&format!("teachers/{name}/expected.safetensors"));
    let ids = get(&e, "input_ids").narrow(1, 8, 16); // a window without left padding
    let diff = max_diff(&logits(&from_gguf, &ids), &logits(&from_dir, &ids));
    assert_eq!(diff, 0.0, "{name}: GGUF and folder logits differ by {diff}");
}

#[test]
fn llama_gguf_undoes_the_qk_permutation_exactly() {
    assert_gguf_equals_folder("llama_linear");
}

#[test]
fn qwen2_gguf_loads_unpermuted_with_biases_and_tied_head() {
    assert_gguf_equals_folder("qwen2_tied");
}

#[derive(serde::Deserialize)]
struct TokenCases {
    strings: Vec<String>,
    /// transformers' GGUF tokenizer with llama.cpp's split for the file's pre type.
    ids: Vec<Vec<i64>>,
    /// transformers' GGUF tokenizer as it is.
    stock_ids: Vec<Vec<i64>>,
}

/// Returns how many strings transformers' stock GGUF tokenizer splits differently.
fn assert_tokenizer_matches(gguf: &str) -> usize {
    let file = GgufFile::open(&fixture(&format!("gguf/{gguf}.gguf"))).unwrap();
    let built = edkd_models::gguf::tokenizer::build(&file).unwrap().unwrap();
    let tok = edkd_models::Tokenizer::from_bytes(&built.tokenizer_json, &file.path).unwrap();
    let text = std::fs::read_to_string(fixture(&format!("gguf/{gguf}.tokens.json"))).unwrap();
    let cases: TokenCases = serde_json::from_str(&text).unwrap();
    assert!(cases.strings.len() >= 60);
    for (s, want) in cases.strings.iter().zip(&cases.ids) {
        assert_eq!(
            &tok.encode(s, true).unwrap(),
            want,
            "{gguf}: ids differ for {s:?}"
        );
    }
    let stock_diff = cases
        .ids
        .iter()
        .zip(&cases.stock_ids)
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "{gguf}: {} strings equal; stock transformers split {stock_diff} differently",
        cases.strings.len()
    );
    stock_diff
}

#[test]
fn byte_level_tokenizer_matches_transformers() {
    assert_tokenizer_matches("tiny_quant");
}

#[test]
fn llama3_and_qwen2_split_regexes_match_transformers() {
    // transformers knows these pre types' regexes, so its stock tokenizer agrees too.
    assert_eq!(assert_tokenizer_matches("pre_llama_bpe"), 0);
    assert_eq!(assert_tokenizer_matches("pre_qwen2"), 0);
}

#[test]
fn sentencepiece_tokenizer_matches_transformers() {
    // Byte fallback, merges recovered from scores, Metaspace: transformers agrees as is.
    assert_eq!(assert_tokenizer_matches("spm_tokenizer"), 0);
}

#[test]
fn converted_folder_loads_with_identical_logits_and_tokenizer() {
    let src = fixture("gguf/tiny_quant.gguf");
    let out = tempfile::tempdir().unwrap();
    let converted = convert_to_folder(&src, out.path()).unwrap();
    assert!(converted.has_tokenizer);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} written");
    }
    let from_gguf = Teacher::load(&src, LoadOptions::default()).unwrap();
    let from_dir = Teacher::load(out.path(), LoadOptions::default()).unwrap();
    assert_eq!(from_dir.num_parameters(), converted.num_parameters);
    let ids = get(
        &expected("gguf/tiny_quant.expected.safetensors"),
        "input_ids",
    );
    assert_eq!(
        max_diff(&logits(&from_gguf, &ids), &logits(&from_dir, &ids)),
        0.0
    );
    // The same tokenizer bytes, so data prepared with the folder's tokenizer.json is
    // accepted by the .gguf teacher (the trainer compares sha256s).
    let (a, b) = (from_gguf.tokenizer.unwrap(), from_dir.tokenizer.unwrap());
    assert_eq!(a.sha256(), b.sha256());

    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["pad_token"], "<|im_end|>");
    assert!(
        cfg["chat_template"]
            .as_str()
            .unwrap()
            .contains("add_generation_prompt")
    );
}
