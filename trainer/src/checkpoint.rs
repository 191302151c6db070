//! Checkpoints: `checkpoints/step-NNNNNNNN/` with the model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`; loadable by `edkd generate`),
//! `optimizer.safetensors`, `trainer_state.json` and `SHA256SUMS` over all of them.
//!
//! A checkpoint is written into a temporary folder, every file fsynced, then renamed into
//! place and the parent fsynced: a crash leaves either the whole checkpoint or none.
//! Loading checks every file's sha256; `latest_valid` skips (and reports) a corrupt newest
//! checkpoint and falls back to the one before.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use edkd_data::Cursor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::Net;
use crate::optim::AdamW;

pub const SUMS_FILE: &str = "SHA256SUMS";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Checkpoints being written: `.tmp-step-NNNNNNNN-PID`.
const TMP_PREFIX: &str = ".tmp-step-";
/// Where checkpoints that do not verify are moved (never deleted).
pub const CORRUPT_DIR: &str = "corrupt";

/// Everything besides weights and optimizer moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub seed: u64,
    /// The data reader's global position after the last consumed batch.
    pub cursor: Cursor,
    /// World size that wrote the checkpoint (the cursor is valid for any).
    pub world: usize,
    /// Target tokens trained on so far (all ranks).
    pub tokens: u64,
    /// Seconds of training so far (across restarts).
    pub elapsed_s: f64,
    /// Best evaluation so far: (metric value, step).
    pub best: Option<(f64, u64)>,
    /// The latest evaluation's metrics.
    pub last_eval: Option<serde_json::Value>,
}

fn check(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_owned(),
        message: message.into(),
    }
}

pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(path))
}

/// Writes a checkpoint for `state.step`; returns its folder.
pub fn save(
    root: &Path,
    net: &Net,
    opt: &AdamW,
    state: &TrainerState,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    ensure_finite(net, state.step)?;
    fs::create_dir_all(root).map_err(Error::io(root))?;
    let tmp = root.join(format!(
        "{TMP_PREFIX}{:08}-{}",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    let written = write_into(&tmp, root, net, opt, state, tokenizer);
    if written.is_err() {
        // A full disk must not keep the half-written folder on it.
        let _ = fs::remove_dir_all(&tmp);
    }
    written
}

/// Refuses weights with NaN or infinity: such a checkpoint would only poison a resume.
fn ensure_finite(net: &Net, step: u64) -> Result<()> {
    for (name, t) in net.vs().variables() {
        let finite = tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0);
        if !finite {
            return Err(Error::NonFinite(format!(
                "step {step}: parameter `{name}` holds NaN or infinity; not saved"
            )));
        }
    }
    Ok(())
}

/// Writes the checkpoint into `tmp`, then renames it to its final name under `root`.
fn write_into(
    tmp: &Path,
    root: &Path,
    net: &Net,
    opt: &AdamW,
    state: &TrainerState,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    let final_dir = step_dir(root, state.step);
    net.save(tmp, tokenizer)?;
    edkd_models::weights::save_tensors(&opt.state(), None, &tmp.join(OPTIMIZER_FILE))?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).expect("state serialises") + "\n";
    fs::write(&state_path, text).map_err(Error::io(&state_path))?;

    let mut names: Vec<String> = fs::read_dir(tmp)
        .map_err(Error::io(tmp))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut sums = String::new();
    for name in &names {
        let p = tmp.join(name);
        sums += &format!("{}  {name}\n", sha256_file(&p)?);
        fsync(&p)?;
    }
    let sums_path = tmp.join(SUMS_FILE);
    let mut f = File::create(&sums_path).map_err(Error::io(&sums_path))?;
    f.write_all(sums.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(Error::io(&sums_path))?;
    fsync(tmp)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(Error::io(&final_dir))?;
    }
    fs::rename(tmp, &final_dir).map_err(Error::io(&final_dir))?;
    fsync(root)?;
    Ok(final_dir)
}

/// Checks every file listed in `SHA256SUMS` (and that the required files are listed).
pub fn verify(dir: &Path) -> Result<()> {
    let sums_path = dir.join(SUMS_FILE);
    let text = fs::read_to_string(&sums_path)
        .map_err(|e| check(dir, format!("cannot read {SUMS_FILE}: {e}")))?;
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (sum, name) = line
            .split_once("  ")
            .ok_or_else(|| check(dir, format!("{SUMS_FILE} line {}: malformed", i + 1)))?;
        let path = dir.join(name);
        if !path.is_file() {
            return Err(check(dir, format!("`{name}` is missing")));
        }
        let got = sha256_file(&path)?;
        if got != sum {
            return Err(check(
                dir,
                format!("`{name}` is corrupt (sha256 {got}, expected {sum})"),
            ));
        }
        listed.push(name.to_owned());
    }
    for required in [
        STATE_FILE,
        OPTIMIZER_FILE,
        "config.json",
        "model.safetensors",
    ] {
        if !listed.iter().any(|n| n == required) {
            return Err(check(
                dir,
                format!("`{required}` is not listed in {SUMS_FILE}"),
            ));
        }
    }
    Ok(())
}

/// Checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(Error::io(&path))?;
    serde_json::from_str(&text).map_err(|e| check(dir, format!("{STATE_FILE}: {e}")))
}

/// The newest checkpoint that verifies; corrupt newer ones are reported through `warn`.
pub fn latest_valid(root: &Path, mut warn: impl FnMut(&Error)) -> Option<(PathBuf, TrainerState)> {
    for (_, dir) in list(root).into_iter().rev() {
        match verify(&dir).and_then(|_| read_state(&dir)) {
            Ok(state) => return Some((dir, state)),
            Err(e) => warn(&e),
        }
    }
    None
}

/// Restores weights and optimizer state from a verified checkpoint folder.
pub fn restore(dir: &Path, net: &mut Net, opt: &mut AdamW) -> Result<()> {
    edkd_models::weights::load_folder(net.vs_mut(), dir)?;
    let path = dir.join(OPTIMIZER_FILE);
    let named = Tensor::read_safetensors(&path)
        .map_err(|e| check(dir, format!("{OPTIMIZER_FILE}: {e}")))?;
    opt.load_state(&named)
        .map_err(|m| check(dir, format!("{OPTIMIZER_FILE}: {m}")))?;
    Ok(())
}

/// Deletes all but the newest `keep_last` checkpoints and the best one. Checkpoints newer
/// than `current` belong to an abandoned timeline (a resume from an older one): they are
/// moved aside, never counted among the newest, so they cannot outlive fresh ones.
pub fn prune(root: &Path, keep_last: usize, best_step: Option<u64>, current: u64) -> Result<()> {
    let (live, stale): (Vec<_>, Vec<_>) = list(root).into_iter().partition(|(s, _)| *s <= current);
    for (_, dir) in &stale {
        quarantine(root, dir)?;
    }
    let n = live.len();
    for (i, (step, dir)) in live.into_iter().enumerate() {
        if i + keep_last >= n || Some(step) == best_step {
            continue;
        }
        fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    }
    Ok(())
}

/// Moves a checkpoint folder into `root/corrupt/` (its name plus the time, so nothing is
/// overwritten); returns the new path.
pub fn quarantine(root: &Path, dir: &Path) -> Result<PathBuf> {
    let aside = root.join(CORRUPT_DIR);
    fs::create_dir_all(&aside).map_err(Error::io(&aside))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let to = aside.join(format!("{name}.{stamp}"));
    fs::rename(dir, &to).map_err(Error::io(dir))?;
    tracing::warn!(from = %dir.display(), to = %to.display(), "checkpoint moved aside");
    Ok(to)
}

/// Removes checkpoint temporaries of processes that are gone (a SIGKILL mid-write, a full
/// disk) and this process's own; returns how many were removed.
pub fn remove_stale_temporaries(root: &Path) -> usize {
    let me = std::process::id();
    let mut removed = 0;
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TMP_PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if (pid == me || !process_alive(pid)) && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this id exists (Linux: its /proc entry).
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
