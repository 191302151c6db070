//! The local supervisor with stand-in commands: `sh -c` scripts for trainers, and this test
//! binary re-run as a real gRPC health server for teachers (see [`stand_in_teacher`]).

#[path = "../../test-support/ports.rs"]
mod ports;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edkd_cluster::JobSpec;
use edkd_cluster::local::{
    self, LaunchPlan, LocalOptions, LogSink, LogStream, OutputFormat, ProcessSpec, RunEnd,
    StopHandle, TeacherLaunch,
};
use edkd_cluster::restarts::RestartLog;

const STAND_IN_ADDR: &str = "EDKD_STAND_IN_TEACHER_ADDR";
const STAND_IN_READY_MS: &str = "EDKD_STAND_IN_TEACHER_READY_MS";
const STAND_IN_DIE_MS: &str = "EDKD_STAND_IN_TEACHER_DIE_MS";
const STAND_IN_EXIT_CODE: i32 = 7;

/// Not a test: the entry point of the stand-in teacher. Run with `STAND_IN_ADDR` set (only
/// the supervisor tests do that), it serves grpc.health.v1 on that address, NOT_SERVING for
/// `STAND_IN_READY_MS`, then SERVING, and exits with [`STAND_IN_EXIT_CODE`] after
/// `STAND_IN_DIE_MS` if set. Without the variable it returns at once.
#[test]
fn stand_in_teacher() {
    let Ok(addr) = std::env::var(STAND_IN_ADDR) else {
        return;
    };
    let addr: SocketAddr = addr.parse().expect("stand-in address");
    let ms = |name| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<u64>().expect(name))
    };
    let ready = Duration::from_millis(ms(STAND_IN_READY_MS).unwrap_or(0));
    let die = ms(STAND_IN_DIE_MS).map(Duration::from_millis);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tokio::spawn(async move {
            tokio::time::sleep(ready).await;
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
            println!("serving");
        });
        if let Some(die) = die {
            tokio::spawn(async move {
                tokio::time::sleep(die).await;
                eprintln!("stand-in teacher dying");
                std::process::exit(STAND_IN_EXIT_CODE);
            });
        }
        println!("listening on {addr}");
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr)
            .await
            .expect("serve");
    });
}

fn stand_in(label: &str, port: u16, ready_ms: u64, die_ms: Option<u64>) -> TeacherLaunch {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut env = vec![
        (STAND_IN_ADDR.to_owned(), addr.to_string()),
        (STAND_IN_READY_MS.to_owned(), ready_ms.to_string()),
    ];
    if let Some(die_ms) = die_ms {
        env.push((STAND_IN_DIE_MS.to_owned(), die_ms.to_string()));
    }
    TeacherLaunch {
        process: ProcessSpec {
            label: label.to_owned(),
            program: std::env::current_exe().expect("test binary"),
            args: [
                "--exact",
                "stand_in_teacher",
                "--nocapture",
                "--test-threads=1",
            ]
            .map(str::to_owned)
            .to_vec(),
            env,
            output: OutputFormat::Plain,
        },
        addr,
    }
}

fn sh(label: &str, script: &str, args: &[&str]) -> ProcessSpec {
    let mut all = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    ProcessSpec {
        label: label.to_owned(),
        program: PathBuf::from("sh"),
        args: all,
        env: Vec::new(),
        output: OutputFormat::Plain,
    }
}

fn launch_plan(
    dir: &Path,
    teachers: Vec<TeacherLaunch>,
    trainer: ProcessSpec,
    max_restarts: u32,
) -> LaunchPlan {
    LaunchPlan {
        teachers,
        trainer,
        resume_flag: "--resume".into(),
        resume_first: false,
        max_restarts,
        run_dir: dir.to_owned(),
    }
}

type Lines = Arc<Mutex<Vec<(LogStream, String)>>>;

fn options() -> (LocalOptions, Lines) {
    let lines: Lines = Arc::default();
    let sink_lines = lines.clone();
    let sink: LogSink = Arc::new(move |stream, line| {
        sink_lines.lock().unwrap().push((stream, line.to_owned()));
    });
    let opts = LocalOptions {
        health_timeout: Duration::from_secs(30),
        stop_grace: Duration::from_secs(2),
        restart_delay: Duration::ZERO,
        handle_signals: false,
        sink,
        ..LocalOptions::default()
    };
    (opts, lines)
}

fn texts(lines: &Lines) -> Vec<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, line)| line.clone())
        .collect()
}

fn wait_for_line(lines: &Lines, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(line) = texts(lines).into_iter().find(|line| line.contains(needle)) {
            return Ok(line);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no line containing {needle:?} in {:?}", texts(lines))
}

/// Whether `pid` is a live process (a zombie awaiting its reaper counts as dead).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | None)
}

fn wait_dead(pids: &[i32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30); // generous: a loaded CI machine reaps slowly
    while pids.iter().any(|&pid| alive(pid)) {
        if Instant::now() > deadline {
            bail!(
                "still alive: {:?}",
                pids.iter().filter(|&&pid| alive(pid)).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn failing_trainer_is_restarted_with_resume_until_max_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trainer = sh(
        "trainer",
        r#"echo "args: $*"; exit 3"#,
        &["--config", "c.toml"],
    );
    let (opts, lines) = options();
    let outcome = local::supervise(&launch_plan(dir.path(), vec![], trainer, 2), &opts)?;
    assert_eq!(
        outcome.end,
        RunEnd::GaveUp {
            component: "trainer".into(),
            reason: "exit code 3".into()
        }
    );
    assert_eq!(outcome.restarts, 2);
    let args: Vec<String> = texts(&lines)
        .into_iter()
        .filter(|line| line.starts_with("[trainer] args:"))
        .collect();
    assert_eq!(
        args,
        [
            "[trainer] args: --config c.toml",
            "[trainer] args: --config c.toml --resume",
            "[trainer] args: --config c.toml --resume",
        ]
    );
    let log = RestartLog::load(dir.path())?;
    assert_eq!(log.restarts, 2);
    let actions: Vec<&str> = log.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["restart", "restart", "give_up"]);
    assert!(
        log.events
            .iter()
            .all(|e| e.component == "trainer" && e.reason == "exit code 3")
    );
    // Output is also kept in the run's log folder.
    let log_file = std::fs::read_to_string(dir.path().join("logs/trainer.log"))?;
    assert_eq!(log_file.matches("args:").count(), 3);
    Ok(())
}

#[test]
fn trainer_that_recovers_finishes_and_restarts_accumulate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Fails on the first start only: the marker file survives the restart.
    let script = r#"if [ -e "$1/crashed" ]; then echo "resumed: $2"; exit 0; fi; touch "$1/crashed"; exit 1"#;
    let run_dir = dir.path().to_str().context("utf-8 temp dir")?;
    let trainer = sh("trainer", script, &[run_dir]);
    let (opts, lines) = options();
    let outcome = local::supervise(&launch_plan(dir.path(), vec![], trainer, 3), &opts)?;
    assert_eq!(outcome.end, RunEnd::Finished);
    assert_eq!(outcome.restarts, 1);
    wait_for_line(&lines, "[trainer] resumed: --resume")?;
    // A second supervisor on the same run folder appends to restarts.json.
    std::fs::remove_file(dir.path().join("crashed"))?;
    let trainer = sh("trainer", script, &[run_dir]);
    local::supervise(&launch_plan(dir.path(), vec![], trainer, 3), &opts)?;
    assert_eq!(RestartLog::load(dir.path())?.restarts, 2);
    Ok(())
}

#[test]
fn mpi_tagged_output_is_prefixed_by_rank() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut trainer = sh(
        "trainer",
        r#"echo "[1,0]<stdout>:step 1"; echo "[1,1]<stderr>:warning" >&2; echo "mpirun: done""#,
        &[],
    );
    trainer.output = OutputFormat::MpiTagged;
    let (opts, lines) = options();
    let outcome = local::supervise(&launch_plan(dir.path(), vec![], trainer, 0), &opts)?;
    assert_eq!(outcome.end, RunEnd::Finished);
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.contains(&(LogStream::Stdout, "[rank0] step 1".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(LogStream::Stderr, "[rank1] warning".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(LogStream::Stdout, "[trainer] mpirun: done".into())),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn real_mpirun_output_is_prefixed_by_rank() -> Result<()> {
    let Some(mpirun) = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
    else {
        eprintln!("mpirun not installed: skipped");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let spec = JobSpec::from_toml_str(
        r#"
name = "mpi"
output = "out"
[trainer]
ranks = 2
config = "train.toml"
[data]
manifest = "data"
"#,
        "test",
    )?;
    let (mut opts, lines) = options();
    opts.mpirun = mpirun;
    // `sh -c 'echo rank-$OMPI_COMM_WORLD_RANK' train --config ...` stands in for `edkd train`.
    let mut plan = local::plan(&spec, Path::new("sh"), &opts);
    let edkd_at = plan
        .trainer
        .args
        .iter()
        .position(|arg| arg == "sh")
        .context("edkd arg")?;
    plan.trainer.args.splice(
        edkd_at + 1..edkd_at + 1,
        ["-c".into(), "echo hello from $OMPI_COMM_WORLD_RANK".into()],
    );
    plan.run_dir = dir.path().to_owned();
    let outcome = local::supervise(&plan, &opts)?;
    assert_eq!(outcome.end, RunEnd::Finished, "{:?}", texts(&lines));
    let lines = texts(&lines);
    assert!(
        lines.contains(&"[rank0] hello from 0".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"[rank1] hello from 1".to_owned()),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn stop_kills_whole_process_groups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The shell ignores SIGTERM (and so does its background child), so only the SIGKILL
    // after the grace period ends them; the child is a grandchild of the supervisor.
    let trainer = sh(
        "trainer",
        r#"trap '' TERM; sleep 1000 & echo "pids $$ $!"; wait"#,
        &[],
    );
    let (mut opts, lines) = options();
    opts.stop_grace = Duration::from_millis(300);
    let stop = StopHandle::new();
    opts.stop = stop.clone();
    let plan = launch_plan(dir.path(), vec![], trainer, 5);
    let supervisor = std::thread::spawn(move || local::supervise(&plan, &opts));
    let line = wait_for_line(&lines, "pids ")?;
    let pids: Vec<i32> = line
        .rsplit("pids ")
        .next()
        .context("pids")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| alive(pid)));
    let stopped_at = Instant::now();
    stop.stop();
    let outcome = supervisor.join().expect("supervisor thread")?;
    assert_eq!(outcome.end, RunEnd::Stopped);
    assert_eq!(outcome.restarts, 0);
    assert!(stopped_at.elapsed() >= Duration::from_millis(300));
    wait_dead(&pids)?;
    Ok(())
}

#[test]
fn teachers_become_healthy_before_the_trainer_starts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let teachers = vec![
        stand_in("teacher0", ports::free_port(), 300, None),
        stand_in("teacher1", ports::free_port(), 600, None),
    ];
    let trainer = sh("trainer", "echo trained", &[]);
    let (opts, lines) = options();
    let outcome = local::supervise(&launch_plan(dir.path(), teachers, trainer, 0), &opts)?;
    assert_eq!(outcome.end, RunEnd::Finished);
    let lines = texts(&lines);
    let position = |needle: &str| {
        lines
            .iter()
            .position(|line| line.contains(needle))
            .with_context(|| format!("no {needle:?} in {lines:?}"))
    };
    assert!(position("[teacher1] serving")? < position("[launcher] all teachers are SERVING")?);
    assert!(position("[teacher0] serving")? < position("[trainer] trained")?);
    Ok(())
}

#[test]
fn dead_teacher_restarts_everything() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let teachers = vec![stand_in("teacher0", ports::free_port(), 0, Some(800))];
    let trainer = sh("trainer", r#"echo "started $$ $*"; sleep 1000"#, &[]);
    let (opts, lines) = options();
    let outcome = local::supervise(&launch_plan(dir.path(), teachers, trainer, 1), &opts)?;
    assert_eq!(
        outcome.end,
        RunEnd::GaveUp {
            component: "teacher0".into(),
            reason: format!("exit code {STAND_IN_EXIT_CODE}")
        }
    );
    let starts: Vec<String> = texts(&lines)
        .into_iter()
        .filter(|line| line.starts_with("[trainer] started"))
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1].ends_with(" --resume"), "{starts:?}");
    // Each trainer was stopped when its teacher died.
    let pids: Vec<i32> = starts
        .iter()
        .map(|line| {
            line.split_whitespace()
                .nth(2)
                .context("pid")?
                .parse()
                .context("pid")
        })
        .collect::<Result<_>>()?;
    wait_dead(&pids)?;
    Ok(())
}

#[test]
fn teacher_that_never_serves_times_out_with_its_log_tail() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = ports::free_port();
    let teacher = TeacherLaunch {
        process: sh(
            "teacher0",
            r#"echo "loading weights pid $$"; sleep 1000"#,
            &[],
        ),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    };
    let (mut opts, lines) = options();
    opts.health_timeout = Duration::from_secs(1);
    let trainer = sh("trainer", "echo never", &[]);
    let error = local::supervise(&launch_plan(dir.path(), vec![teacher], trainer, 3), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("teacher0") && error.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(error.contains("was not SERVING after 1s"), "{error}");
    assert!(error.contains("loading weights"), "{error}");
    assert!(!texts(&lines).iter().any(|line| line.contains("never")));
    let pid: i32 = wait_for_line(&lines, "loading weights pid ")?
        .rsplit(' ')
        .next()
        .context("pid")?
        .parse()?;
    wait_dead(&[pid])?;
    Ok(())
}

#[test]
fn teacher_that_exits_at_startup_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let teacher = TeacherLaunch {
        process: sh(
            "teacher0",
            "echo 'no config.json in models/x' >&2; exit 2",
            &[],
        ),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, ports::free_port())),
    };
    let (opts, _) = options();
    let trainer = sh("trainer", "true", &[]);
    let error = local::supervise(&launch_plan(dir.path(), vec![teacher], trainer, 3), &opts)
        .unwrap_err()
        .to_string();
    assert!(error.contains("exited (exit code 2)"), "{error}");
    assert!(error.contains("no config.json in models/x"), "{error}");
    Ok(())
}

#[test]
fn busy_teacher_port_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let (opts, _) = options();
    let teachers = vec![stand_in("teacher0", port, 0, None)];
    let error = local::supervise(
        &launch_plan(dir.path(), teachers, sh("trainer", "true", &[]), 0),
        &opts,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("teacher.base_port") && error.contains(&port.to_string()),
        "{error}"
    );
    Ok(())
}

#[test]
fn plan_builds_the_documented_commands() -> Result<()> {
    let spec = JobSpec::from_toml_str(
        r#"
name = "p"
output = "runs/p"
max_restarts = 4
[teacher]
model = "models/t"
replicas = 2
devices = ["cuda:0", "cuda:1"]
dtype = "f16"
base_port = 6000
[trainer]
ranks = 3
config = "train.toml"
extra_args = ["--seed", "1"]
[data]
manifest = "data"
"#,
        "test",
    )?;
    // Three CPU ranks share 6 cores (GPU teachers are left alone): 2 threads each.
    let opts = LocalOptions {
        resume: true,
        cores: 6,
        ..LocalOptions::default()
    };
    let plan = local::plan(&spec, Path::new("/opt/edkd"), &opts);
    assert_eq!(plan.teachers.len(), 2);
    assert_eq!(plan.teachers[1].addr.to_string(), "127.0.0.1:6001");
    assert_eq!(plan.teachers[1].process.program, PathBuf::from("/opt/edkd"));
    assert_eq!(
        plan.teachers[1].process.args.join(" "),
        "teacher serve --model models/t --device cuda:1 --dtype f16 --listen 127.0.0.1:6001"
    );
    assert_eq!(plan.trainer.program, PathBuf::from("mpirun"));
    assert_eq!(
        plan.trainer.args.join(" "),
        "--allow-run-as-root --oversubscribe -np 3 --tag-output /opt/edkd train \
         --config train.toml --out runs/p --teacher-addr 127.0.0.1:6000,127.0.0.1:6001 \
         --set threads=2 --seed 1"
    );
    assert_eq!(plan.trainer.output, OutputFormat::MpiTagged);
    assert!(plan.resume_first);
    assert_eq!(plan.max_restarts, 4);
    assert_eq!(plan.run_dir, PathBuf::from("runs/p"));
    Ok(())
}

#[test]
fn run_checks_inputs_before_starting_anything() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text = format!(
        "name = \"r\"\noutput = \"{0}/out\"\n[trainer]\nconfig = \"{0}/train.toml\"\n[data]\nmanifest = \"{0}/data\"\n",
        dir.path().display()
    );
    let spec = JobSpec::from_toml_str(&text, "test")?;
    let (opts, _) = options();
    let error = local::run(&spec, Path::new("/bin/sh"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("data.manifest") && error.contains("manifest.json"),
        "{error}"
    );
    assert!(!dir.path().join("out").exists());
    Ok(())
}
