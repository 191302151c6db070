//! Peak memory of a child process: its kernel high-water mark (`ru_maxrss` from `wait4`),
//! with the child killed as soon as `/proc/PID/status` shows it past a cap, so a regression
//! fails the test instead of exhausting the machine.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a measured child did.
#[derive(Debug)]
pub struct Measured {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Peak resident set, KiB (the kernel's high-water mark: includes the file-backed
    /// pages of libtorch's shared libraries, ~0.5 GB).
    pub peak_kib: u64,
    /// Largest anonymous resident set seen (sampled every 5 ms), KiB: the process's own
    /// allocations, where data-dependent memory shows.
    pub peak_anon_kib: u64,
    /// Killed for passing the cap (or the time limit).
    pub killed: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `VmHWM` (peak resident set) of a running process, KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// `RssAnon` (anonymous resident memory now) of a running process, KiB.
pub fn anon_kib(pid: u32) -> Option<u64> {
    status_field(pid, "RssAnon:")
}

/// `VmRSS` (resident set now) of a running process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Runs `cmd` to its end and returns its peak memory; kills it past `cap_kib` or `limit`.
// The child is reaped by `wait4`, which also reports its peak; `Child::wait` cannot.
#[allow(clippy::zombie_processes)]
pub fn run_measured(mut cmd: Command, cap_kib: u64, limit: Duration) -> Measured {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut killed = false;
    let mut peak_anon_kib = 0;
    let (status, peak_kib) = loop {
        let mut status = 0;
        // SAFETY: plain syscalls on our own child; `usage` is a valid out-pointer.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid as i32 {
            break (status, usage.ru_maxrss as u64);
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        peak_anon_kib = peak_anon_kib.max(anon_kib(pid).unwrap_or(0));
        let over = hwm_kib(pid).is_some_and(|k| k > cap_kib);
        if !killed && (over || started.elapsed() > limit) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Measured {
        code,
        peak_kib,
        peak_anon_kib,
        killed,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
