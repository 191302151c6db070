//! The efficiency experiment's outputs: one row per input length, CSV, a text table and
//! the figure (first-token latency and decode throughput against input length).

use std::fmt::Write as _;
use std::path::Path;

use edkd_plot::{Axis, Figure, PALETTE, Panel, Series};

use super::Measurement;
use crate::error::{Error, Result};

const MIB: f64 = (1u64 << 20) as f64;
const KIB: f64 = 1024.0;

/// Columns of the CSV, in order; ratios are student / twin.
pub const CSV_COLUMNS: [&str; 18] = [
    "input_length",
    "new_tokens",
    "student_params",
    "twin_params",
    "student_first_token_ms",
    "twin_first_token_ms",
    "first_token_ratio",
    "student_decode_tok_s",
    "twin_decode_tok_s",
    "decode_ratio",
    "student_peak_rss_mib",
    "twin_peak_rss_mib",
    "student_run_peak_kib",
    "twin_run_peak_kib",
    "run_peak_ratio",
    "student_kv_cache_mib",
    "twin_kv_cache_mib",
    "kv_cache_ratio",
];

/// Both models at one input length.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub input_length: i64,
    pub new_tokens: usize,
    pub student: Measurement,
    pub twin: Measurement,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / KIB
}

impl Row {
    /// Student latency / twin latency: below 1 means the student answers sooner.
    pub fn first_token_ratio(&self) -> f64 {
        self.student.first_token_ms / self.twin.first_token_ms
    }

    /// Student throughput / twin throughput: above 1 means the student decodes faster.
    pub fn decode_ratio(&self) -> f64 {
        self.student.decode_tokens_per_s / self.twin.decode_tokens_per_s
    }

    /// Student / twin memory the runs needed above the loaded model. `None` where the peak
    /// could not be reset, or where the twin's runs fit in memory the process already held
    /// (a tiny model's runs can need no new pages at all, so 0 bytes is a real outcome).
    pub fn run_peak_ratio(&self) -> Option<f64> {
        let (s, t) = (self.student.run_peak_bytes?, self.twin.run_peak_bytes?);
        (t > 0).then(|| s as f64 / t as f64)
    }

    pub fn kv_cache_ratio(&self) -> f64 {
        self.student.kv_cache_bytes as f64 / self.twin.kv_cache_bytes as f64
    }

    fn csv_fields(&self) -> Vec<String> {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        let (s, t) = (&self.student, &self.twin);
        vec![
            self.input_length.to_string(),
            self.new_tokens.to_string(),
            s.params.to_string(),
            t.params.to_string(),
            format!("{:.3}", s.first_token_ms),
            format!("{:.3}", t.first_token_ms),
            format!("{:.4}", self.first_token_ratio()),
            format!("{:.2}", s.decode_tokens_per_s),
            format!("{:.2}", t.decode_tokens_per_s),
            format!("{:.4}", self.decode_ratio()),
            format!("{:.1}", mib(s.peak_rss_bytes)),
            format!("{:.1}", mib(t.peak_rss_bytes)),
            opt(s.run_peak_bytes.map(kib)),
            opt(t.run_peak_bytes.map(kib)),
            opt(self.run_peak_ratio()),
            format!("{:.3}", mib(s.kv_cache_bytes)),
            format!("{:.3}", mib(t.kv_cache_bytes)),
            format!("{:.4}", self.kv_cache_ratio()),
        ]
    }
}

/// Writes the rows as CSV with a [`CSV_COLUMNS`] header.
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut text = CSV_COLUMNS.join(",") + "\n";
    for row in rows {
        text += &(row.csv_fields().join(",") + "\n");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    std::fs::write(path, text).map_err(Error::io(path))
}

/// A one-screen table of the rows (ratios student / twin).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>6} | {:>7} {:>7}",
        "input",
        "1st tok",
        "ms",
        "ratio",
        "decode",
        "tok/s",
        "ratio",
        "run peak",
        "KiB",
        "ratio",
        "peak RSS",
        "MiB"
    );
    let _ = writeln!(
        out,
        "{:>6} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>6} | {:>7} {:>7}",
        "tokens",
        "student",
        "twin",
        "s/t",
        "student",
        "twin",
        "s/t",
        "student",
        "twin",
        "s/t",
        "student",
        "twin"
    );
    let na = |v: Option<f64>, prec: usize| v.map_or("n/a".to_string(), |v| format!("{v:.prec$}"));
    for r in rows {
        let (s, t) = (&r.student, &r.twin);
        let _ = writeln!(
            out,
            "{:>6} | {:>9.1} {:>9.1} {:>6.2} | {:>9.1} {:>9.1} {:>6.2} | {:>8} {:>8} {:>6} | {:>7.0} {:>7.0}",
            r.input_length,
            s.first_token_ms,
            t.first_token_ms,
            r.first_token_ratio(),
            s.decode_tokens_per_s,
            t.decode_tokens_per_s,
            r.decode_ratio(),
            na(s.run_peak_bytes.map(kib), 0),
            na(t.run_peak_bytes.map(kib), 0),
            na(r.run_peak_ratio(), 2),
            mib(s.peak_rss_bytes),
            mib(t.peak_rss_bytes),
        );
    }
    out
}

/// Size of the efficiency figure, in pixels (two panels side by side).
pub const PLOT_WIDTH: u32 = 1320;
pub const PLOT_HEIGHT: u32 = 520;
/// The paper's colours: the decoder-only twin red, the encoder-decoder student blue.
pub const TWIN_COLOUR: edkd_plot::Rgb = PALETTE[3];
pub const STUDENT_COLOUR: edkd_plot::Rgb = PALETTE[0];

/// The figure of the rows: first-token latency against input length (log-2 axis) and
/// decode throughput, student and twin in each.
pub fn figure(rows: &[Row], title: &str) -> Figure {
    let x = || Axis::log2("input length (tokens)");
    let points = |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.input_length as f64, f(r))).collect()
    };
    let pair = |panel: Panel, twin: &dyn Fn(&Row) -> f64, student: &dyn Fn(&Row) -> f64| {
        panel
            .with(Series::line_markers("decoder-only twin", points(twin)).with_colour(TWIN_COLOUR))
            .with(
                Series::line_markers("encoder-decoder student", points(student))
                    .with_colour(STUDENT_COLOUR),
            )
    };
    let new_tokens = rows.first().map_or(0, |r| r.new_tokens);
    let latency = pair(
        Panel::new(x(), Axis::linear("first-token latency (ms)")).titled("first-token latency"),
        &|r| r.twin.first_token_ms,
        &|r| r.student.first_token_ms,
    );
    let decode = pair(
        Panel::new(x(), Axis::linear("decode throughput (tokens/s)")).titled(format!(
            "decode throughput ({new_tokens} new tokens, batch 1)"
        )),
        &|r| r.twin.decode_tokens_per_s,
        &|r| r.student.decode_tokens_per_s,
    );
    Figure::new(title, PLOT_WIDTH, PLOT_HEIGHT)
        .with(latency)
        .with(decode)
}

/// Draws [`figure`] of the rows into `png`.
pub fn plot(rows: &[Row], png: &Path, title: &str) -> Result<()> {
    Ok(figure(rows, title).save_png(png)?)
}
