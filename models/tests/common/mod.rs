//! Shared by the teacher parity tests: the fixture cases and what transformers computed.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// Every fixture folder `fixtures/make_teachers.py` writes.
pub const CASES: [&str; 16] = [
    "llama_linear",
    "llama_dynamic_tied",
    "llama3_bias_sharded",
    "qwen2_tied",
    "phi3_longrope",
    "mistral_window",
    "qwen2_window",
    "phi3_window",
    "qwen3_yarn",
    "gemma2_window",
    "gemma3_window",
    "olmo2",
    "granite",
    "smollm3_nope_window",
    "llama3_factor32",
    "llama_yarn_mscale",
];

/// The cases with sliding-window layers (window 8, sequences of up to 40 + 20 tokens).
pub const WINDOW_CASES: [&str; 6] = [
    "mistral_window",
    "qwen2_window",
    "phi3_window",
    "gemma2_window",
    "gemma3_window",
    "smollm3_nope_window",
];

pub const LOGIT_TOL: f64 = 1e-4;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/teachers")
        .join(name)
}

pub struct Expected {
    pub ids: Tensor,
    pub valid: Tensor,
    pub logits: Tensor,
    pub generated: Vec<Vec<i64>>,
    /// `(offset, logits)` with every position id shifted by `offset` (RoPE-scaling cases).
    pub far: Option<(i64, Tensor)>,
}

pub fn expected(dir: &Path) -> Expected {
    let named = Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap();
    let find = |k: &str| {
        named
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
    };
    let get = |k: &str| find(k).unwrap_or_else(|| panic!("{}: no {k}", dir.display()));
    let generated = get("generated");
    let rows = generated.size()[0];
    Expected {
        ids: get("input_ids"),
        valid: get("attention_mask").to_kind(Kind::Bool),
        logits: get("logits"),
        generated: (0..rows)
            .map(|r| Vec::<i64>::try_from(generated.get(r)).unwrap())
            .collect(),
        far: find("logits_far").map(|l| (get("far_offset").int64_value(&[0]), l)),
    }
}

/// The prompts without their left padding.
pub fn prompts(e: &Expected) -> Vec<Vec<i64>> {
    let rows = e.ids.size()[0];
    (0..rows)
        .map(|r| {
            let ids = Vec::<i64>::try_from(e.ids.get(r)).unwrap();
            let valid = Vec::<bool>::try_from(e.valid.get(r)).unwrap();
            ids.into_iter()
                .zip(valid)
                .filter(|(_, v)| *v)
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

/// Max |a - b| over positions where `valid` is true (`a`, `b`: `[b, t, v]`).
pub fn masked_max_diff(a: &Tensor, b: &Tensor, valid: &Tensor) -> f64 {
    let diff = (a - b).abs().amax([-1], false); // [b, t]
    diff.masked_select(valid).max().double_value(&[])
}
