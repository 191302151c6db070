//! Training observability without TensorFlow: TensorBoard event files (TFRecord framing,
//! hand-encoded `Event` protos) and the figures of a run ([`plot_training`],
//! [`plot_runs`], drawn by edkd-plot).

mod figures;

pub use edkd_plot::PALETTE;
pub use figures::{PLOT_HEIGHT, PLOT_WIDTH, plot_losses, plot_runs, plot_training};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Version string TensorBoard expects in the first event of a file.
const FILE_VERSION: &str = "brain.Event:2";
/// Added to the rotated CRC so that a CRC of data containing CRCs is not trivially zero.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;
/// Tried name suffixes before giving up when files of the same second already exist.
const MAX_NAME_ATTEMPTS: u32 = 1000;

/// Appends scalar summaries to a TensorBoard event file in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new `events.out.tfevents.<secs>.<hostname>.edkd` in it
    /// (with a `.N` suffix when that name exists), starting with the file-version event.
    pub fn create(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir)?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!("events.out.tfevents.{secs}.{}.edkd", hostname());
        let (path, file) = create_unique(dir, &base)?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        let mut event = event_header(wall_time(), 0);
        put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` (stored as f32, TensorBoard's `simple_value`) for `tag` at `step`.
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f64) -> io::Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Records several scalars of one step in a single event.
    pub fn add_scalars(&mut self, step: i64, values: &[(&str, f64)]) -> io::Result<()> {
        let mut summary = Vec::new();
        for &(tag, value) in values {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, WIRE_FIXED32);
            // Narrowing is the format's: simple_value is a proto float.
            v.extend_from_slice(&(value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall_time(), step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Pushes buffered events to the file, so TensorBoard sees them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// TFRecord framing: length, masked CRC of the length, data, masked CRC of the data.
    fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc32c(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc32c(data).to_le_bytes())
    }
}

fn create_unique(dir: &Path, base: &str) -> io::Result<(PathBuf, File)> {
    let mut last_err = None;
    for attempt in 0..MAX_NAME_ATTEMPTS {
        let name = match attempt {
            0 => base.to_owned(),
            n => format!("{base}.{n}"),
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free event file name")))
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The kernel's host name, reduced to characters that are safe in a file name.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".to_owned()
    } else {
        clean
    }
}

// --- protobuf encoding -------------------------------------------------------------------

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// `Event { wall_time = 1 (double), step = 2 (int64) }`; the caller appends the payload.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut event = Vec::new();
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut event, 2, WIRE_VARINT);
    // int64 is encoded as the two's complement u64 (negative steps take ten bytes).
    put_varint(&mut event, step as u64);
    event
}

// --- CRC-32C (Castagnoli) -----------------------------------------------------------------

/// Reflected Castagnoli polynomial.
const CRC32C_POLY: u32 = 0x82f6_3b78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}

/// TFRecord's masked CRC: rotate right by 15 bits, add a constant.
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            b
        };
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(-1i64 as u64).len(), 10);
    }
}
