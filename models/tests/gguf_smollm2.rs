//! SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by scripts/setup.sh) against transformers on
//! the same file: logits on 20 real sentences, greedy generation, the tokenizer on >= 1,000
//! real strings, and `convert_to_folder` (edkd and transformers load the folder).
//!
//! The reference comes from `fixtures/gguf/smollm2_reference.py`, run once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use edkd_models::gguf::{convert_to_folder, smollm2_path};
use edkd_models::{GenerationConfig, LoadOptions, Teacher, generate};
use tch::{Kind, Tensor};

const LOGIT_TOL: f64 = 1e-4;
const SENTENCES: usize = 20;
const GREEDY_PROMPTS: usize = 4;
const MIN_STRINGS: usize = 1000;

struct Reference {
    _tmp: tempfile::TempDir,
    folder: PathBuf,
    tensors: Vec<(String, Tensor)>,
    tokens: TokenCases,
    teacher: Teacher,
    /// Seconds `Teacher::load` took on the .gguf.
    gguf_load_s: f64,
}

#[derive(serde::Deserialize)]
struct TokenCases {
    strings: Vec<String>,
    ids: Vec<Vec<i64>>,
    stock_ids: Vec<Vec<i64>>,
    folder_ids: Vec<Vec<i64>>,
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Converts the GGUF once, then runs the Python reference on the file and the folder.
/// Tensors are not `Sync`, so the tests take turns (they would compete for the cores anyway).
fn reference() -> MutexGuard<'static, Reference> {
    static REF: OnceLock<Mutex<Reference>> = OnceLock::new();
    let cell = REF.get_or_init(|| Mutex::new(build_reference()));
    // A failed test must not hide the others' results.
    cell.lock().unwrap_or_else(|e| e.into_inner())
}

fn build_reference() -> Reference {
    {
        let gguf = smollm2_path().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("smollm2");
        let start = Instant::now();
        convert_to_folder(&gguf, &folder).unwrap();
        println!(
            "convert --from-gguf: {:.2} s",
            start.elapsed().as_secs_f64()
        );
        let out = tmp.path().join("reference");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/smollm2_reference.py");
        let status = Command::new(python())
            .arg(&script)
            .arg(&gguf)
            .arg(&out)
            .arg("--folder")
            .arg(&folder)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python().display()));
        assert!(status.success(), "{} failed", script.display());
        let tensors = Tensor::read_safetensors(out.join("reference.safetensors")).unwrap();
        let text = std::fs::read_to_string(out.join("tokens.json")).unwrap();
        let tokens = serde_json::from_str(&text).unwrap();
        let start = Instant::now();
        let teacher = Teacher::load(&gguf, LoadOptions::default()).unwrap();
        let gguf_load_s = start.elapsed().as_secs_f64();
        Reference {
            _tmp: tmp,
            folder,
            tensors,
            tokens,
            teacher,
            gguf_load_s,
        }
    }
}

impl Reference {
    fn get(&self, key: &str) -> Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == key)
            .unwrap_or_else(|| panic!("reference has no {key}"))
            .1
            .shallow_clone()
    }
}

fn logits(t: &Teacher, ids: &Tensor) -> Tensor {
    let ids = ids.unsqueeze(0);
    let valid = ids.ones_like().to_kind(Kind::Bool);
    tch::no_grad(|| t.model.forward_padded(&ids, &valid)).squeeze_dim(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn smollm2_logits_match_transformers() {
    let r = reference();
    let mut worst = 0f64;
    for i in 0..SENTENCES {
        let ids = r.get(&format!("ids.{i}"));
        let diff = max_diff(&logits(&r.teacher, &ids), &r.get(&format!("logits.{i}")));
        worst = worst.max(diff);
        assert!(diff <= LOGIT_TOL, "sentence {i}: logits differ by {diff}");
    }
    println!("SmolLM2: max |logits - transformers| over {SENTENCES} sentences = {worst:.2e}");
}

#[test]
fn smollm2_greedy_generation_matches_transformers() {
    let r = reference();
    let mut cfg = GenerationConfig::greedy(40);
    cfg.eos_token_ids = r.teacher.model.config.eos_token_ids.clone();
    let mut lengths = Vec::new();
    for j in 0..GREEDY_PROMPTS {
        let prompt = Vec::<i64>::try_from(r.get(&format!("prompt.{j}"))).unwrap();
        let want = Vec::<i64>::try_from(r.get(&format!("generated.{j}"))).unwrap();
        let got = generate(&r.teacher.model, &[prompt], &cfg).unwrap();
        assert_eq!(got[0], want, "prompt {j}: greedy tokens differ");
        lengths.push(want.len());
    }
    println!("SmolLM2: greedy tokens equal, lengths {lengths:?}");
    assert!(lengths.iter().filter(|&&n| n == 40).count() >= 2);
}

#[test]
fn smollm2_tokenizer_matches_transformers_on_real_strings() {
    let r = reference();
    let tok = r
        .teacher
        .tokenizer
        .as_ref()
        .expect("the GGUF has a tokenizer");
    let cases = &r.tokens;
    assert!(
        cases.strings.len() >= MIN_STRINGS,
        "{} strings",
        cases.strings.len()
    );
    let mut specials = 0;
    for (s, want) in cases.strings.iter().zip(&cases.ids) {
        let got = tok.encode(s, true).unwrap();
        assert_eq!(&got, want, "ids differ for {s:?}");
        specials += usize::from(got.iter().any(|&t| t <= 2));
        // And back: byte-level BPE decodes to the exact text.
        assert_eq!(&tok.decode(&got, false).unwrap(), s);
    }
    let stock = cases
        .ids
        .iter()
        .zip(&cases.stock_ids)
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "SmolLM2 tokenizer: {} strings equal ({specials} with special tokens); transformers' \
         stock GGUF tokenizer (no digit split) differs on {stock}",
        cases.strings.len()
    );
    assert!(specials >= 20, "special tokens are exercised");
}

#[test]
fn smollm2_converted_folder_matches_the_gguf() {
    let r = reference();
    let from_gguf = &r.teacher;
    let start = Instant::now();
    let from_dir = Teacher::load(&r.folder, LoadOptions::default()).unwrap();
    let dir_s = start.elapsed().as_secs_f64();
    println!(
        "SmolLM2 load: .gguf {:.2} s, converted folder {dir_s:.2} s",
        r.gguf_load_s
    );
    let mut worst_hf = 0f64;
    for i in 0..SENTENCES {
        let ids = r.get(&format!("ids.{i}"));
        let a = logits(from_gguf, &ids);
        assert_eq!(max_diff(&a, &logits(&from_dir, &ids)), 0.0, "sentence {i}");
        // transformers loads the folder and agrees with itself on the GGUF.
        let hf_dir = r.get(&format!("folder_logits.{i}"));
        worst_hf = worst_hf.max(max_diff(&hf_dir, &r.get(&format!("logits.{i}"))));
    }
    assert!(
        worst_hf <= LOGIT_TOL,
        "transformers on the folder differs by {worst_hf}"
    );
    // The folder's tokenizer.json, read by transformers, gives edkd's ids.
    assert_eq!(r.tokens.folder_ids, r.tokens.ids);
    let (a, b) = (from_gguf.tokenizer.as_ref(), from_dir.tokenizer.as_ref());
    assert_eq!(a.unwrap().sha256(), b.unwrap().sha256());
}
