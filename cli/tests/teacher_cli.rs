//! `edkd teacher serve` and `edkd teacher query` through the real binary: the server reports
//! the address it bound (port 0), query prints every target token's top-k with
//! probabilities, and SIGTERM lets the request in flight finish before the server exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edkd_models::Tokenizer;

/// Loading libtorch and the model on a busy two-core machine.
const STARTUP: Duration = Duration::from_secs(120);
/// Hang guard for the server's exit after SIGTERM (it has one short request to finish).
const SHUTDOWN: Duration = Duration::from_secs(30);
/// The batcher holds a lone request this long waiting for company, so the query is still in
/// flight when SIGTERM arrives.
const MAX_WAIT_MS: &str = "2000";
const TOP_K: usize = 3;
const TEXT: &str = "the teacher scores every token of this text";

fn teacher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

fn edkd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edkd"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// A child process killed if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Guard {
    fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "no exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Splits the server's startup line, `serving ... at ADDR, metrics at http://ADDR/metrics`.
fn addresses(line: &str) -> Option<(String, String)> {
    let (_, rest) = line.strip_prefix("serving ")?.rsplit_once(") at ")?;
    let (grpc, metrics) = rest.split_once(", metrics at http://")?;
    Some((
        grpc.to_owned(),
        metrics.strip_suffix("/metrics")?.to_owned(),
    ))
}

fn metrics(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The probabilities after ` | ` on a query line: each follows a quoted (Debug) token.
fn top_probabilities(line: &str) -> Vec<f64> {
    let (_, top) = line
        .split_once(" | ")
        .unwrap_or_else(|| panic!("no top-k in {line:?}"));
    let words: Vec<&str> = top.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0].ends_with('"'))
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

#[test]
fn serve_query_and_sigterm_with_a_request_in_flight() {
    let mut server = Guard(
        edkd()
            .args(["teacher", "serve", "--model"])
            .arg(teacher())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--max-wait-ms", MAX_WAIT_MS])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = mpsc::channel();
    let stderr = server.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut log = Vec::new();
    let (addr, metrics_addr) = loop {
        let left = STARTUP.saturating_sub(started.elapsed());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no startup line; stderr so far: {log:#?}"));
        if let Some(found) = addresses(&line) {
            break found;
        }
        log.push(line);
    };
    assert!(!addr.ends_with(":0"), "reported {addr}, not the bound port");

    let tokenizer_path = teacher().join("tokenizer.json");
    let query = edkd()
        .args([
            "teacher",
            "query",
            "--addr",
            &addr,
            "--text",
            TEXT,
            "--tokenizer",
        ])
        .arg(&tokenizer_path)
        .args(["--top-k", &TOP_K.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut query = Guard(query);

    // SIGTERM once the query's Score call is being handled.
    let started = Instant::now();
    while !metrics(&metrics_addr).contains("edkd_teacher_requests_in_flight 1") {
        assert!(
            matches!(query.0.try_wait(), Ok(None)),
            "query ended before it was seen in flight"
        );
        assert!(started.elapsed() < STARTUP, "query never in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait_for_exit(SHUTDOWN);
    let shutdown = term.elapsed();
    assert!(status.success(), "server exited with {status}");
    let stopped: Vec<String> = lines.try_iter().collect();
    assert!(
        stopped.iter().any(|l| l == "teacher service stopped"),
        "{stopped:#?}"
    );
    eprintln!("server exited {shutdown:?} after SIGTERM");

    // The request in flight at SIGTERM was answered in full.
    let status = query.wait_for_exit(SHUTDOWN);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    query
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    query
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "query failed: {stderr}");
    let tokenizer = Tokenizer::from_file(&tokenizer_path).unwrap();
    let targets = tokenizer.encode(TEXT, true).unwrap().len() - 1;
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("teacher llama_linear (") && header.ends_with("T = 1, top 3"),
        "{stdout}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), targets, "one line per target token:\n{stdout}");
    for (p, row) in rows.iter().enumerate() {
        assert!(row.trim_start().starts_with(&format!("{p} ")), "{row}");
        let gold: f64 = row
            .split_once(" p=")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no gold probability in {row:?}"));
        assert!((0.0..=1.0).contains(&gold), "{row}");
        let top = top_probabilities(row);
        assert_eq!(top.len(), TOP_K, "{row}");
        assert!(top.iter().all(|p| (0.0..=1.0).contains(p)), "{row}");
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "not sorted: {row}");
        assert!(top.iter().sum::<f64>() <= 1.0 + 2e-3, "{row}");
    }
}
