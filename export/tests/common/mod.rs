//! Tiny models and inputs shared by the export tests.
#![allow(dead_code)]

use std::path::Path;

use edkd_models::student::{StudentConfig, StudentModel, init_twin, save_folder};
use tch::{Device, Kind, Tensor};

/// Scale of the embedding tables: large enough that logits are peaked and greedy picks
/// are not decided by rounding.
pub const EMBED_STD: f64 = 1.0;

/// A tiny random student (cyclic GQA, centred positions, tied embeddings) saved in `dir`.
pub fn tiny_student(dir: &Path, seed: i64) -> StudentModel {
    let c = StudentConfig::preset("tiny").unwrap();
    let s = StudentModel::init(&c, Device::Cpu, seed).unwrap();
    tch::no_grad(|| {
        let vars = s.vs.variables();
        let e = &vars["embed_tokens.weight"];
        let mut e = e.shallow_clone();
        e.copy_(&(embeddings(&e, seed) * EMBED_STD));
    });
    s.save(dir, None).unwrap();
    s
}

/// Standard-normal embeddings of `e`'s shape, from `seed` alone (whatever other test
/// threads draw meanwhile).
fn embeddings(e: &Tensor, seed: i64) -> Tensor {
    edkd_models::rng::seeded(seed.wrapping_add(1_000), || {
        Tensor::randn(e.size(), (Kind::Float, Device::Cpu))
    })
}

/// The tiny student's decoder-only twin, saved as a Llama folder in `dir`.
pub fn tiny_twin(dir: &Path, seed: i64) {
    let c = StudentConfig::preset("tiny").unwrap();
    let (vs, twin) = init_twin(&c, Device::Cpu, seed);
    tch::no_grad(|| {
        let vars = vs.variables();
        let mut e = vars["model.embed_tokens.weight"].shallow_clone();
        e.copy_(&(embeddings(&e, seed) * EMBED_STD));
    });
    save_folder(dir, &twin.config.to_hf_json(), &vs, None).unwrap();
}

/// `n` inputs of different lengths (`min_len..`), ids in `[3, vocab)`, from `seed`.
pub fn inputs(n: usize, min_len: usize, vocab: i64, seed: u64) -> Vec<Vec<i64>> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let len = min_len + (i * 7) % 23 + i / 3;
            (0..len)
                .map(|_| 3 + (next() % (vocab as u64 - 3)) as i64)
                .collect()
        })
        .collect()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().flatten(0, -1)).unwrap()
}

/// Right-padded `[b, s]` ids and validity of `rows`.
pub fn right_pad(rows: &[Vec<i64>], pad: i64) -> (Tensor, Tensor) {
    edkd_models::generate::right_pad(rows, pad, Device::Cpu)
}
