//! Data-parallel training under `mpirun` end to end, on a tiny prepared dataset, the fixture
//! teacher and the `tiny` student:
//! - 2 ranks with batch B make the same updates as 1 rank with batch 2B;
//! - a run resumed with another world size finishes with the same weights and data cursor;
//! - `edkd launch --backend local` runs 1 teacher + 2 ranks, and a rank killed mid-run is
//!   restarted from its checkpoint and finishes with the uninterrupted run's weights,
//!   leaving no process behind. The weights are compared between runs with a teacher replica
//!   per rank: one server batches concurrent requests of both ranks together, in an order
//!   that depends on timing, which changes its answers in the last bits;
//! - a single-process `edkd train` killed with SIGKILL and resumed ends bit-identical.

#[path = "../../test-support/ports.rs"]
mod ports;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};

/// Training examples: 16 micro-batches of `ROWS`, one epoch holds every test run's steps.
const TRAIN_EXAMPLES: usize = 64;
/// Rows per micro-batch (`batch.max_rows`; the token budget never binds).
const ROWS: usize = 4;
/// Optimizer steps of the equivalence and resume runs.
const STEPS: u64 = 6;
/// Weights of runs that should match may differ by this much (fp32).
const TOLERANCE: f64 = 1e-5;
/// How long a launched job may take.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Tests share two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn teacher_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

fn edkd() -> &'static str {
    env!("CARGO_BIN_EXE_edkd")
}

/// `mpirun` for `ranks` ranks of `edkd args...`.
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(edkd())
        .args(args)
        .env("RUST_LOG", "warn");
    cmd
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A synthetic mixed-task dataset tokenized with the fixture teacher's tokenizer.
fn prepare(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tr = dir.join("train.jsonl");
    let va = dir.join("validation.jsonl");
    let train = synth::generate("mix", Split::Train, 3, TRAIN_EXAMPLES).unwrap();
    synth::write_jsonl(&tr, &train).unwrap();
    let val = synth::generate("mix", Split::Validation, 3, 8).unwrap();
    synth::write_jsonl(&va, &val).unwrap();
    let out = dir.join("data");
    let config = PrepareConfig {
        validation_inputs: vec![va.display().to_string()],
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

/// The train config every run shares; the teacher is in-process unless `--teacher-addr`
/// overrides it.
fn write_config(dir: &Path, data: &Path, steps: u64) -> PathBuf {
    let teacher = teacher_dir();
    let text = format!(
        r#"seed = 7
threads = 1
device = "cpu"

[model]
preset = "tiny"
overrides = {{ dropout = 0.0 }}

[data]
manifest = "{data}"
tokenizer = "{tokenizer}"

[teacher]
kind = "model"
model = "{teacher}"

[optim]
steps = {steps}
lr = 3e-3
warmup_steps = 2
accumulation = 1

[batch]
max_tokens = 4000
max_rows = {ROWS}
bucket_window = 64

[checkpoint]
every = 2
keep_last = 100

[eval]
every = 0
max_examples = 4
max_new_tokens = 2

[log]
progress = false
plot = false
tensorboard = false
"#,
        data = data.display(),
        tokenizer = teacher.join("tokenizer.json").display(),
        teacher = teacher.display(),
    );
    let path = dir.join("train.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train_args(config: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        config.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Trains with `ranks` ranks (under mpirun) and `accumulation` micro-batches per rank.
fn train(ranks: usize, accumulation: usize, config: &Path, out: &Path, extra: &[&str]) {
    let acc = format!("optim.accumulation={accumulation}");
    let mut flags = vec!["--set", acc.as_str()];
    flags.extend_from_slice(extra);
    let out = mpirun(ranks, &train_args(config, out, &flags))
        .output()
        .unwrap();
    check(&format!("{ranks}-rank training"), out);
}

/// The weights of a model folder, by name.
fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Largest absolute difference between two model folders' weights.
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    assert!(!wa.is_empty());
    wa.iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            assert_eq!(ta.size(), tb.size(), "{na}");
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// The trainer state of the run's newest checkpoint.
fn last_state(out: &Path) -> serde_json::Value {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("trainer_state.json").is_file())
        .collect();
    dirs.sort();
    let last = dirs.last().expect("a checkpoint");
    serde_json::from_str(&std::fs::read_to_string(last.join("trainer_state.json")).unwrap())
        .unwrap()
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch_and_resume_across_world_sizes() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    let config = write_config(tmp.path(), &data, STEPS);
    let run = |name: &str| tmp.path().join(name);

    // 1 rank, 2 micro-batches of ROWS per step == 2 ranks, 1 micro-batch each.
    train(1, 2, &config, &run("one"), &[]);
    train(2, 1, &config, &run("two"), &[]);
    let d = max_diff(&run("one/final"), &run("two/final"));
    assert!(d <= TOLERANCE, "1 rank vs 2 ranks: max |dw| = {d:e}");
    // Training moved the weights (the comparison is not between two untouched models).
    let first = run("one/checkpoints/step-00000002");
    let moved = max_diff(&first, &run("one/final"));
    assert!(moved > 1e-3, "weights barely moved: {moved:e}");
    let done = |out: &Path| last_state(out)["cursor"]["examples_done"].as_u64().unwrap();
    assert_eq!(done(&run("one")), STEPS * 2 * ROWS as u64);
    assert_eq!(done(&run("two")), STEPS * 2 * ROWS as u64);

    // 2 ranks stop after 3 steps (the newest checkpoint is step 2), 1 rank resumes.
    train(2, 1, &config, &run("two-one"), &["--halt-after", "3"]);
    assert_eq!(last_state(&run("two-one"))["step"].as_u64(), Some(2));
    train(1, 2, &config, &run("two-one"), &["--resume"]);
    // And the other way round.
    train(1, 2, &config, &run("one-two"), &["--halt-after", "3"]);
    train(2, 1, &config, &run("one-two"), &["--resume"]);
    for name in ["two-one", "one-two"] {
        let d = max_diff(&run("two/final"), &run(&format!("{name}/final")));
        assert!(
            d <= TOLERANCE,
            "{name}: max |dw| = {d:e} from the uninterrupted run"
        );
        let state = last_state(&run(name));
        assert_eq!(state["step"].as_u64(), Some(STEPS), "{name}");
        assert_eq!(done(&run(name)), STEPS * 2 * ROWS as u64, "{name}");
    }
}

/// Processes whose command line contains `needle`, with their command lines.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if pid != me && cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The pid of trainer rank `rank` of the run whose `--out` is `out`.
fn rank_pid(out: &str, rank: u32) -> Option<u32> {
    processes_with(out).into_iter().find_map(|(pid, cmdline)| {
        if !cmdline.starts_with(edkd()) {
            return None; // mpirun itself
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        env.split(|&b| b == 0)
            .any(|kv| kv == want.as_bytes())
            .then_some(pid)
    })
}

struct Job {
    spec: PathBuf,
    output: PathBuf,
    /// Teacher listen addresses.
    listen: Vec<String>,
}

fn write_job(dir: &Path, name: &str, replicas: u16, config: &Path, data: &Path) -> Job {
    let output = dir.join(format!("launch-{name}-{}", std::process::id()));
    let port = ports::free_ports(replicas);
    let text = format!(
        r#"name = "dist-{name}"
output = "{output}"
max_restarts = 2

[teacher]
model = "{teacher}"
replicas = {replicas}
devices = ["cpu"]
dtype = "f32"
base_port = {port}

[trainer]
ranks = 2
config = "{config}"
extra_args = ["--set", "checkpoint.every=4"]

[data]
manifest = "{data}"
"#,
        output = output.display(),
        teacher = teacher_dir().display(),
        config = config.display(),
        data = data.display(),
    );
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(&spec, text).unwrap();
    Job {
        spec,
        output,
        listen: (port..port + replicas)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
    }
}

fn launch(job: &Job) -> std::process::Child {
    Command::new(edkd())
        .arg("launch")
        .arg(&job.spec)
        .args(["--backend", "local"])
        .args(["--health-timeout-s", "120"])
        .args(["--restart-delay-s", "0.5"])
        .args(["--stop-grace-s", "3"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the launcher, failing (and killing it) after [`LAUNCH_TIMEOUT`].
fn finish(mut child: std::process::Child, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > LAUNCH_TIMEOUT {
            let _ = child.kill();
            panic!("{what}: still running after {LAUNCH_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn assert_nothing_left(job: &Job) {
    let listen = job.listen.iter().map(String::as_str);
    for needle in std::iter::once(job.output.to_str().unwrap()).chain(listen) {
        let left = processes_with(needle);
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

#[test]
fn launch_runs_teacher_and_two_ranks_and_restarts_a_killed_rank() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    // Enough steps that a rank can be killed mid-run after the first checkpoint.
    let config = write_config(tmp.path(), &data, 24);

    let one = write_job(tmp.path(), "one-teacher", 1, &config, &data);
    check("edkd launch", finish(launch(&one), "launch"));
    assert_nothing_left(&one);
    let status = Command::new(edkd())
        .arg("status")
        .arg(&one.output)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    check("edkd status", status);
    assert!(text.contains("step        24 / 24"), "{text}");
    assert!(text.contains("restarts    0"), "{text}");
    assert!(one.output.join("final/model.safetensors").is_file());

    // A teacher replica per rank: the reference run, then one where rank 1 is killed.
    let clean = write_job(tmp.path(), "clean", 2, &config, &data);
    check("edkd launch", finish(launch(&clean), "clean launch"));
    assert_nothing_left(&clean);
    let killed = write_job(tmp.path(), "killed", 2, &config, &data);
    let child = launch(&killed);
    let out = killed.output.to_str().unwrap().to_owned();
    let first_checkpoint = killed.output.join("checkpoints/step-00000004");
    let started = Instant::now();
    let victim = loop {
        if first_checkpoint.is_dir()
            && let Some(pid) = rank_pid(&out, 1)
        {
            break pid;
        }
        assert!(
            started.elapsed() < LAUNCH_TIMEOUT,
            "no checkpoint and rank 1 within {LAUNCH_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        !killed.output.join("final").exists(),
        "the run finished before a rank could be killed"
    );
    let status = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = finish(child, "launch with a killed rank");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    check("edkd launch after a kill", output);
    assert_nothing_left(&killed);

    let restarts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(killed.output.join("restarts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(restarts["restarts"].as_u64(), Some(1), "{restarts}\n{log}");
    assert_eq!(restarts["events"][0]["component"], "trainer", "{restarts}");
    let d = max_diff(&clean.output.join("final"), &killed.output.join("final"));
    assert!(
        d <= TOLERANCE,
        "killed and restarted vs uninterrupted: max |dw| = {d:e}"
    );
}

/// `edkd train` alone (no MPI, no launcher): SIGKILL after the first checkpoints, then
/// `--resume`; the final weights are bit for bit those of an uninterrupted run, with
/// dropout and gradient accumulation in play.
#[test]
fn a_killed_single_process_run_resumes_to_the_same_weights() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path());
    // Enough steps that the run is still going when the step-4 checkpoint appears.
    let config = write_config(tmp.path(), &data, 32);
    let extra = [
        "--set",
        "model.overrides.dropout=0.1",
        "--set",
        "optim.accumulation=2",
    ];
    let run = |name: &str| tmp.path().join(name);
    let train_alone = |out: &Path, more: &[&str]| {
        let mut args = train_args(&config, out, &extra);
        args.extend(more.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(edkd());
        cmd.args(args).env("RUST_LOG", "warn");
        cmd
    };
    check(
        "uninterrupted run",
        train_alone(&run("clean"), &[]).output().unwrap(),
    );

    let mut child = train_alone(&run("killed"), &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = run("killed/checkpoints/step-00000004");
    let started = Instant::now();
    while !checkpoint.join("SHA256SUMS").is_file() {
        assert!(
            started.elapsed() < LAUNCH_TIMEOUT,
            "no step-4 checkpoint within {LAUNCH_TIMEOUT:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its step-4 checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the run was not killed: {status}");
    assert!(
        !run("killed/final").exists(),
        "the run finished before it could be killed"
    );
    let resumed_from = last_state(&run("killed"))["step"].as_u64().unwrap();
    assert!(resumed_from < 32, "{resumed_from}");

    check(
        "resumed run",
        train_alone(&run("killed"), &["--resume"]).output().unwrap(),
    );
    let d = max_diff(&run("clean/final"), &run("killed/final"));
    assert_eq!(
        d, 0.0,
        "killed at step >= {resumed_from} and resumed: max |dw| = {d:e}"
    );
    let a = std::fs::read(run("clean/final/model.safetensors")).unwrap();
    let b = std::fs::read(run("killed/final/model.safetensors")).unwrap();
    assert!(a == b, "final model.safetensors files differ");
}
