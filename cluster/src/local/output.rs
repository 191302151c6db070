//! Child output: prefix every line with its source, copy it to a log file, keep a tail.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// Lines of a teacher's output kept for error messages.
pub const TAIL_LINES: usize = 20;

/// Which stream of the launcher a line belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives every prefixed output line (`[teacher0] ...`, `[rank1] ...`, `[launcher] ...`).
pub type LogSink = Arc<dyn Fn(LogStream, &str) + Send + Sync>;

/// The default sink: the launcher's own stdout and stderr.
pub fn stdio_sink() -> LogSink {
    Arc::new(|stream, line| {
        // A closed terminal must not take the supervisor down.
        let _ = match stream {
            LogStream::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            LogStream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
    })
}

/// How a child tags its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Plain lines: prefixed with the child's label.
    Plain,
    /// `mpirun --tag-output` lines (`[1,0]<stdout>:text`): prefixed with `rankN`, untagged
    /// lines (mpirun's own) with the child's label.
    MpiTagged,
}

/// Splits an Open MPI `--tag-output` line into (rank, stream, text).
///
/// Open MPI 4 writes `[jobid,rank]<stdout>:text`; Open MPI 5 may add a space after the colon.
pub fn parse_mpi_tag(line: &str) -> Option<(u32, LogStream, &str)> {
    let rest = line.strip_prefix('[')?;
    let (ids, rest) = rest.split_once(']')?;
    let (_job, rank) = ids.split_once(',')?;
    let rank = rank.trim().parse().ok()?;
    let rest = rest.strip_prefix('<')?;
    let (stream, text) = rest.split_once(">:")?;
    let stream = match stream {
        "stdout" => LogStream::Stdout,
        "stderr" | "stddiag" => LogStream::Stderr,
        _ => return None,
    };
    Some((rank, stream, text.strip_prefix(' ').unwrap_or(text)))
}

/// Prefixes one raw line; returns the stream it belongs on and the prefixed text.
pub fn prefix_line(
    label: &str,
    format: OutputFormat,
    stream: LogStream,
    line: &str,
) -> (LogStream, String) {
    if format == OutputFormat::MpiTagged
        && let Some((rank, tagged_stream, text)) = parse_mpi_tag(line)
    {
        return (tagged_stream, format!("[rank{rank}] {text}"));
    }
    (stream, format!("[{label}] {line}"))
}

/// The last [`TAIL_LINES`] lines of a child, shared between its two pumps.
#[derive(Debug, Default)]
pub(crate) struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: String) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    pub(crate) fn text(&self) -> String {
        if self.0.is_empty() {
            return "(no output)".to_owned();
        }
        self.0
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Everything a pump needs besides its reader.
#[derive(Clone)]
pub(crate) struct Pump {
    pub(crate) label: String,
    pub(crate) format: OutputFormat,
    pub(crate) sink: LogSink,
    pub(crate) tail: Arc<Mutex<Tail>>,
    pub(crate) log_file: Option<Arc<Mutex<File>>>,
}

impl Pump {
    /// Copies `reader` line by line until EOF.
    pub(crate) async fn run(self, reader: impl AsyncRead + Unpin, stream: LogStream) {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let raw = String::from_utf8_lossy(&buf);
            let raw = raw.trim_end_matches(['\n', '\r']);
            let (stream, line) = prefix_line(&self.label, self.format, stream, raw);
            (self.sink)(stream, &line);
            if let Some(file) = &self.log_file
                && let Ok(mut file) = file.lock()
            {
                // Logging is best effort: a full disk must not stop training.
                let _ = writeln!(file, "{line}");
            }
            if let Ok(mut tail) = self.tail.lock() {
                tail.push(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpi_tags_become_rank_prefixes() {
        let plain = OutputFormat::Plain;
        let mpi = OutputFormat::MpiTagged;
        let out = LogStream::Stdout;
        assert_eq!(
            prefix_line("trainer", mpi, out, "[1,3]<stderr>:loss 2.5"),
            (LogStream::Stderr, "[rank3] loss 2.5".to_owned())
        );
        assert_eq!(
            prefix_line("trainer", mpi, out, "[1,0]<stdout>: step 1"),
            (LogStream::Stdout, "[rank0] step 1".to_owned())
        );
        assert_eq!(
            prefix_line("trainer", mpi, out, "mpirun noticed that ..."),
            (out, "[trainer] mpirun noticed that ...".to_owned())
        );
        assert_eq!(
            prefix_line("teacher0", plain, out, "[1,0]<stdout>:x"),
            (out, "[teacher0] [1,0]<stdout>:x".to_owned())
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..TAIL_LINES + 5 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(
            text.starts_with("line 5\n") && text.ends_with(&format!("line {}", TAIL_LINES + 4))
        );
    }
}
