//! `restarts.json`: the record of every restart of a run, kept in its output folder.
//!
//! ```json
//! {"restarts": 1, "events": [{"time": 1767225600.5, "component": "trainer",
//!   "reason": "exit code 1", "action": "restart"}]}
//! ```
//! The local supervisor and the Slurm script write it; `status` reads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name inside the run folder.
pub const FILE_NAME: &str = "restarts.json";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartLog {
    /// Number of events whose action is `restart`.
    pub restarts: u32,
    /// Every failure, oldest first.
    #[serde(default)]
    pub events: Vec<RestartEvent>,
}

/// One failure and what was done about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartEvent {
    /// Unix time in seconds.
    pub time: f64,
    /// What failed: `trainer`, `teacher0`, ... or `slurm` for a time-limit requeue.
    pub component: String,
    /// Why, e.g. `exit code 1`.
    pub reason: String,
    /// `restart` or `give_up`.
    pub action: String,
    /// The Slurm job, for events written by the sbatch script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job_id: Option<String>,
}

/// What the supervisor did after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Restarted with `--resume`.
    Restart,
    /// Stopped after `max_restarts` restarts.
    GiveUp,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::GiveUp => "give_up",
        }
    }
}

impl RestartLog {
    /// Path of the file in `run_dir`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(FILE_NAME)
    }

    /// Reads `run_dir/restarts.json`; an absent file is an empty log.
    pub fn load(run_dir: &Path) -> Result<RestartLog> {
        let path = RestartLog::path(run_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Json {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RestartLog::default()),
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }

    /// Appends an event stamped with the current time and updates the restart count.
    pub fn record(&mut self, component: &str, reason: &str, action: Action) {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or_default();
        self.events.push(RestartEvent {
            time,
            component: component.to_owned(),
            reason: reason.to_owned(),
            action: action.as_str().to_owned(),
            slurm_job_id: None,
        });
        if action == Action::Restart {
            self.restarts += 1;
        }
    }

    /// Writes the log to `run_dir/restarts.json` atomically (temporary file, then rename).
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let path = RestartLog::path(run_dir);
        let tmp = run_dir.join(format!("{FILE_NAME}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("a RestartLog always serializes");
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming to", &path, e))
    }
}
