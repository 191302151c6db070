//! Progress of a run, read from its output folder (`edkd status DIR`).
//!
//! Reads `run.json`, the tail of `metrics.jsonl` and `eval.jsonl`, the checkpoint folders
//! and `restarts.json`. Files are read while the trainer appends to them, so a partially
//! written last line is ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::restarts::RestartLog;

/// Steps averaged for the loss, speed and ETA.
pub const RECENT_STEPS: usize = 20;
/// Bytes read from the end of a jsonl file: many times [`RECENT_STEPS`] metric lines.
const TAIL_BYTES: u64 = 256 * 1024;

/// What `edkd status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    /// The run folder.
    pub dir: PathBuf,
    /// Last optimizer step in `metrics.jsonl`.
    pub step: Option<u64>,
    /// Planned steps (`run.json`, else the newest checkpoint's `trainer_state.json`).
    pub total_steps: Option<u64>,
    /// Mean loss over the last [`RECENT_STEPS`] steps.
    pub loss: Option<f64>,
    /// Mean tokens/s over the last [`RECENT_STEPS`] steps.
    pub tokens_per_s: Option<f64>,
    /// Remaining time at the recent seconds per step.
    pub eta: Option<Duration>,
    /// Unix time of the last metrics line.
    pub last_update: Option<f64>,
    /// The newest evaluation.
    pub eval: Option<EvalSummary>,
    /// The newest complete checkpoint.
    pub checkpoint: Option<CheckpointInfo>,
    /// Restarts recorded in `restarts.json`.
    pub restarts: u32,
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSummary {
    /// Step it was taken at.
    pub step: u64,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Numbers of its `overall` object (`em`, `f1`, `rougeL`, ...), sorted by name.
    pub overall: BTreeMap<String, f64>,
}

/// A checkpoint folder that is complete: `trainer_state.json` parses and every file listed
/// in `SHA256SUMS` exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its step.
    pub step: u64,
    /// Its folder.
    pub path: PathBuf,
}

#[derive(Deserialize)]
struct MetricsLine {
    step: u64,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    tokens_per_s: Option<f64>,
    #[serde(default)]
    time: Option<f64>,
}

#[derive(Deserialize)]
struct EvalLine {
    step: u64,
    #[serde(default)]
    val_loss: Option<f64>,
    #[serde(default)]
    overall: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct StepsFile {
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    total_steps: Option<u64>,
}

/// Reads the status of the run in `dir`. Missing files leave their fields empty; only a
/// missing folder or a corrupt file (other than a partial last line) is an error.
pub fn read(dir: &Path) -> Result<RunStatus> {
    if !dir.is_dir() {
        return Err(Error::io(
            "reading run folder",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let metrics: Vec<MetricsLine> = read_jsonl_tail(&dir.join("metrics.jsonl"))?;
    let recent = &metrics[metrics.len().saturating_sub(RECENT_STEPS)..];
    let checkpoint = newest_checkpoint(&dir.join("checkpoints"))?;
    let run: Option<StepsFile> = read_json(&dir.join("run.json"))?;
    let mut total_steps = run.and_then(|run| run.total_steps);
    if total_steps.is_none()
        && let Some(checkpoint) = &checkpoint
    {
        let state: Option<StepsFile> = read_json(&checkpoint.path.join("trainer_state.json"))?;
        total_steps = state.and_then(|state| state.total_steps);
    }
    let step = recent.last().map(|line| line.step);
    let eta = match (step, total_steps, seconds_per_step(recent)) {
        (Some(step), Some(total), Some(per_step)) => Some(Duration::from_secs_f64(
            per_step * total.saturating_sub(step) as f64,
        )),
        _ => None,
    };
    let eval = read_jsonl_tail::<EvalLine>(&dir.join("eval.jsonl"))?
        .pop()
        .map(|line| EvalSummary {
            step: line.step,
            val_loss: line.val_loss,
            overall: line
                .overall
                .into_iter()
                .filter_map(|(name, value)| value.as_f64().map(|value| (name, value)))
                .collect(),
        });
    Ok(RunStatus {
        dir: dir.to_owned(),
        step,
        total_steps,
        loss: mean(recent.iter().filter_map(|line| line.loss)),
        tokens_per_s: mean(recent.iter().filter_map(|line| line.tokens_per_s)),
        eta,
        last_update: recent.last().and_then(|line| line.time),
        eval,
        checkpoint,
        restarts: RestartLog::load(dir)?.restarts,
    })
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| {
        (sum + value, count + 1)
    });
    (count > 0).then(|| sum / count as f64)
}

/// Seconds per step between the first and last of `recent` that carry a time.
fn seconds_per_step(recent: &[MetricsLine]) -> Option<f64> {
    let timed: Vec<(u64, f64)> = recent
        .iter()
        .filter_map(|line| line.time.map(|time| (line.step, time)))
        .collect();
    let (first, last) = (timed.first()?, timed.last()?);
    let steps = last.0.checked_sub(first.0).filter(|&steps| steps > 0)?;
    Some((last.1 - first.1).max(0.0) / steps as f64)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Json {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Parses the lines in the last [`TAIL_BYTES`] of a jsonl file; an absent file is empty.
/// A last line that does not parse is being written and is skipped; any other bad line is an
/// error.
fn read_jsonl_tail<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let io_error = |e| Error::io("reading", path, e);
    let len = file.metadata().map_err(io_error)?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_error)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if start > 0 {
        // The first line was cut by the seek.
        lines.remove(0);
    }
    let lines: Vec<&str> = lines
        .into_iter()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let mut parsed = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(value) => parsed.push(value),
            Err(_) if index + 1 == lines.len() => {}
            Err(e) => {
                return Err(Error::Json {
                    path: path.to_owned(),
                    message: format!("{e} in line `{}`", truncate(line, 80)),
                });
            }
        }
    }
    Ok(parsed)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The complete checkpoint with the highest step under `dir` (`step-NNNNNNNN` folders).
fn newest_checkpoint(dir: &Path) -> Result<Option<CheckpointInfo>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut candidates: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let step = name.to_str()?.strip_prefix("step-")?.parse().ok()?;
            Some((step, entry.path()))
        })
        .collect();
    candidates.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(candidates
        .into_iter()
        .find(|(_, path)| checkpoint_complete(path))
        .map(|(step, path)| CheckpointInfo { step, path }))
}

fn checkpoint_complete(path: &Path) -> bool {
    let state_ok = std::fs::read_to_string(path.join("trainer_state.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<StepsFile>(&text).ok())
        .is_some_and(|state| state.step.is_some());
    let Ok(sums) = std::fs::read_to_string(path.join("SHA256SUMS")) else {
        return false;
    };
    // sha256sum format: "<hex>  <file>" (or "<hex> *<file>" in binary mode).
    let files_ok = sums
        .lines()
        .filter(|line| !line.trim().is_empty())
        .all(|line| {
            line.split_once(char::is_whitespace)
                .map(|(_, name)| name.trim_start().trim_start_matches('*'))
                .is_some_and(|name| path.join(name).is_file())
        });
    state_ok && files_ok
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run         {}", self.dir.display())?;
        match (self.step, self.total_steps) {
            (Some(step), Some(total)) if total > 0 => writeln!(
                f,
                "step        {step} / {total} ({:.1}%)",
                100.0 * step as f64 / total as f64
            )?,
            (Some(step), _) => writeln!(f, "step        {step}")?,
            (None, _) => writeln!(f, "step        not started")?,
        }
        if let Some(loss) = self.loss {
            writeln!(
                f,
                "loss        {loss:.4} (mean of last {RECENT_STEPS} steps)"
            )?;
        }
        if let Some(speed) = self.tokens_per_s {
            writeln!(f, "speed       {speed:.0} tokens/s")?;
        }
        if let Some(eta) = self.eta {
            writeln!(f, "eta         {}", format_duration(eta))?;
        }
        if let Some(eval) = &self.eval {
            write!(f, "eval        step {}", eval.step)?;
            if let Some(val_loss) = eval.val_loss {
                write!(f, ": val_loss {val_loss:.4}")?;
            }
            for (name, value) in &eval.overall {
                write!(f, ", {name} {value:.4}")?;
            }
            writeln!(f)?;
        }
        match &self.checkpoint {
            Some(checkpoint) => writeln!(
                f,
                "checkpoint  step {} at {}",
                checkpoint.step,
                checkpoint.path.display()
            )?,
            None => writeln!(f, "checkpoint  none")?,
        }
        write!(f, "restarts    {}", self.restarts)
    }
}

/// `3h 12m`, `12m 5s`, `40s`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(
            format_duration(Duration::from_secs(3 * 3600 + 12 * 60 + 9)),
            "3h 12m"
        );
        assert_eq!(format_duration(Duration::from_secs(12 * 60 + 5)), "12m 5s");
        assert_eq!(format_duration(Duration::from_secs(40)), "40s");
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé...");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
