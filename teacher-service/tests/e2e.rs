//! End-to-end tests on loopback with tiny random teachers: parity with the in-process full
//! log-softmax, batching under concurrency, and every bad input.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edkd_teacher::proto::{ScoreRequest, ValueFormat};
use edkd_teacher::wire::decode_response;
use edkd_teacher::{Client, ClientConfig, Error, ServerConfig};
use tonic::Code;

const VOCAB: u32 = 160;
/// Max abs difference allowed at the f32 wire format.
const TOL: f64 = 1e-4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_with_in_process_full_log_softmax() {
    for name in [
        "llama_linear",
        "qwen2_tied",
        "phi3_longrope",
        "llama3_bias_sharded",
    ] {
        let server = server(name, ServerConfig::default()).await;
        let client = client(&server);
        let teacher = load(name);
        let info = client.info().await.unwrap();
        assert_eq!(info.vocab_size, VOCAB);
        assert_eq!(info.model_id, name);
        for (k, t) in [(5u32, 1.0f32), (17, 2.0), (VOCAB, 0.7)] {
            let seqs = vec![
                sequence("a", tokens(1, 5, VOCAB), tokens(2, 9, VOCAB)),
                sequence("b", tokens(3, 1, VOCAB), tokens(4, 3, VOCAB)),
                sequence("c", tokens(5, 20, VOCAB), tokens(6, 1, VOCAB)),
            ];
            let response = client.score(request(seqs.clone(), k, t)).await.unwrap();
            assert_eq!(response.value_format(), ValueFormat::F32);
            let got = decode_response(&response).unwrap();
            for (s, g) in seqs.iter().zip(&got) {
                assert_eq!(g.id, s.id);
                let r = reference(&teacher, &s.prompt_ids, &s.target_ids, f64::from(t));
                assert_matches(g, &r, &s.target_ids, k as usize, TOL);
            }
        }
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_formats_round_to_f32_answer() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let seqs = vec![sequence("a", tokens(1, 4, VOCAB), tokens(2, 6, VOCAB))];
    let exact = client.score(request(seqs.clone(), 8, 1.0)).await.unwrap();
    let exact = &decode_response(&exact).unwrap()[0];
    for (format, rel) in [(ValueFormat::F16, 1e-3), (ValueFormat::Bf16, 8e-3)] {
        let mut req = request(seqs.clone(), 8, 1.0);
        req.value_format = format as i32;
        let resp = client.score(req).await.unwrap();
        assert_eq!(resp.sequences[0].topk_logprobs.len(), 6 * 8 * 2);
        let got = &decode_response(&resp).unwrap()[0];
        assert_eq!(got.topk_ids, exact.topk_ids);
        for (a, b) in got.topk_logprobs.iter().zip(&exact.topk_logprobs) {
            assert!(
                (a - b).abs() <= rel * b.abs().max(1.0),
                "{format:?}: {a} vs {b}"
            );
        }
    }
    server.shutdown().await.unwrap();
}

/// 32 concurrent clients with mixed lengths (unary and streamed): batching must not mix
/// sequences up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_mixed_lengths_each_get_their_own_answer() {
    let server = server("qwen2_tied", ServerConfig::default()).await;
    let teacher = Arc::new(std::sync::Mutex::new(load("qwen2_tied")));
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let client = client(&server);
        tasks.push(tokio::spawn(async move {
            let seqs: Vec<_> = (0..1 + c % 3)
                .map(|s| {
                    let seed = c * 10 + s;
                    let (p, t) = (1 + (seed * 7 % 30) as usize, 1 + (seed * 5 % 25) as usize);
                    sequence(
                        &format!("c{c}s{s}"),
                        tokens(seed, p, VOCAB),
                        tokens(seed + 1000, t, VOCAB),
                    )
                })
                .collect();
            let k = 1 + (c % 7) as u32;
            let temperature = 0.5 + (c % 4) as f32 * 0.5;
            let mut req = request(seqs.clone(), k, temperature);
            req.request_id = c;
            let response = if c % 2 == 0 {
                client.score(req).await.unwrap()
            } else {
                client.score_all(vec![req], 1).await.unwrap().remove(0)
            };
            (seqs, k, temperature, response)
        }));
    }
    for task in tasks {
        let (seqs, k, t, response) = task.await.unwrap();
        let got = decode_response(&response).unwrap();
        let teacher = teacher.lock().unwrap();
        for (s, g) in seqs.iter().zip(&got) {
            assert_eq!(g.id, s.id);
            let r = reference(&teacher, &s.prompt_ids, &s.target_ids, f64::from(t));
            assert_matches(g, &r, &s.target_ids, k as usize, TOL);
        }
    }
    let metrics = server.metrics.render();
    assert!(
        metrics.contains("edkd_teacher_scored_tokens_total"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keeps_requests_in_flight_and_answers_in_order() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let teacher = load("llama_linear");
    let requests: Vec<ScoreRequest> = (0..40u64)
        .map(|i| {
            let mut r = request(
                vec![sequence(
                    &format!("s{i}"),
                    tokens(i, 1 + (i % 9) as usize, VOCAB),
                    tokens(i + 77, 1 + (i % 13) as usize, VOCAB),
                )],
                4,
                1.0,
            );
            r.request_id = i;
            r
        })
        .collect();
    let responses = client.score_all(requests.clone(), 8).await.unwrap();
    for (req, resp) in requests.iter().zip(&responses) {
        assert_eq!(resp.request_id, req.request_id);
        let s = &req.sequences[0];
        let r = reference(&teacher, &s.prompt_ids, &s.target_ids, 1.0);
        assert_matches(
            &decode_response(resp).unwrap()[0],
            &r,
            &s.target_ids,
            4,
            TOL,
        );
    }
    server.shutdown().await.unwrap();
}

fn code_and_message(e: Error) -> (Code, String) {
    match e {
        Error::Rpc(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected an rpc status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_invalid_argument_and_the_server_stays_up() {
    let config = ServerConfig {
        max_top_k: 64,
        max_request_tokens: 100,
        max_sequences: 4,
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let sha = server.info.tokenizer_sha256.clone();
    assert_eq!(sha.len(), 64);
    let client = client(&server);
    let good = || request(vec![sequence("g", vec![1, 2, 3], vec![4, 5])], 3, 1.0);
    type Mutate = Box<dyn Fn(&mut ScoreRequest)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            "prompt id >= vocab",
            Box::new(|r| r.sequences[0].prompt_ids[1] = 160),
            "sequences[0].prompt_ids[1]: token id 160 >= vocab size 160",
        ),
        (
            "target id >= vocab",
            Box::new(|r| r.sequences[0].target_ids[0] = 9999),
            "sequences[0].target_ids[0]: token id 9999 >= vocab size 160",
        ),
        (
            "empty target",
            Box::new(|r| r.sequences[0].target_ids.clear()),
            "sequences[0].target_ids: is empty",
        ),
        (
            "empty prompt",
            Box::new(|r| r.sequences[0].prompt_ids.clear()),
            "sequences[0].prompt_ids: is empty; must hold at least one token: the teacher \
             predicts target token t from the tokens before it",
        ),
        (
            "over max positions",
            Box::new(|r| r.sequences[0].target_ids = vec![1; 62]),
            "over the teacher's max positions 64",
        ),
        (
            "top_k 0",
            Box::new(|r| r.top_k = 0),
            "top_k: 0 is outside 1..=64",
        ),
        (
            "top_k over limit",
            Box::new(|r| r.top_k = 65),
            "top_k: 65 is outside 1..=64",
        ),
        (
            "temperature 0",
            Box::new(|r| r.temperature = 0.0),
            "temperature: 0.0 is outside [0.01, 1000.0]",
        ),
        (
            "temperature < 0",
            Box::new(|r| r.temperature = -1.0),
            "temperature: -1.0 is outside [0.01, 1000.0]",
        ),
        (
            "temperature NaN",
            Box::new(|r| r.temperature = f32::NAN),
            "temperature: NaN",
        ),
        (
            "temperature whose logits / T overflow",
            Box::new(|r| r.temperature = 1e-45),
            "temperature: 1e-45 is outside [0.01, 1000.0]",
        ),
        (
            "temperature inf",
            Box::new(|r| r.temperature = f32::INFINITY),
            "temperature: inf is outside",
        ),
        (
            "over token budget",
            Box::new(|r| {
                r.sequences = (0..3)
                    .map(|i| sequence(&i.to_string(), vec![1; 30], vec![2; 10]))
                    .collect();
            }),
            "120 prompt + target tokens, over the token budget of 100",
        ),
        (
            "too many sequences",
            Box::new(|r| r.sequences = vec![r.sequences[0].clone(); 5]),
            "sequences: 5 sequences, over the limit of 4",
        ),
        (
            "no sequences",
            Box::new(|r| r.sequences.clear()),
            "sequences: is empty",
        ),
        (
            "unknown value format",
            Box::new(|r| r.value_format = 9),
            "value_format: unknown value 9",
        ),
        (
            "tokenizer mismatch",
            Box::new(|r| r.tokenizer_sha256 = "ab".repeat(32)),
            "tokenizer_sha256: client tokenizer abab",
        ),
    ];
    for (what, mutate, expected) in cases {
        let mut bad = good();
        mutate(&mut bad);
        let (code, message) = code_and_message(client.score(bad.clone()).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: `{message}` lacks `{expected}`"
        );
        // The stream path reports the same status.
        let (code, message) = code_and_message(client.score_all(vec![bad], 2).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "{what} (stream): {message}");
        // The server answers the next good request.
        let ok = client.score(good()).await.unwrap();
        assert_eq!(ok.sequences[0].num_positions, 2, "{what}");
    }
    // A matching tokenizer hash is accepted.
    let mut req = good();
    req.tokenizer_sha256 = sha.to_uppercase();
    client.score(req).await.unwrap();
    let metrics = server.metrics.render();
    assert!(
        metrics.contains("edkd_teacher_errors_total{code=\"InvalidArgument\"} 34"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_then_recovers() {
    let config = ServerConfig {
        queue_capacity: 1,
        max_request_tokens: 64,
        ..ServerConfig::default()
    };
    let server = server("phi3_longrope", config).await;
    let mut cfg = edkd_teacher::ClientConfig::new(server.addr.to_string());
    cfg.retries = 0;
    let client = edkd_teacher::Client::connect(cfg).unwrap();
    let req = request(
        vec![sequence("x", tokens(1, 30, VOCAB), tokens(2, 30, VOCAB))],
        8,
        1.0,
    );
    // One call first: the client then knows the server's stream limit (32 per connection)
    // and never opens a stream the server must refuse (seen as `Unavailable` under load).
    client.score(req.clone()).await.unwrap();
    let tasks: Vec<_> = (0..ServerConfig::default().max_streams_per_connection)
        .map(|_| {
            let (client, req) = (client.clone(), req.clone());
            tokio::spawn(async move { client.score(req).await })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                let (code, message) = code_and_message(e);
                assert_eq!(code, Code::ResourceExhausted, "{message}");
                assert!(
                    message.contains("queue is full (1 requests waiting)"),
                    "{message}"
                );
                exhausted += 1;
            }
        }
    }
    assert!(exhausted > 0 && ok > 0, "ok {ok}, exhausted {exhausted}");
    // Retrying clients get through once the queue drains.
    let retrying = common::client(&server);
    retrying.score(req).await.unwrap();
    server.shutdown().await.unwrap();
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Requests cancelled client-side (task aborted, or deadline passed) while they wait behind a
/// long forward pass free their queue places at once: the full capacity is admitted again
/// before that pass ends, and the queue-depth gauge returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_free_their_queue_places() {
    const CAPACITY: usize = 4;
    const HEAVY_SEQUENCES: u64 = 512;
    let config = ServerConfig {
        queue_capacity: CAPACITY,
        max_request_tokens: 1 << 17,
        max_sequences: HEAVY_SEQUENCES as usize,
        max_wait: Duration::ZERO,
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let metrics = server.metrics.clone();
    let connect = |timeout: Duration| {
        let mut config = ClientConfig::new(server.addr.to_string());
        config.retries = 0;
        config.timeout = timeout;
        Client::connect(config).unwrap()
    };
    let patient = connect(Duration::from_secs(60));
    let light = request(vec![sequence("l", vec![1, 2, 3], vec![4, 5])], 2, 1.0);
    patient.score(light.clone()).await.unwrap();

    // One long forward pass keeps the batcher busy while requests queue behind it.
    let heavy = request(
        (0..HEAVY_SEQUENCES)
            .map(|i| {
                sequence(
                    &i.to_string(),
                    tokens(i, 32, VOCAB),
                    tokens(i + 1, 31, VOCAB),
                )
            })
            .collect(),
        1,
        1.0,
    );
    let began = Instant::now();
    let blocker = tokio::spawn({
        let client = patient.clone();
        async move { client.score(heavy).await }
    });
    until("the heavy pass starts", || {
        metrics.batch_tokens.get_sample_count() == 2
    })
    .await;

    // Fill the queue behind it, then cancel: half by aborting the call, half by deadline.
    let short_deadline = Duration::from_millis(100);
    let doomed: Vec<_> = (0..CAPACITY)
        .map(|i| {
            let client = if i % 2 == 0 {
                patient.clone()
            } else {
                connect(short_deadline)
            };
            let req = light.clone();
            tokio::spawn(async move { client.score(req).await })
        })
        .collect();
    until("the queue is full", || {
        metrics.queue_depth.get() == CAPACITY as i64
    })
    .await;
    let mut deadline_codes = Vec::new();
    for (i, task) in doomed.into_iter().enumerate() {
        if i % 2 == 0 {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        } else {
            let (code, _) = code_and_message(task.await.unwrap().unwrap_err());
            deadline_codes.push(code);
        }
    }
    assert!(
        deadline_codes
            .iter()
            .all(|c| matches!(c, Code::DeadlineExceeded | Code::Cancelled)),
        "{deadline_codes:?}"
    );
    until("the cancelled requests leave the queue", || {
        metrics.queue_depth.get() == 0
    })
    .await;

    // The whole capacity is admitted again while the heavy pass is still running.
    let fresh: Vec<_> = (0..CAPACITY)
        .map(|_| {
            let (client, req) = (patient.clone(), light.clone());
            tokio::spawn(async move { client.score(req).await })
        })
        .collect();
    until("the fresh requests are queued", || {
        metrics.queue_depth.get() == CAPACITY as i64 || fresh.iter().any(|t| t.is_finished())
    })
    .await;
    let still_busy = !blocker.is_finished();
    for task in fresh {
        let response = task
            .await
            .unwrap()
            .expect("admitted after the cancellations");
        assert_eq!(response.sequences[0].num_positions, 2);
    }
    let heavy = blocker.await.unwrap().unwrap();
    eprintln!("heavy pass: {:?}", began.elapsed());
    assert_eq!(heavy.sequences.len(), HEAVY_SEQUENCES as usize);
    assert!(still_busy, "the heavy pass ended too soon to test anything");
    assert_eq!(metrics.queue_depth.get(), 0);
    assert_eq!(metrics.in_flight.get(), 0);
    // The batcher skipped the cancelled requests instead of scoring them.
    assert_eq!(metrics.cancelled.get(), CAPACITY as u64);
    server.shutdown().await.unwrap();
}
