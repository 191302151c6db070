//! SIGINT to the launcher stops every child. Its own test binary, because the supervisor's
//! signal handlers stay installed for the life of the process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edkd_cluster::local::{self, LaunchPlan, LocalOptions, OutputFormat, ProcessSpec, RunEnd};

#[test]
fn sigint_stops_all_children() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink_lines = lines.clone();
    let opts = LocalOptions {
        handle_signals: true,
        stop_grace: Duration::from_secs(2),
        sink: Arc::new(move |_, line| sink_lines.lock().unwrap().push(line.to_owned())),
        ..LocalOptions::default()
    };
    let plan = LaunchPlan {
        teachers: Vec::new(),
        trainer: ProcessSpec {
            label: "trainer".into(),
            program: PathBuf::from("sh"),
            args: ["-c", r#"sleep 1000 & echo "pids $$ $!"; wait"#]
                .map(str::to_owned)
                .to_vec(),
            env: Vec::new(),
            output: OutputFormat::Plain,
        },
        resume_flag: "--resume".into(),
        resume_first: false,
        max_restarts: 3,
        run_dir: dir.path().to_owned(),
    };
    let supervisor = std::thread::spawn(move || local::supervise(&plan, &opts));
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains("pids ")) {
            break line.clone();
        }
        if Instant::now() > deadline {
            bail!("the trainer never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pids: Vec<i32> = line
        .rsplit("pids ")
        .next()
        .context("pids")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // SAFETY: signalling our own process, whose SIGINT handler the supervisor installed.
    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
    let outcome = supervisor.join().expect("supervisor thread")?;
    assert_eq!(outcome.end, RunEnd::Stopped);
    assert_eq!(outcome.restarts, 0, "a stop is not a failure");
    let deadline = Instant::now() + Duration::from_secs(30); // generous: a loaded CI machine reaps slowly
    let alive = |pid: i32| {
        // SAFETY: signal 0 only checks existence; a zombie's /proc state is Z.
        let exists = unsafe { libc::kill(pid, 0) } == 0;
        exists
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    while pids.iter().any(|&pid| alive(pid)) {
        if Instant::now() > deadline {
            bail!("children {pids:?} outlived the launcher's SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
