//! Runs a [`LaunchPlan`]: start, health-check, watch, stop and restart process groups.

use std::fs::{File, OpenOptions};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::output::{LogStream, Pump, Tail};
use super::{LaunchPlan, LocalOptions, ProcessSpec, RunEnd, RunOutcome, health};
use crate::error::{Error, Result};
use crate::restarts::{Action, RestartLog};

/// Pause between health check rounds.
const HEALTH_POLL: Duration = Duration::from_millis(500);
/// Pause between checks whether stopped process groups are gone.
const REAP_POLL: Duration = Duration::from_millis(20);
/// How long to wait for output pumps to drain after their process group is gone.
const PUMP_DRAIN: Duration = Duration::from_secs(2);
/// How long to wait for a group to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs `plan` until the trainer finishes, the run is stopped, or `max_restarts` restarts
/// have failed too. Errors are problems that a restart cannot fix: a child that cannot be
/// spawned, a teacher that never becomes healthy, a port already in use, an unwritable run
/// folder.
///
/// Blocks the calling thread (it runs its own single-threaded tokio runtime), so call it
/// outside any async runtime.
pub fn supervise(plan: &LaunchPlan, opts: &LocalOptions) -> Result<RunOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime for", &plan.run_dir, e))?;
    runtime.block_on(Supervisor { plan, opts }.run())
}

/// Which child of an attempt exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Teacher(usize),
    Trainer,
}

/// How one attempt ended, short of an error.
enum AttemptEnd {
    Finished,
    Stopped,
    Failed { component: String, reason: String },
}

struct Supervisor<'a> {
    plan: &'a LaunchPlan,
    opts: &'a LocalOptions,
}

impl Supervisor<'_> {
    fn say(&self, line: &str) {
        (self.opts.sink)(LogStream::Stderr, &format!("[launcher] {line}"));
    }

    async fn run(self) -> Result<RunOutcome> {
        let logs = self.plan.run_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io("creating", &logs, e))?;
        let mut restart_log = RestartLog::load(&self.plan.run_dir)?;
        let signals = if self.opts.handle_signals {
            Some(tokio::spawn(stop_on_signal(
                Signals::install()?,
                self.opts.stop.clone(),
            )))
        } else {
            None
        };
        let mut restarts = 0;
        let outcome = loop {
            if self.opts.stop.is_stopped() {
                break Ok(RunEnd::Stopped);
            }
            let resume = self.plan.resume_first || restarts > 0;
            let mut attempt = Attempt::default();
            let end = self.attempt(&mut attempt, resume).await;
            attempt.shutdown(self.opts.stop_grace).await;
            let (component, reason) = match end {
                Err(e) => break Err(e),
                Ok(AttemptEnd::Finished) => break Ok(RunEnd::Finished),
                Ok(AttemptEnd::Stopped) => break Ok(RunEnd::Stopped),
                Ok(AttemptEnd::Failed { component, reason }) => (component, reason),
            };
            if restarts >= self.plan.max_restarts {
                self.say(&format!(
                    "{component} failed ({reason}); giving up after {restarts} restarts"
                ));
                restart_log.record(&component, &reason, Action::GiveUp);
                restart_log.save(&self.plan.run_dir)?;
                break Ok(RunEnd::GaveUp { component, reason });
            }
            restarts += 1;
            restart_log.record(&component, &reason, Action::Restart);
            restart_log.save(&self.plan.run_dir)?;
            self.say(&format!(
                "{component} failed ({reason}); restart {restarts} of {} with {}",
                self.plan.max_restarts, self.plan.resume_flag
            ));
            let mut stop = self.opts.stop.subscribe();
            tokio::select! {
                () = sleep(self.opts.restart_delay) => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        };
        if let Some(signals) = signals {
            signals.abort();
        }
        outcome.map(|end| RunOutcome { end, restarts })
    }

    async fn attempt(&self, attempt: &mut Attempt, resume: bool) -> Result<AttemptEnd> {
        let mut stop = self.opts.stop.subscribe();
        for (index, teacher) in self.plan.teachers.iter().enumerate() {
            ensure_port_free(teacher.addr, &teacher.process.label)?;
            attempt.spawn(self, &teacher.process, &[], Who::Teacher(index))?;
        }
        if !self.plan.teachers.is_empty() {
            let health = tokio::select! {
                ready = self.wait_healthy() => ready,
                exit = attempt.exits.recv() => {
                    let (who, status) = exit.expect("the attempt holds a sender");
                    Err((who, format!("exited ({})", describe(status))))
                }
                _ = stop.wait_for(|stopped| *stopped) => return Ok(AttemptEnd::Stopped),
            };
            if let Err((who, reason)) = health {
                return Err(self.startup_error(attempt, who, &reason));
            }
            self.say("all teachers are SERVING; starting the trainer");
        }
        let resume_args: &[&str] = if resume {
            &[self.plan.resume_flag.as_str()]
        } else {
            &[]
        };
        attempt.spawn(self, &self.plan.trainer, resume_args, Who::Trainer)?;
        tokio::select! {
            exit = attempt.exits.recv() => {
                let (who, status) = exit.expect("the attempt holds a sender");
                Ok(match who {
                    Who::Trainer if status.success() => AttemptEnd::Finished,
                    Who::Trainer => AttemptEnd::Failed {
                        component: self.plan.trainer.label.clone(),
                        reason: describe(status),
                    },
                    Who::Teacher(index) => AttemptEnd::Failed {
                        component: self.plan.teachers[index].process.label.clone(),
                        reason: describe(status),
                    },
                })
            }
            _ = stop.wait_for(|stopped| *stopped) => Ok(AttemptEnd::Stopped),
        }
    }

    /// Polls every teacher until all are SERVING; after `health_timeout` returns the first
    /// replica that is not, and why.
    async fn wait_healthy(&self) -> Result<(), (Who, String)> {
        let deadline = Instant::now() + self.opts.health_timeout;
        let mut last_error: Vec<Option<String>> =
            vec![Some("not checked yet".into()); self.plan.teachers.len()];
        loop {
            for (index, teacher) in self.plan.teachers.iter().enumerate() {
                if last_error[index].is_some() {
                    last_error[index] = health::check(teacher.addr).await.err();
                }
            }
            let Some(index) = last_error.iter().position(Option::is_some) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let reason = format!(
                    "was not SERVING after {:?} (last check: {})",
                    self.opts.health_timeout,
                    last_error[index].as_deref().unwrap_or_default()
                );
                return Err((Who::Teacher(index), reason));
            }
            sleep(HEALTH_POLL).await;
        }
    }

    fn startup_error(&self, attempt: &Attempt, who: Who, reason: &str) -> Error {
        let (label, addr) = match who {
            Who::Teacher(index) => {
                let teacher = &self.plan.teachers[index];
                (teacher.process.label.clone(), teacher.addr.to_string())
            }
            Who::Trainer => (self.plan.trainer.label.clone(), "-".into()),
        };
        Error::TeacherStartup {
            log_tail: attempt.tail_of(&label),
            label,
            addr,
            reason: reason.to_owned(),
        }
    }
}

/// The children of one attempt.
struct Attempt {
    exits_tx: mpsc::UnboundedSender<(Who, ExitStatus)>,
    exits: mpsc::UnboundedReceiver<(Who, ExitStatus)>,
    children: Vec<Child>,
}

impl Default for Attempt {
    fn default() -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Attempt {
            exits_tx,
            exits,
            children: Vec::new(),
        }
    }
}

struct Child {
    label: String,
    pgid: libc::pid_t,
    tail: Arc<Mutex<Tail>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Attempt {
    /// Starts `spec` with `extra` arguments in a new process group; its exit is reported on
    /// `self.exits` and its output pumped to the sink.
    fn spawn(
        &mut self,
        supervisor: &Supervisor<'_>,
        spec: &ProcessSpec,
        extra: &[&str],
        who: Who,
    ) -> Result<()> {
        let mut command = tokio::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .args(extra)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // If the launcher dies without cleaning up (SIGKILL), its children follow.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let spawn_error = |source| Error::Spawn {
            label: spec.label.clone(),
            program: spec.program.display().to_string(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let pgid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
        let log_path = supervisor
            .plan
            .run_dir
            .join("logs")
            .join(format!("{}.log", spec.label));
        let log_file = open_log(&log_path).map(|file| Arc::new(Mutex::new(file)));
        if log_file.is_none() {
            supervisor.say(&format!("cannot append to {}", log_path.display()));
        }
        let pump = Pump {
            label: spec.label.clone(),
            format: spec.output,
            sink: supervisor.opts.sink.clone(),
            tail: Arc::default(),
            log_file,
        };
        let tail = pump.tail.clone();
        let mut tasks = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            tasks.push(tokio::spawn(pump.clone().run(stdout, LogStream::Stdout)));
        }
        if let Some(stderr) = child.stderr.take() {
            tasks.push(tokio::spawn(pump.run(stderr, LogStream::Stderr)));
        }
        let exits = self.exits_tx.clone();
        tasks.push(tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = exits.send((who, status));
            }
        }));
        self.children.push(Child {
            label: spec.label.clone(),
            pgid,
            tail,
            tasks,
        });
        Ok(())
    }

    fn tail_of(&self, label: &str) -> String {
        self.children
            .iter()
            .find(|child| child.label == label)
            .and_then(|child| child.tail.lock().ok().map(|tail| tail.text()))
            .unwrap_or_else(|| "(no output)".to_owned())
    }

    /// Stops every process group: SIGTERM, SIGKILL after `grace`, then drains the output.
    async fn shutdown(&mut self, grace: Duration) {
        for child in &self.children {
            signal_group(child.pgid, libc::SIGTERM);
        }
        if !self.wait_groups_gone(grace).await {
            for child in &self.children {
                signal_group(child.pgid, libc::SIGKILL);
            }
            self.wait_groups_gone(KILL_WAIT).await;
        }
        for child in &mut self.children {
            for task in child.tasks.drain(..) {
                // Pumps end at EOF; a grandchild that left the group may hold the pipe.
                let _ = tokio::time::timeout(PUMP_DRAIN, task).await;
            }
        }
    }

    async fn wait_groups_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.children.iter().all(|child| !group_exists(child.pgid)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(REAP_POLL).await;
        }
    }
}

fn open_log(path: &std::path::Path) -> Option<File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; ESRCH (group gone) is fine.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process (a zombie leader counts until it is reaped) is left in the group.
fn group_exists(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let result = unsafe { libc::kill(-pgid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// "exit code 3" or "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// A stale server on a teacher port would answer our health checks in its place.
fn ensure_port_free(addr: std::net::SocketAddr, label: &str) -> Result<()> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let in_use = |e: std::io::Error| {
        Error::invalid(
            "teacher.base_port",
            format!("{addr} (for {label}) is not free: {e}"),
        )
    };
    let socket = socket.map_err(in_use)?;
    // Like the server, ignore TIME_WAIT connections of a previous attempt.
    socket.set_reuseaddr(true).map_err(in_use)?;
    socket.bind(addr).map_err(in_use)?;
    socket.listen(1).map_err(in_use)?;
    Ok(())
}

/// SIGINT and SIGTERM handlers, installed before any child starts so no signal is missed.
/// They stay installed for the life of the process (tokio cannot uninstall them).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| {
            signal(kind).map_err(|e| Error::Io {
                action: "installing a signal handler for",
                path: "the launcher".into(),
                source: e,
            })
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }
}

async fn stop_on_signal(mut signals: Signals, stop: super::StopHandle) {
    tokio::select! {
        _ = signals.interrupt.recv() => {}
        _ = signals.terminate.recv() => {}
    }
    stop.stop();
}
