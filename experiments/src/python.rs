//! Runs the crate's Python reference scripts (experiments/scripts) in the project venv: the
//! one place that knows where that interpreter is.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Overrides the interpreter (default: the repository's `.venv/bin/python`).
pub const PYTHON_ENV: &str = "EDKD_PYTHON";

/// The project venv's python (made by scripts/setup.sh), or `$EDKD_PYTHON`.
pub fn python() -> Result<PathBuf> {
    if let Ok(p) = std::env::var(PYTHON_ENV) {
        return Ok(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !p.exists() {
        return Err(Error::Script {
            script: "python".into(),
            msg: format!(
                "{} not found: run scripts/setup.sh (or set {PYTHON_ENV})",
                p.display()
            ),
        });
    }
    Ok(p)
}

/// A script shipped in experiments/scripts.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A command that runs script `name` with the venv's python (arguments still to add).
pub fn command(name: &str) -> Result<Command> {
    let mut cmd = Command::new(python()?);
    cmd.arg(script(name));
    Ok(cmd)
}

/// Runs a script and parses the JSON on its last stdout line (`Null` when it prints none).
pub fn run_script(name: &str, args: &[String]) -> Result<serde_json::Value> {
    let out = command(name)?
        .args(args)
        .output()
        .map_err(Error::io(script(name)))?;
    let fail = |msg: String| Error::Script {
        script: name.into(),
        msg,
    };
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        None | Some("") => Ok(serde_json::Value::Null),
        Some(last) => {
            serde_json::from_str(last).map_err(|e| fail(format!("printed {last:?}: {e}")))
        }
    }
}
