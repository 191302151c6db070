//! Writing a report's files: the markdown, keeping the hand-written commentary of the
//! file it replaces (so a rerun redraws the tables without losing what a person wrote
//! about them), and the JSON.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// The heading of a report's hand-written part, carried over when the report is redrawn.
pub const COMMENTARY: &str = "## Commentary";

/// Writes `md` to `path`, followed by the `## Commentary` section (to the end) of the file
/// already there, if it has one.
pub fn write_markdown(path: &Path, md: String) -> Result<()> {
    let mut md = md;
    if let Ok(old) = std::fs::read_to_string(path)
        && let Some(at) = old.find(COMMENTARY)
    {
        md += "\n";
        md += &old[at..];
    }
    std::fs::write(path, md).map_err(Error::io(path))
}

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("report serialises") + "\n";
    std::fs::write(path, text).map_err(Error::io(path))
}
