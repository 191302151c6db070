//! Local backend: runs teachers and MPI trainer ranks on this machine and keeps them running.
//!
//! [`plan`] turns a [`JobSpec`] into the exact commands (a pure function); [`supervise`] runs
//! any [`LaunchPlan`], so tests can supervise stand-in commands; [`run`] does both.
//!
//! The supervisor starts every teacher replica (`edkd teacher serve` on `127.0.0.1`, ports
//! from `base_port`), waits until each answers the gRPC health check with SERVING, then runs
//! `mpirun ... edkd train ...`. Every child runs in its own process group, and its output
//! lines reach the [`LogSink`] prefixed with `[teacherN]` or `[rankN]` (and are appended to
//! `<output>/logs/<label>.log`). When the trainer fails or a teacher dies, all process groups
//! are stopped, the failure is recorded in `<output>/restarts.json`, and everything starts
//! again with `--resume`, up to `max_restarts` times. SIGINT/SIGTERM to the launcher (or
//! [`StopHandle::stop`]) stops every child group: SIGTERM, then SIGKILL after a grace period.

mod health;
mod output;
mod supervisor;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use health::check as health_check;
pub use output::{
    LogSink, LogStream, OutputFormat, TAIL_LINES, parse_mpi_tag, prefix_line, stdio_sink,
};
pub use supervisor::supervise;

use crate::error::{Error, Result};
use crate::spec::JobSpec;

/// Default for [`LocalOptions::health_timeout`]: loading a 7B teacher from disk is slow.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(900);
/// Default for [`LocalOptions::stop_grace`].
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Default for [`LocalOptions::restart_delay`].
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// The trainer flag appended on restarts.
pub const RESUME_FLAG: &str = "--resume";

/// One child process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Log prefix and log file name, e.g. `teacher0` or `trainer`.
    pub label: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set on top of the launcher's own.
    pub env: Vec<(String, String)>,
    /// How its output lines are tagged.
    pub output: OutputFormat,
}

/// A teacher replica and the address its health is checked on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherLaunch {
    /// The server process.
    pub process: ProcessSpec,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
}

/// Everything [`supervise`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Teacher replicas, started first and health-checked.
    pub teachers: Vec<TeacherLaunch>,
    /// The trainer (usually `mpirun ... edkd train ...`).
    pub trainer: ProcessSpec,
    /// Appended to the trainer's arguments on restarts (and on the first start when
    /// `resume_first`).
    pub resume_flag: String,
    /// Whether the first start resumes too.
    pub resume_first: bool,
    /// Restarts allowed before giving up.
    pub max_restarts: u32,
    /// Run folder: `restarts.json` and `logs/` go here.
    pub run_dir: PathBuf,
}

/// Stops a running supervisor from another thread or task; cheap to clone.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl Default for StopHandle {
    fn default() -> Self {
        StopHandle(Arc::new(watch::Sender::new(false)))
    }
}

impl StopHandle {
    /// A handle that has not been stopped.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Asks the supervisor to stop every child and return [`RunEnd::Stopped`].
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Knobs of the local backend.
#[derive(Clone)]
pub struct LocalOptions {
    /// The `mpirun` program.
    pub mpirun: PathBuf,
    /// Pass `--resume` on the first start too (continuing an earlier run).
    pub resume: bool,
    /// How long every teacher may take to become SERVING.
    pub health_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping children.
    pub stop_grace: Duration,
    /// Pause before a restart.
    pub restart_delay: Duration,
    /// Stop on SIGINT/SIGTERM to this process.
    pub handle_signals: bool,
    /// Stops the run from elsewhere.
    pub stop: StopHandle,
    /// Where prefixed output lines go.
    pub sink: LogSink,
    /// CPU cores shared by the CPU teacher replicas and CPU ranks (this machine's by
    /// default); see [`process_threads`].
    pub cores: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            mpirun: PathBuf::from("mpirun"),
            resume: false,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            restart_delay: DEFAULT_RESTART_DELAY,
            handle_signals: true,
            stop: StopHandle::new(),
            sink: stdio_sink(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// How a supervised run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The trainer exited with status 0.
    Finished,
    /// Stopped by a signal or [`StopHandle::stop`].
    Stopped,
    /// Still failing after `max_restarts` restarts.
    GaveUp {
        /// What failed last: `trainer` or `teacherN`.
        component: String,
        /// Why, e.g. `exit code 1`.
        reason: String,
    },
}

/// The result of [`run`] / [`supervise`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// How it ended.
    pub end: RunEnd,
    /// Restarts done by this supervisor.
    pub restarts: u32,
}

/// Splits `cores` between `parts` processes that compute at the same time: each gets
/// `cores / parts`, the first `cores % parts` one more, and none fewer than one (more
/// processes than cores oversubscribe by one thread each).
pub fn split_cores(cores: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| (cores / parts + usize::from(i < cores % parts)).max(1))
        .collect()
}

/// libtorch threads of each process of a local run: `(per teacher replica, per rank)`,
/// `None` where the process keeps libtorch's default (one thread per core). Explicit
/// `teacher.threads` / `trainer.threads_per_rank` win. Otherwise, when more than one
/// process computes on the CPU, the CPU ranks split the cores between themselves
/// (`cores / ranks` each: they step in lockstep) and each CPU replica gets its fair share
/// of all of them ([`split_cores`] over ranks and replicas, ranks first, so replicas get
/// the smaller shares). Teachers thus overlap the trainer's threads a little: in the
/// distillation loop a teacher computes mostly while the trainer waits or runs serial
/// code, and measured on 2 cores (`edkd bench train`) 1 teacher + 2 trainer threads beat
/// both 1 + 1 and 2 + 2. GPU replicas and ranks are left alone.
pub fn process_threads(spec: &JobSpec, cores: usize) -> (Vec<Option<u32>>, Option<u32>) {
    let cpu_ranks = if spec.trainer.devices_per_rank == 0 {
        spec.trainer.ranks as usize
    } else {
        0
    };
    let replicas: Vec<bool> = spec
        .teacher
        .iter()
        .flat_map(|t| (0..t.replicas).map(move |r| !t.device(r).is_cuda()))
        .collect();
    let cpu_teachers = replicas.iter().filter(|&&cpu| cpu).count();
    let parts = cpu_ranks + cpu_teachers;
    let split = parts > 1;
    let rank = match spec.trainer.threads_per_rank {
        Some(n) if cpu_ranks > 0 => Some(n),
        _ => (split && cpu_ranks > 0).then(|| (cores / cpu_ranks.max(1)).max(1) as u32),
    };
    let mut shares = split_cores(cores, parts).into_iter().skip(cpu_ranks);
    let explicit = spec.teacher.as_ref().and_then(|t| t.threads);
    let teachers = replicas
        .iter()
        .map(|&cpu| {
            let share = if cpu { shares.next() } else { None };
            match explicit {
                Some(n) if cpu => Some(n),
                _ => share.filter(|_| split).map(|n| n as u32),
            }
        })
        .collect();
    (teachers, rank)
}

/// The commands that run `spec` locally with the given `edkd` binary (pure: touches no
/// file). Teacher replica `i` listens on `127.0.0.1:(base_port + i)`; the trainer gets all
/// teacher addresses, comma-separated, in `--teacher-addr`.
pub fn plan(spec: &JobSpec, edkd: &Path, opts: &LocalOptions) -> LaunchPlan {
    let edkd_arg = edkd.to_string_lossy().into_owned();
    let (teacher_threads, rank_threads) = process_threads(spec, opts.cores);
    let teachers: Vec<TeacherLaunch> = spec
        .teacher
        .iter()
        .flat_map(|teacher| {
            let threads = &teacher_threads;
            (0..teacher.replicas).map(move |replica| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, teacher.port(replica)));
                let mut args: Vec<String> = [
                    "teacher",
                    "serve",
                    "--model",
                    &teacher.model.to_string_lossy(),
                    "--device",
                    &teacher.device(replica).to_string(),
                    "--dtype",
                    &teacher.dtype.to_string(),
                    "--listen",
                    &addr.to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                if let Some(n) = threads[replica as usize] {
                    args.extend(["--threads".into(), n.to_string()]);
                }
                TeacherLaunch {
                    process: ProcessSpec {
                        label: format!("teacher{replica}"),
                        program: edkd.to_owned(),
                        args,
                        env: Vec::new(),
                        output: OutputFormat::Plain,
                    },
                    addr,
                }
            })
        })
        .collect();
    let mut args: Vec<String> = [
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &spec.trainer.ranks.to_string(),
        "--tag-output",
        &edkd_arg,
        "train",
        "--config",
        &spec.trainer.config.to_string_lossy(),
        "--out",
        &spec.output.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    if !teachers.is_empty() {
        let addrs: Vec<String> = teachers.iter().map(|t| t.addr.to_string()).collect();
        args.push("--teacher-addr".into());
        args.push(addrs.join(","));
    }
    if let Some(n) = rank_threads {
        args.extend(["--set".into(), format!("threads={n}")]);
    }
    args.extend(spec.trainer.extra_args.iter().cloned());
    LaunchPlan {
        teachers,
        trainer: ProcessSpec {
            label: "trainer".into(),
            program: opts.mpirun.clone(),
            args,
            env: Vec::new(),
            output: OutputFormat::MpiTagged,
        },
        resume_flag: RESUME_FLAG.into(),
        resume_first: opts.resume,
        max_restarts: spec.max_restarts,
        run_dir: spec.output.clone(),
    }
}

/// Checks that the inputs of `spec` exist, creates the output folder, and supervises
/// [`plan`]`(spec, edkd, opts)` until it finishes, is stopped or gives up.
///
/// Blocks the calling thread (it runs its own single-threaded tokio runtime), so call it
/// outside any async runtime.
pub fn run(spec: &JobSpec, edkd: &Path, opts: &LocalOptions) -> Result<RunOutcome> {
    let manifest = spec.data.manifest.join("manifest.json");
    if !manifest.is_file() {
        return Err(Error::invalid(
            "data.manifest",
            format!("{} does not exist", manifest.display()),
        ));
    }
    if !spec.trainer.config.is_file() {
        return Err(Error::invalid(
            "trainer.config",
            format!("{} does not exist", spec.trainer.config.display()),
        ));
    }
    if let Some(teacher) = &spec.teacher
        && !teacher.model.is_dir()
    {
        return Err(Error::invalid(
            "teacher.model",
            format!("{} is not a folder", teacher.model.display()),
        ));
    }
    if !edkd.is_file() {
        return Err(Error::MissingTool {
            program: edkd.display().to_string(),
            hint: "pass the path of a built `edkd` binary".into(),
        });
    }
    std::fs::create_dir_all(&spec.output).map_err(|e| Error::io("creating", &spec.output, e))?;
    supervise(&plan(spec, edkd, opts), opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra_teacher: &str, trainer: &str) -> JobSpec {
        let text = format!(
            "name = \"t\"\noutput = \"out\"\n[teacher]\nmodel = \"m\"\n{extra_teacher}\n\
             [trainer]\nconfig = \"c.toml\"\n{trainer}\n[data]\nmanifest = \"d\"\n"
        );
        JobSpec::from_toml_str(&text, "test").unwrap()
    }

    #[test]
    fn cores_are_split_without_loss_and_never_to_zero() {
        assert_eq!(split_cores(2, 2), [1, 1]);
        assert_eq!(split_cores(16, 3), [6, 5, 5]);
        assert_eq!(split_cores(2, 3), [1, 1, 1]);
        assert_eq!(split_cores(8, 1), [8]);
        assert!(split_cores(4, 0).is_empty());
    }

    #[test]
    fn a_cpu_teacher_and_rank_share_the_cores_and_explicit_counts_win() {
        // One CPU replica and one CPU rank on 2 cores: the rank keeps both, the replica gets
        // its fair share, on the command lines.
        let s = spec("", "");
        assert_eq!(process_threads(&s, 2), (vec![Some(1)], Some(2)));
        let opts = LocalOptions {
            cores: 2,
            ..Default::default()
        };
        let p = plan(&s, Path::new("edkd"), &opts);
        let teacher = p.teachers[0].process.args.join(" ");
        assert!(teacher.ends_with("--threads 1"), "{teacher}");
        assert!(p.trainer.args.join(" ").contains("--set threads=2"));
        // Two CPU replicas and two ranks: the ranks split the cores, each replica gets a
        // quarter (the smaller shares of 7).
        let s = spec("replicas = 2", "ranks = 2");
        assert_eq!(process_threads(&s, 7), (vec![Some(2), Some(1)], Some(3)));
        assert_eq!(process_threads(&s, 16), (vec![Some(4), Some(4)], Some(8)));
        // Explicit counts are passed as given.
        let s = spec("threads = 3", "threads_per_rank = 5");
        assert_eq!(process_threads(&s, 2), (vec![Some(3)], Some(5)));
        // GPU replicas are left alone; a lone CPU rank keeps libtorch's default.
        let s = spec("devices = [\"cuda:0\"]", "");
        assert_eq!(process_threads(&s, 8), (vec![None], None));
        let p = plan(&s, Path::new("edkd"), &opts);
        assert!(!p.trainer.args.iter().any(|a| a.starts_with("threads=")));
    }

    #[test]
    fn absurd_thread_counts_are_refused_by_name() {
        let text = "name = \"t\"\noutput = \"o\"\n[trainer]\nconfig = \"c\"\n\
                    threads_per_rank = 0\n[data]\nmanifest = \"d\"\n";
        let err = JobSpec::from_toml_str(text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trainer.threads_per_rank"), "{err}");
    }
}
