//! Atomic file and folder writes: readers never see a half-written file or folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` via a sibling temp file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// A folder that is deleted on drop unless [`TempDir::commit`] renamed it into place.
pub struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    /// Creates a fresh hidden folder next to `target` (removing a stale one of the same name).
    pub fn next_to(target: &Path) -> Result<Self> {
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
