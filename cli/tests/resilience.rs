//! A run survives its teacher dying: `edkd train` against an `edkd teacher serve` that is
//! SIGKILLed mid-run and restarted on the same port retries, names the address while it
//! waits, and finishes with the weights of an uninterrupted run. And a second SIGTERM
//! aborts a run at once, whatever its step is doing.

#[path = "../../test-support/ports.rs"]
mod ports;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};

/// Loading libtorch and a model on a busy two-core machine.
const STARTUP: Duration = Duration::from_secs(120);
/// A training run of the test's size.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Optimizer steps of the runs.
const STEPS: u64 = 16;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn teacher_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
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

/// Starts `edkd teacher serve` on `port` and waits for its startup line.
fn serve(port: u16) -> Guard {
    let mut guard = Guard(
        edkd()
            .args(["teacher", "serve", "--model"])
            .arg(teacher_dir())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = guard.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    loop {
        let left = STARTUP.saturating_sub(started.elapsed());
        let line = rx.recv_timeout(left).expect("teacher startup line");
        if line.starts_with("serving ") {
            return guard;
        }
    }
}

fn prepare(dir: &Path) -> PathBuf {
    let tr = dir.join("train.jsonl");
    synth::write_jsonl(&tr, &synth::generate("mix", Split::Train, 3, 96).unwrap()).unwrap();
    let out = dir.join("data");
    let config = PrepareConfig {
        max_input_tokens: Some(40),
        max_target_tokens: Some(16),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 32,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(&[&tr], &teacher_dir().join("tokenizer.json"), &out)
    };
    edkd_data::prepare::prepare(&config).unwrap();
    out
}

fn train_cmd(data: &Path, out: &Path, addr: &str, steps: u64) -> Command {
    let mut cmd = edkd();
    cmd.arg("train")
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--data".as_ref(), data.as_os_str()])
        .args(["--teacher-addr", addr, "--steps", &steps.to_string()]);
    for set in [
        format!(
            "data.tokenizer=\"{}\"",
            teacher_dir().join("tokenizer.json").display()
        ),
        "threads=1".into(),
        "seed=3".into(),
        "model.preset=\"tiny\"".into(),
        "optim.warmup_steps=2".into(),
        "batch.max_rows=4".into(),
        "batch.max_tokens=4000".into(),
        "checkpoint.every=0".into(),
        "eval.every=0".into(),
        "log.progress=false".into(),
        "log.plot=false".into(),
        "log.tensorboard=false".into(),
        "teacher.retry_for_s=120".into(),
    ] {
        cmd.args(["--set", &set]);
    }
    cmd
}

fn metric_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn max_diff(a: &Path, b: &Path) -> f64 {
    let mut wa = tch::Tensor::read_safetensors(a.join("model.safetensors")).unwrap();
    let mut wb = tch::Tensor::read_safetensors(b.join("model.safetensors")).unwrap();
    wa.sort_by(|x, y| x.0.cmp(&y.0));
    wb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn a_teacher_killed_and_restarted_mid_run_changes_nothing() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let port = ports::free_port();
    let addr = format!("127.0.0.1:{port}");

    let teacher = serve(port);
    let clean = tmp.path().join("clean");
    let status = train_cmd(&data, &clean, &addr, STEPS).status().unwrap();
    assert!(status.success(), "uninterrupted run: {status}");

    let bumpy = tmp.path().join("bumpy");
    let mut run = Guard(
        train_cmd(&data, &bumpy, &addr, STEPS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = run.0.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    while metric_lines(&bumpy) < 2 {
        assert!(started.elapsed() < RUN_LIMIT, "the run never got going");
        assert!(run.0.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut teacher = teacher;
    teacher.0.kill().unwrap(); // SIGKILL
    teacher.0.wait().unwrap();
    // The trainer keeps asking while the teacher is gone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the run gave up on its teacher"
    );
    let _teacher = serve(port);
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < RUN_LIMIT, "the run did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "the run failed: {status}\n{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("retrying") && l.contains(&addr)),
        "no retry naming {addr}: {log:#?}"
    );
    let d = max_diff(&clean.join("final"), &bumpy.join("final"));
    assert!(
        d <= 1e-6,
        "weights differ by {d:e} after the teacher's restart"
    );
}

#[test]
fn a_teacher_that_stays_dead_fails_the_run_naming_its_address() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let port = ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let teacher = serve(port);
    let out = tmp.path().join("run");
    let mut cmd = train_cmd(&data, &out, &addr, 400);
    cmd.args(["--set", "teacher.retry_for_s=2"]);
    let mut run = Guard(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while metric_lines(&out) < 1 {
        assert!(started.elapsed() < RUN_LIMIT, "the run never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(teacher);
    let output = std::mem::replace(&mut run.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("teacher service at {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_second_sigterm_aborts_a_run_stuck_in_its_step() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let port = ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let teacher = serve(port);
    let out = tmp.path().join("run");
    let mut run = Guard(
        train_cmd(&data, &out, &addr, 400)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while metric_lines(&out) < 1 {
        assert!(started.elapsed() < RUN_LIMIT, "the run never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    // With its teacher gone the run waits inside a step (retrying for 120 s).
    drop(teacher);
    std::thread::sleep(Duration::from_millis(500));
    let pid = run.0.id().to_string();
    let term = || {
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
    };
    term();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the run was not stuck: the test proves nothing"
    );
    term();
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running after a second SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130), "{status}");
}
