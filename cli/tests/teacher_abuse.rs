//! `edkd teacher serve` under the raw HTTP/2 abuse an unauthenticated client on loopback can
//! send, measured from outside on the server process:
//! - one connection with 60 concurrent streams, each sending a ~15 MiB message (under the
//!   16 MiB limit): the server's resident set must stay within its in-flight byte budget
//!   plus a bounded decode allowance (before the fix it grew from 561 MB to 1.37 GB);
//! - 200 silent connections and 3 slow-loris clients must be closed after the handshake
//!   timeout, and a connection with no call in flight after the idle timeout;
//! - the server answers normal calls afterwards.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Loading libtorch and the model on a busy two-core machine.
const STARTUP: Duration = Duration::from_secs(120);
const STREAMS: usize = 60;
/// Encoded size of each attack message (the server's limit is 16 MiB).
const MESSAGE_BYTES: usize = 15 << 20;
/// The server's in-flight request byte budget in this test (its default).
const BUDGET_MIB: u64 = 64;
/// Allowed growth of the server's peak resident set under the attack: the budget, plus up
/// to four decoded messages at once (packed one-byte varints decode to 4 bytes each:
/// 15 MiB -> 60 MiB), plus allocator slack.
const ALLOWED_GROWTH_MIB: u64 = BUDGET_MIB + 4 * 60 + 64;
/// The attack is stopped (and the test failed) past this growth, to spare the machine.
const CAP_GROWTH_MIB: u64 = 1024;
const HANDSHAKE_S: u64 = 2;
const IDLE_S: u64 = 3;
const SILENT: usize = 200;

fn teacher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

/// A child process killed when the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve() -> (Guard, String) {
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_edkd"))
            .env("RUST_LOG", "warn")
            .args(["teacher", "serve", "--model"])
            .arg(teacher())
            .args(["--listen", "127.0.0.1:0"])
            .args(["--handshake-timeout-s", &HANDSHAKE_S.to_string()])
            .args(["--idle-timeout-s", &IDLE_S.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    loop {
        let left = STARTUP.saturating_sub(started.elapsed());
        let line = rx.recv_timeout(left).expect("server startup line");
        if let Some(addr) = line
            .strip_prefix("serving ")
            .and_then(|l| l.rsplit_once(") at "))
            .map(|(_, a)| a.to_owned())
        {
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, addr);
        }
    }
}

fn varint(mut v: usize, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A gRPC-framed ScoreRequest of about `bytes`: one sequence whose packed prompt_ids are
/// all 1 (one byte each on the wire, four once decoded).
fn attack_message(bytes: usize) -> Bytes {
    let ids = bytes - 32;
    let mut sequence = vec![0x12]; // Sequence.prompt_ids, length-delimited
    varint(ids, &mut sequence);
    let header = sequence.len();
    let mut request = vec![0x12]; // ScoreRequest.sequences
    varint(header + ids, &mut request);
    request.extend_from_slice(&sequence);
    let len = request.len() + ids;
    let mut framed = Vec::with_capacity(5 + len);
    framed.push(0);
    framed.extend_from_slice(&(len as u32).to_be_bytes());
    framed.extend_from_slice(&request);
    framed.resize(5 + len, 1);
    Bytes::from(framed)
}

/// The gRPC status of one call (from the headers or the trailers), or how it failed.
async fn call(mut client: h2::client::SendRequest<Bytes>, addr: String, message: Bytes) -> String {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/edkd.teacher.v1.Teacher/Score"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let result = async {
        client = client.ready().await?;
        let (response, mut body) = client.send_request(request, false)?;
        body.send_data(message, true)?;
        let response = response.await?;
        if let Some(s) = response.headers().get("grpc-status") {
            return Ok::<_, h2::Error>(s.to_str().unwrap_or("?").to_owned());
        }
        let mut recv = response.into_body();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
        }
        let trailers = recv.trailers().await?;
        Ok(trailers
            .and_then(|t| t.get("grpc-status").cloned())
            .map_or("none".into(), |s| s.to_str().unwrap_or("?").to_owned()))
    };
    match result.await {
        Ok(code) => format!("grpc-status {code}"),
        Err(e) => format!(
            "h2 error: {}",
            e.reason().map_or("io".into(), |r| format!("{r:?}"))
        ),
    }
}

fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// Waits for `stream` to be closed by the server (EOF or an error); the time it took.
async fn closed_after(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn server_memory_and_connections_stay_bounded_under_abuse() {
    let (server, addr) = serve();
    let pid = server.0.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = edkd_teacher::ClientConfig::new(addr.clone());
    config.timeout = Duration::from_secs(60);
    let good = edkd_teacher::proto::ScoreRequest {
        request_id: 1,
        sequences: vec![edkd_teacher::proto::Sequence {
            id: "good".into(),
            prompt_ids: vec![1, 5, 9],
            target_ids: vec![7, 3],
            images: Vec::new(),
        }],
        top_k: 4,
        temperature: 1.0,
        value_format: 1,
        tokenizer_sha256: String::new(),
        ..Default::default()
    };
    let score = |client: &edkd_teacher::Client| {
        let answer = rt.block_on(client.score(good.clone())).unwrap();
        assert_eq!(answer.sequences[0].num_positions, 2);
    };
    let client = {
        let _enter = rt.enter();
        edkd_teacher::Client::connect(config).unwrap()
    };
    score(&client);
    let base = common::hwm_kib(pid).unwrap();

    // 60 concurrent 15 MiB messages on one connection; the same bytes are shared by all.
    let message = attack_message(MESSAGE_BYTES);
    let watch_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = watch_stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if common::hwm_kib(pid)
                    .is_some_and(|k| mib(k.saturating_sub(base)) > CAP_GROWTH_MIB)
                {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        })
    };
    let outcomes: Vec<String> = rt.block_on(async {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let calls: Vec<_> = (0..STREAMS)
            .map(|_| tokio::spawn(call(client.clone(), addr.clone(), message.clone())))
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    });
    watch_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !watcher.join().unwrap(),
        "server killed: grew by more than {CAP_GROWTH_MIB} MiB"
    );
    let peak = common::hwm_kib(pid).expect("server still running");
    let growth = mib(peak.saturating_sub(base));
    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    for o in &outcomes {
        *tally.entry(o.as_str()).or_default() += 1;
    }
    eprintln!(
        "attack: {STREAMS} x {} MiB on one connection: server peak {} MiB, {growth} MiB above \
         its {} MiB before; outcomes {tally:?}",
        MESSAGE_BYTES >> 20,
        mib(peak),
        mib(base)
    );
    assert!(
        growth <= ALLOWED_GROWTH_MIB,
        "server grew by {growth} MiB (allowed {ALLOWED_GROWTH_MIB})"
    );
    // Messages the budget could take reach validation (INVALID_ARGUMENT, code 3); the rest
    // are refused while arriving (RESOURCE_EXHAUSTED, code 8). None is answered OK.
    assert!(!outcomes.iter().any(|o| o == "grpc-status 0"), "{tally:?}");
    assert!(
        outcomes.iter().any(|o| o == "grpc-status 8"),
        "the budget never refused a message: {tally:?}"
    );
    score(&client);

    // Silent sockets and slow-loris clients, then one HTTP/2 connection without calls.
    let closed: Vec<Option<Duration>> = rt.block_on(async {
        let limit = Duration::from_secs(HANDSHAKE_S + 8);
        let mut waits = Vec::new();
        for _ in 0..SILENT {
            let s = TcpStream::connect(&addr).await.unwrap();
            waits.push(tokio::spawn(closed_after(s, limit)));
        }
        for _ in 0..3 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            waits.push(tokio::spawn(async move {
                // One byte of the preface every 500 ms: 24 bytes would take 12 s.
                let started = Instant::now();
                for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
                    if s.write_all(&[*b]).await.is_err() {
                        return Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if started.elapsed() > limit {
                        return None;
                    }
                }
                closed_after(s, limit.saturating_sub(started.elapsed())).await
            }));
        }
        let mut out = Vec::new();
        for w in waits {
            out.push(w.await.unwrap());
        }
        out
    });
    let open = closed.iter().filter(|c| c.is_none()).count();
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!(
        "{} silent + 3 slow-loris connections: {open} still open after {} s, slowest closed \
         after {slowest:?}",
        SILENT,
        HANDSHAKE_S + 8
    );
    assert_eq!(
        open, 0,
        "connections outlived the {HANDSHAKE_S} s handshake timeout"
    );
    assert!(slowest >= Duration::from_secs(HANDSHAKE_S) - Duration::from_millis(200));
    let idle = rt.block_on(async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // The client preface and an empty SETTINGS frame: a handshake, then nothing.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        closed_after(s, Duration::from_secs(IDLE_S + 10)).await
    });
    let idle = idle.expect("an idle connection stayed open");
    eprintln!("idle HTTP/2 connection closed after {idle:?} (idle timeout {IDLE_S} s)");
    assert!(idle >= Duration::from_secs(IDLE_S) - Duration::from_millis(200));
    // The client's connection went idle too; it reconnects by itself.
    score(&client);
    drop(server);
}
