//! The whole efficiency experiment as `edkd bench efficiency` runs it: every spec in a
//! child process of its own (so that each peak RSS belongs to one measurement), the CSV,
//! the options as JSON and the figure under one folder, and a one-screen summary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    Arch, MeasureSpec, Options, Row, measure, measure_in_child, plot, run, table, write_csv,
};
use crate::error::{Error, Result};

/// What a suite run measured and wrote.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub rows: Vec<Row>,
    pub csv: PathBuf,
    pub json: PathBuf,
    /// `None` when the figure was not asked for.
    pub png: Option<PathBuf>,
}

/// The child's side: measures the spec given as JSON and returns the measurement as the
/// JSON line to print on stdout.
pub fn worker(spec_json: &str) -> Result<String> {
    let spec: MeasureSpec = serde_json::from_str(spec_json)
        .map_err(|e| Error::input("worker spec", format!("{spec_json:?}: {e}")))?;
    Ok(serde_json::to_string(&measure(&spec)?).expect("measurement serialises"))
}

/// Runs every spec of `opts` in a child made by `child` (the command that ends in
/// [`worker`]; the spec is appended as its last argument) and writes
/// `efficiency-<preset>.csv`, `.json` and, with `draw`, `.png` under `out`.
pub fn run_in_children(
    opts: &Options,
    child: impl Fn() -> Command,
    out: &Path,
    draw: bool,
) -> Result<Report> {
    let progress = |spec: &MeasureSpec| {
        let name = match spec.arch {
            Arch::Student => "student",
            Arch::Twin => "twin",
        };
        eprintln!(
            "measuring {name:<7} at {:>5} input tokens ...",
            spec.input_length
        );
    };
    let rows = run(opts, |spec| measure_in_child(child(), spec), progress)?;

    let stem = out.join(format!("efficiency-{}", opts.preset));
    let csv = stem.with_extension("csv");
    write_csv(&csv, &rows)?;
    let json = stem.with_extension("json");
    let text = serde_json::to_string_pretty(opts).expect("options serialise") + "\n";
    std::fs::write(&json, text).map_err(Error::io(&json))?;
    let png = if draw {
        let png = stem.with_extension("png");
        let title = format!(
            "{} student vs decoder-only twin, batch 1, {} threads",
            opts.preset, opts.threads
        );
        plot(&rows, &png, &title)?;
        Some(png)
    } else {
        None
    };
    Ok(Report {
        options: opts.clone(),
        rows,
        csv,
        json,
        png,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, rows) = (&self.options, &self.rows);
        let Some(first) = rows.first() else {
            return Ok(());
        };
        writeln!(
            f,
            "{} student ({:.1}M params) vs decoder-only twin ({:.1}M), batch 1, {} on {}, {} \
             threads, {} new tokens, best of {}",
            o.preset,
            first.student.params as f64 / 1e6,
            first.twin.params as f64 / 1e6,
            o.dtype,
            o.device,
            o.threads,
            o.new_tokens,
            o.repeats
        )?;
        write!(f, "{}", table(rows))?;
        writeln!(
            f,
            "run peak: peak RSS of the measuring process above its RSS once the model is \
             built (activations + caches); peak RSS: whole process (libtorch + weights + run)"
        )?;
        let sooner = |r: &Row| (1.0 - r.first_token_ratio()) * 100.0;
        let (lo, hi) = rows
            .iter()
            .map(sooner)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let best_decode = rows.iter().map(Row::decode_ratio).fold(f64::NAN, f64::max);
        writeln!(
            f,
            "ours:  first token {lo:.0}%..{hi:.0}% sooner, decode up to {best_decode:.2}x faster"
        )?;
        writeln!(
            f,
            "paper: first token 47% sooner, decode up to 4.7x faster (Mu vs decoder-only)"
        )
    }
}
