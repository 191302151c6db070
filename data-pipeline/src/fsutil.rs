//! Atomic file and folder writes: readers never see a half-written file or folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Tags of the hidden siblings edkd writes next to an output (see [`sibling`]).
const TEMP_TAGS: [&str; 2] = ["tmp", "partial"];
/// Tag of the copy an overwritten output is moved to until its replacement is in place.
const OLD_TAG: &str = "old";

/// Writes `bytes` to `path` via a sibling temp file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    remove_stale_siblings(path);
    let tmp = sibling(path, "tmp");
    let mut file = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    file.write_all(bytes).map_err(Error::io(&tmp))?;
    file.sync_all().map_err(Error::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(Error::io(path))
}

/// `dir/.name.<tag>-<pid>`: a hidden sibling of `path` on the same filesystem.
pub fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Removes what killed edkd processes left next to `target`: `.NAME.tmp-PID` and
/// `.NAME.partial-PID` of processes that no longer run, and `.NAME.old-PID` once `target`
/// exists again (before that it is the only copy of the overwritten output, so it stays).
/// Best effort: whatever cannot be read or removed is left alone.
pub fn remove_stale_siblings(target: &Path) {
    let probe = sibling(target, "x");
    let (Some(name), Some(parent)) = (target.file_name(), probe.parent()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((tag, pid)) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once('-'))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let stale = if TEMP_TAGS.contains(&tag) {
            !process_alive(pid)
        } else {
            tag == OLD_TAG && !process_alive(pid) && target.exists()
        };
        if stale {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// Whether process `pid` runs; where that cannot be known, true (nothing is removed).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// A folder that is deleted on drop unless [`TempDir::commit`] renamed it into place.
pub struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    /// Creates a fresh hidden folder next to `target` (removing a stale one of the same name).
    pub fn next_to(target: &Path) -> Result<Self> {
        remove_stale_siblings(target);
        let path = sibling(target, "partial");
        if path.exists() {
            fs::remove_dir_all(&path).map_err(Error::io(&path))?;
        }
        fs::create_dir_all(&path).map_err(Error::io(&path))?;
        Ok(Self {
            path,
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the folder to `target`. An existing `target` is replaced only if `overwrite`.
    pub fn commit(mut self, target: &Path, overwrite: bool) -> Result<()> {
        let old = sibling(target, "old");
        let had_old = target.exists();
        if had_old {
            if !overwrite {
                return Err(Error::Config {
                    message: format!(
                        "{} already exists (pass --overwrite to replace it)",
                        target.display()
                    ),
                });
            }
            fs::rename(target, &old).map_err(Error::io(target))?;
        }
        fs::rename(&self.path, target).map_err(Error::io(target))?;
        self.committed = true;
        if had_old {
            fs::remove_dir_all(&old).map_err(Error::io(&old))?;
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// sha256 of a file's bytes, lowercase hex (memory-mapped, so large shards are cheap).
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = fs::File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    if len == 0 {
        return Ok(crate::tokenizer::sha256_hex(&[]));
    }
    // SAFETY: the file is opened read-only; edkd never rewrites finished shards in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
    Ok(crate::tokenizer::sha256_hex(&map))
}
