//! CSV input: a header row names the fields; quoted fields may span lines.

use std::io::Read;
use std::path::Path;

use super::{Emit, Wanted, open_text};
use crate::error::{Error, Result};
use crate::images::source::ImageSource;

pub(super) fn read_csv(path: &Path, wanted: &Wanted<'_>, emit: &mut Emit<'_>) -> Result<()> {
    let max_record_bytes = wanted.max_record_bytes;
    let too_large = |line: usize| Error::RecordTooLarge {
        path: path.to_owned(),
        line,
        limit: max_record_bytes,
    };
    let csv_err = |fallback_line: usize, e: csv::Error| {
        let line = e.position().map_or(fallback_line, |p| p.line() as usize);
        if let csv::ErrorKind::Io(io) = e.kind()
            && let Some(long) = io.get_ref().and_then(|e| e.downcast_ref::<LongLine>())
        {
            return too_large(long.line);
        }
        if let csv::ErrorKind::Utf8 { err, .. } = e.kind() {
            return Error::InvalidUtf8 {
                path: path.to_owned(),
                line,
                detail: format!("field {} after byte {}", err.field() + 1, err.valid_up_to()),
            };
        }
        Error::Csv {
            path: path.to_owned(),
            line,
            message: e.to_string(),
        }
    };
    let source = LineLimit {
        inner: open_text(path)?,
        line: 1,
        since_newline: 0,
        limit: max_record_bytes,
    };
    let mut reader = csv::Reader::from_reader(source);
    let headers = reader.headers().map_err(|e| csv_err(1, e))?.clone();
    let columns: Vec<Option<usize>> = wanted
        .names
        .iter()
        .map(|n| headers.iter().position(|h| h == n))
        .collect();
    let image_column = wanted
        .image
        .and_then(|name| headers.iter().position(|h| h == name));
    for (i, record) in reader.records().enumerate() {
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map_or(i + 2, |p| p.line() as usize);
        let record = record.map_err(|e| csv_err(line, e))?;
        // A record of many short lines is only measured once read.
        if record.as_slice().len() > max_record_bytes {
            return Err(too_large(line));
        }
        let values = columns
            .iter()
            .map(|c| c.and_then(|c| record.get(c)).map(str::to_owned))
            .collect();
        // CSV holds text only: an image is a path, and an empty cell is no image.
        let image = image_column
            .and_then(|c| record.get(c))
            .filter(|p| !p.is_empty())
            .map(|p| ImageSource::path(p, wanted.base));
        emit(line, values, Ok(image))?;
    }
    Ok(())
}

/// A physical line longer than the record limit (carried inside an `io::Error`).
#[derive(Debug)]
struct LongLine {
    line: usize,
}

impl std::fmt::Display for LongLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} is over the record size limit", self.line)
    }
}

impl std::error::Error for LongLine {}

/// Fails a read once one physical line exceeds `limit` bytes, so the CSV parser never
/// buffers an overlong record.
struct LineLimit<R> {
    inner: R,
    /// 1-based number of the line being read.
    line: usize,
    since_newline: usize,
    limit: usize,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.since_newline = 0;
            } else {
                self.since_newline += 1;
                if self.since_newline > self.limit {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        LongLine { line: self.line },
                    ));
                }
            }
        }
        Ok(n)
    }
}
