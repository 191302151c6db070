//! A Python grpcio client generated from the .proto at test time gets the same answer as the
//! Rust client and the in-process reference, for a text teacher and, with images (one drawn
//! and encoded as JPEG by Pillow), for a vision-language one.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::vision::*;
use common::*;
use edkd_teacher::ServerConfig;
use edkd_teacher::wire::{Scores, decode_response};

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
    let answer = run_python(&server, request).await;
    assert_eq!(answer["info"]["vocab_size"], 160);
    assert_eq!(answer["info"]["accepts_images"], false);
    assert_eq!(answer["request_id"], 3);
    assert_eq!(answer["bad_request_code"], "INVALID_ARGUMENT");

    let rust = client(&server)
        .score(request_for(&seqs, k, t))
        .await
        .unwrap();
    let rust = decode_response(&rust).unwrap();
    let teacher = load("llama_linear");
    for (i, (s, r)) in seqs.iter().zip(&rust).enumerate() {
        assert_same(&answer["sequences"][i], s, r);
        let reference = reference(&teacher, &s.prompt_ids, &s.target_ids, f64::from(t));
        assert_matches(r, &reference, &s.target_ids, k as usize, 1e-4);
    }
    server.shutdown().await.unwrap();
}

/// Runs tests/python/client.py against `server` with `request` on stdin; its JSON answer.
async fn run_python(
    server: &edkd_teacher::RunningServer,
    request: serde_json::Value,
) -> serde_json::Value {
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
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Python's decoded answer `py` for sequence `s` equals the Rust client's `r`, bit for bit.
fn assert_same(py: &serde_json::Value, s: &edkd_teacher::proto::Sequence, r: &Scores) {
    {
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
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Bytes {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_sends_images() {
    let dir = tempfile::tempdir().unwrap();
    save_twin(dir.path(), IMAGE_TOKEN, None, 6);
    let twin = load_twin(dir.path());
    let server = vision_server(dir.path(), ServerConfig::default()).await;
    let vocab = IMAGE_TOKEN; // ids below the placeholder
    let rust_png = png(21, 40, 36);
    let (k, t) = (5u32, 0.8f32);
    let request = serde_json::json!({
        "sequences": [
            {"id": "rust-png", "prompt_ids": with_placeholder(tokens(1, 4, vocab), 1),
             "target_ids": tokens(2, 6, vocab), "images_hex": [hex(&rust_png)]},
            {"id": "pillow-jpeg", "prompt_ids": with_placeholder(tokens(3, 3, vocab), 0),
             "target_ids": tokens(4, 5, vocab), "pillow_jpeg": {"size": [50, 30], "seed": 7}},
            {"id": "text", "prompt_ids": tokens(5, 5, vocab), "target_ids": tokens(6, 3, vocab)},
        ],
        "top_k": k,
        "temperature": t,
        "value_format": "f32",
    });
    let answer = run_python(&server, request.clone()).await;
    let info = &answer["info"];
    assert_eq!(info["accepts_images"], true);
    assert_eq!(info["image_token_id"], IMAGE_TOKEN);
    assert_eq!(info["tokens_per_image"], TOKENS_PER_IMAGE);
    let bad = &answer["bad_image"];
    assert_eq!(bad["code"], "INVALID_ARGUMENT");
    assert!(
        bad["details"]
            .as_str()
            .unwrap()
            .starts_with("sequences[0].images[0]: GIF images are not supported"),
        "{bad}"
    );

    // The same sequences with the images Python sent, through the Rust client.
    let seqs: Vec<edkd_teacher::proto::Sequence> = request["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(answer["sequences"].as_array().unwrap())
        .map(|(s, py)| {
            let ids = |key: &str| -> Vec<u32> {
                s[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            let images = py["images_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| unhex(h.as_str().unwrap()))
                .collect();
            image_sequence(
                s["id"].as_str().unwrap(),
                ids("prompt_ids"),
                ids("target_ids"),
                images,
            )
        })
        .collect();
    assert_eq!(seqs[0].images, vec![rust_png]);
    assert!(
        seqs[1].images[0].starts_with(b"\xFF\xD8\xFF"),
        "Pillow sent a JPEG"
    );
    assert!(seqs[2].images.is_empty());
    let rust = client(&server)
        .score(request_for(&seqs, k, t))
        .await
        .unwrap();
    let rust = decode_response(&rust).unwrap();
    for (i, (s, r)) in seqs.iter().zip(&rust).enumerate() {
        assert_same(&answer["sequences"][i], s, r);
        let reference =
            vision_reference(&twin, &s.prompt_ids, &s.target_ids, &s.images, f64::from(t));
        assert_matches(r, &reference, &s.target_ids, k as usize, 1e-5);
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
