//! Runs the rendered sbatch script under bash with stand-ins for `srun`, `scontrol` and
//! `edkd` on PATH, to check its restart logic rather than just its text.

#[path = "../../test-support/ports.rs"]
mod ports;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};
use edkd_cluster::restarts::RestartLog;
use edkd_cluster::{JobSpec, slurm};

const SLURM_JOB_ID: &str = "4242";

/// `srun` drops its `--options` and runs the command; `scontrol` knows one host and logs
/// requeues; `edkd train` logs its arguments and sleeps `$FAKE_TRAIN_SLEEP` seconds or
/// exits with `$FAKE_TRAIN_EXIT`; `edkd teacher serve` listens with python's http.server and,
/// with `$FAKE_TEACHER_DIES`, quits after a second.
const STAND_INS: &[(&str, &str)] = &[
    (
        "srun",
        "#!/bin/bash\nwhile [[ \"$1\" == --* ]]; do shift; done\nexec \"$@\"\n",
    ),
    (
        "scontrol",
        "#!/bin/bash\ncase \"$1\" in\n  show) echo 127.0.0.1 ;;\n  requeue) echo \"requeue $2\" >>\"$FAKE_DIR/requeues\" ;;\nesac\n",
    ),
    (
        "edkd",
        r#"#!/bin/bash
case "$1" in
  train)
    echo "$*" >>"$FAKE_DIR/train-args"
    # exec, so that a SIGTERM from the script ends the sleep at once.
    if [[ -n "${FAKE_TRAIN_SLEEP:-}" ]]; then exec sleep "$FAKE_TRAIN_SLEEP"; fi
    exit "${FAKE_TRAIN_EXIT:-0}" ;;
  teacher)
    listen="${!#}"
    port="${listen##*:}"
    if [[ -n "${FAKE_TEACHER_DIES:-}" ]]; then
      python3 -m http.server "$port" --bind 127.0.0.1 2>/dev/null &
      sleep 1
      kill $!
      exit 3
    fi
    exec python3 -m http.server "$port" --bind 127.0.0.1 2>/dev/null ;;
esac
"#,
    ),
];

struct Cluster {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Cluster {
    fn new(teacher_port: Option<u16>, max_restarts: u32) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        for (name, text) in STAND_INS {
            let path = bin.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("manifest.json"), "{}")?;
        let teacher = teacher_port
            .map(|port| format!("[teacher]\nmodel = \"m\"\nbase_port = {port}\n"))
            .unwrap_or_default();
        let root = dir.path().display();
        let spec = JobSpec::from_toml_str(
            &format!(
                r#"
name = "fake"
output = "{root}/run"
max_restarts = {max_restarts}
{teacher}
[trainer]
ranks = 2
config = "train.toml"
[data]
manifest = "{root}/data"
[slurm]
partition = "p"
time = "1:00:00"
edkd = "{root}/bin/edkd"
teacher_timeout_s = 20
"#
            ),
            "test",
        )?;
        // Poll fast: the stand-ins finish in milliseconds.
        let script = slurm::render(&spec)?
            .replace("\nPOLL_S=10\n", "\nPOLL_S=0.1\n")
            .replace("\nHEALTH_POLL_S=5\n", "\nHEALTH_POLL_S=0.1\n");
        let script_path = dir.path().join("job.sbatch");
        std::fs::write(&script_path, script)?;
        Ok(Cluster {
            dir,
            script: script_path,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, restart_count: u32, env: &[(&str, &str)]) -> Result<Output> {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .arg(&self.script)
            .env("PATH", path)
            .env("FAKE_DIR", self.dir.path())
            .env("SLURM_JOB_ID", SLURM_JOB_ID)
            .env("SLURM_JOB_NODELIST", "node1")
            .env("SLURM_RESTART_COUNT", restart_count.to_string())
            .envs(env.iter().copied())
            .output()?;
        Ok(output)
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn success_runs_the_trainer_once_without_resume() -> Result<()> {
    let cluster = Cluster::new(None, 2)?;
    let output = cluster.run(0, &[])?;
    ensure!(output.status.success(), "{}", describe(&output));
    let args = cluster.lines("train-args");
    let out = cluster.path("run");
    assert_eq!(
        args,
        [format!("train --config train.toml --out {}", out.display())]
    );
    assert!(cluster.lines("requeues").is_empty());
    assert!(!out.join("restarts.json").exists());
    Ok(())
}

#[test]
fn failure_requeues_and_records_until_max_restarts() -> Result<()> {
    let cluster = Cluster::new(None, 2)?;
    let run_dir = cluster.path("run");
    // Slurm bumps SLURM_RESTART_COUNT on every requeue of the same job id.
    for restart_count in 0..2 {
        let output = cluster.run(restart_count, &[("FAKE_TRAIN_EXIT", "5")])?;
        ensure!(output.status.success(), "{}", describe(&output));
        let log = RestartLog::load(&run_dir)?;
        assert_eq!(log.restarts, restart_count + 1);
        let event = log.events.last().context("an event")?;
        assert_eq!(
            (event.component.as_str(), event.reason.as_str()),
            ("trainer", "exit code 5")
        );
        assert_eq!(event.slurm_job_id.as_deref(), Some(SLURM_JOB_ID));
    }
    assert_eq!(
        cluster.lines("requeues"),
        [
            format!("requeue {SLURM_JOB_ID}"),
            format!("requeue {SLURM_JOB_ID}")
        ]
    );
    // The third failure exhausts max_restarts = 2.
    let output = cluster.run(2, &[("FAKE_TRAIN_EXIT", "5")])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("giving up after 2 restarts"));
    let log = RestartLog::load(&run_dir)?;
    assert_eq!(log.restarts, 2);
    assert_eq!(
        log.events.last().map(|e| e.action.as_str()),
        Some("give_up")
    );
    // Requeued runs resume.
    let args = cluster.lines("train-args");
    assert_eq!(args.len(), 3);
    assert!(
        !args[0].ends_with("--resume") && args[1].ends_with(" --resume"),
        "{args:?}"
    );
    Ok(())
}

fn python3() -> bool {
    Command::new("python3").arg("--version").output().is_ok()
}

#[test]
fn trainer_waits_for_teachers_and_gets_their_address() -> Result<()> {
    if !python3() {
        eprintln!("python3 not installed: skipped");
        return Ok(());
    }
    let port = ports::free_port();
    let cluster = Cluster::new(Some(port), 1)?;
    let output = cluster.run(0, &[])?;
    ensure!(output.status.success(), "{}", describe(&output));
    let args = cluster.lines("train-args");
    assert_eq!(args.len(), 1);
    assert!(
        args[0].ends_with(&format!("--teacher-addr 127.0.0.1:{port}")),
        "{args:?}"
    );
    // The teacher step is stopped when training ends.
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "teacher still listening"
    );
    Ok(())
}

#[test]
fn dead_teacher_requeues_the_job() -> Result<()> {
    if !python3() {
        eprintln!("python3 not installed: skipped");
        return Ok(());
    }
    let cluster = Cluster::new(Some(ports::free_port()), 1)?;
    let output = cluster.run(0, &[("FAKE_TEACHER_DIES", "1"), ("FAKE_TRAIN_SLEEP", "30")])?;
    ensure!(output.status.success(), "{}", describe(&output));
    let log = RestartLog::load(&cluster.path("run"))?;
    let event = log.events.last().context("an event")?;
    assert_eq!(event.component, "teacher");
    assert_eq!(log.restarts, 1);
    assert_eq!(cluster.lines("requeues").len(), 1);
    Ok(())
}

#[test]
fn missing_manifest_fails_before_starting_anything() -> Result<()> {
    let cluster = Cluster::new(None, 2)?;
    std::fs::remove_file(cluster.path("data/manifest.json"))?;
    let output = cluster.run(0, &[])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("manifest.json not found"));
    assert!(cluster.lines("train-args").is_empty());
    Ok(())
}
