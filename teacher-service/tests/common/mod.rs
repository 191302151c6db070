//! Shared helpers for the end-to-end tests: fixture teachers, servers on loopback, and an
//! in-process reference (full-vocabulary log-softmax in f64).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use edkd_models::{LoadOptions, Teacher};
use edkd_teacher::proto::{ScoreRequest, Sequence, ValueFormat};
use edkd_teacher::wire::Scores;
use edkd_teacher::{Client, ClientConfig, RunningServer, ServerConfig};
use tch::{Kind, Tensor};

pub mod vision;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/teachers")
        .join(name)
}

pub fn load(name: &str) -> Teacher {
    Teacher::load(&fixture(name), LoadOptions::default()).expect("fixture teacher loads")
}

/// A loopback server on an ephemeral port.
pub async fn server(name: &str, config: ServerConfig) -> RunningServer {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    edkd_teacher::start(load(name), config)
        .await
        .expect("server starts")
}

pub fn client(server: &RunningServer) -> Client {
    let mut config = ClientConfig::new(server.addr.to_string());
    config.timeout = Duration::from_secs(30);
    Client::connect(config).expect("client")
}

/// Deterministic pseudo-random ids (xorshift), below `vocab`.
pub fn tokens(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(vocab)) as u32
        })
        .collect()
}

pub fn sequence(id: &str, prompt: Vec<u32>, target: Vec<u32>) -> Sequence {
    Sequence {
        id: id.into(),
        prompt_ids: prompt,
        target_ids: target,
        images: Vec::new(),
    }
}

pub fn request(sequences: Vec<Sequence>, k: u32, temperature: f32) -> ScoreRequest {
    ScoreRequest {
        request_id: 7,
        sequences,
        top_k: k,
        temperature,
        value_format: ValueFormat::F32 as i32,
        tokenizer_sha256: String::new(),
        ..Default::default()
    }
}

/// In-process reference: full log-softmax at temperature `t`, `[targets][vocab]`, in f64.
pub fn reference(teacher: &Teacher, prompt: &[u32], target: &[u32], t: f64) -> Vec<Vec<f64>> {
    let _g = tch::no_grad_guard();
    let ids: Vec<i64> = prompt.iter().chain(target).map(|&i| i64::from(i)).collect();
    let input = Tensor::from_slice(&ids).reshape([1, -1]);
    let valid = input.ones_like().to_kind(Kind::Bool);
    let logits = teacher.model.forward_padded(&input, &valid); // [1, L, V]
    let logp = (logits.squeeze_dim(0).to_kind(Kind::Double) / t).log_softmax(-1, Kind::Double);
    (0..target.len())
        .map(|j| Vec::<f64>::try_from(&logp.get((prompt.len() - 1 + j) as i64)).unwrap())
        .collect()
}

/// Asserts `got` equals the reference's top-k, tail and gold within `tol`.
pub fn assert_matches(got: &Scores, reference: &[Vec<f64>], target: &[u32], k: usize, tol: f64) {
    assert_eq!(got.positions, target.len(), "{}: positions", got.id);
    assert_eq!(got.k, k);
    for (p, row) in reference.iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top_mass: f64 = order[..k].iter().map(|&i| row[i].exp()).sum();
        let tail = (1.0 - top_mass).ln();
        for j in 0..k {
            let (id, lp) = (got.topk_ids[p * k + j], got.topk_logprobs[p * k + j]);
            assert!(
                (f64::from(lp) - row[id as usize]).abs() <= tol,
                "{} pos {p} rank {j}: id {id} log-prob {lp} vs reference {}",
                got.id,
                row[id as usize]
            );
            // Ties aside, the ids are the reference's top k in order.
            assert!(
                id as usize == order[j] || (row[order[j]] - row[id as usize]).abs() <= tol,
                "{} pos {p} rank {j}: id {id}, reference {}",
                got.id,
                order[j]
            );
        }
        let got_tail = f64::from(got.tail_logmass[p]);
        if tail.is_finite() && tail > -30.0 {
            assert!(
                (got_tail - tail).abs() <= tol,
                "{} pos {p}: tail {got_tail} vs {tail}",
                got.id
            );
        } else {
            assert!(
                got_tail < -30.0,
                "{} pos {p}: tail {got_tail} vs {tail}",
                got.id
            );
        }
        let gold = row[target[p] as usize];
        assert!(
            (f64::from(got.gold_logprob[p]) - gold).abs() <= tol,
            "{} pos {p}: gold {} vs {gold}",
            got.id,
            got.gold_logprob[p]
        );
    }
}
