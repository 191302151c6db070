//! A Python grpcio client generated from the .proto at test time gets the same answer as the
//! Rust client and the in-process reference.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use edkd_teacher::ServerConfig;
use edkd_teacher::wire::decode_response;

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "{} missing: run scripts/setup.sh (needs grpcio, grpcio-tools, numpy)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_gets_the_same_answer() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let seqs = vec![
        sequence("p0", tokens(11, 6, 160), tokens(12, 8, 160)),
        sequence("p1", tokens(13, 2, 160), tokens(14, 3, 160)),
    ];
    let (k, t) = (6u32, 1.5f32);
    let request = serde_json::json!({
        "sequences": seqs.iter().map(|s| serde_json::json!({
            "id": s.id, "prompt_ids": s.prompt_ids, "target_ids": s.target_ids,
        })).collect::<Vec<_>>(),
        "top_k": k,
        "temperature": t,
        "value_format": "f32",
    });
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let addr = server.addr.to_string();
    let proto_root = manifest.join("../proto");
    let script = manifest.join("tests/python/client.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .arg(script)
            .arg(addr)
            .arg(proto_root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["info"]["vocab_size"], 160);
    assert_eq!(answer["request_id"], 3);
    assert_eq!(answer["bad_request_code"], "INVALID_ARGUMENT");

    let rust = client(&server)
        .score(request_for(&seqs, k, t))
        .await
        .unwrap();
    let rust = decode_response(&rust).unwrap();
    let teacher = load("llama_linear");
    for (i, (s, r)) in seqs.iter().zip(&rust).enumerate() {
        let py = &answer["sequences"][i];
        assert_eq!(py["id"], s.id.as_str());
        let py_ids: Vec<u32> = py["topk_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
            })
            .collect();
        assert_eq!(py_ids, r.topk_ids, "{}", s.id);
        let py_lp: Vec<f32> = py["topk_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!(py_lp, r.topk_logprobs, "{}", s.id);
        let floats = |key: &str| -> Vec<f32> {
            py[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        assert_eq!(floats("tail_logmass"), r.tail_logmass);
        assert_eq!(floats("gold_logprob"), r.gold_logprob);
        let reference = reference(&teacher, &s.prompt_ids, &s.target_ids, f64::from(t));
        assert_matches(r, &reference, &s.target_ids, k as usize, 1e-4);
    }
    server.shutdown().await.unwrap();
}

fn request_for(
    seqs: &[edkd_teacher::proto::Sequence],
    k: u32,
    t: f32,
) -> edkd_teacher::proto::ScoreRequest {
    request(seqs.to_vec(), k, t)
}
