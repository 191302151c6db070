//! `edkd experiment efficiency`: the paper's efficiency comparison at its size. Every
//! preset x thread count x dtype x input length, student and twin, each measured in a
//! child process of its own; the measurements are journalled as they come (a rerun reuses
//! what is there, so an interrupted run loses at most one measurement); the report
//! (markdown, JSON, figures) is written from the journal.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Arch, MeasureSpec, Measurement, Row, measure_in_child};
use crate::error::{Error, Result};
use crate::host;

/// The journal of measurements under the work folder, one JSON line each.
pub const JOURNAL: &str = "measurements.jsonl";

/// What the experiment measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridOptions {
    pub presets: Vec<String>,
    pub input_lengths: Vec<i64>,
    pub threads: Vec<i32>,
    pub dtypes: Vec<String>,
    pub device: String,
    /// Generated tokens per run (the first one, then `new_tokens - 1` decode steps).
    pub new_tokens: usize,
    /// Timed runs per measurement after one warm-up (best kept), per preset: the first
    /// value for the small presets, the second for `mu-330m`.
    pub repeats: (usize, usize),
    pub seed: i64,
    /// Image tokens before the text of every input (`input_lengths` are then the text's),
    /// through `tower` on both sides; 0: text only.
    #[serde(default)]
    pub image_tokens: i64,
    #[serde(default = "super::default_tower")]
    pub tower: String,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            presets: vec!["mid".into(), "mu-330m".into()],
            input_lengths: vec![128, 256, 512, 1024, 2048, 4096],
            threads: vec![1, 2],
            dtypes: vec!["f32".into(), "bf16".into()],
            device: "cpu".into(),
            new_tokens: 32,
            repeats: (3, 1),
            seed: 0,
            image_tokens: 0,
            tower: super::default_tower(),
        }
    }
}

/// One preset at one thread count and dtype: a row per input length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    pub preset: String,
    pub threads: i32,
    pub dtype: String,
    pub rows: Vec<Row>,
}

impl Setting {
    pub fn name(&self) -> String {
        format!("{} {} {}t", self.preset, self.dtype, self.threads)
    }
}

/// Everything the report is drawn from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EfficiencyReport {
    pub command: String,
    pub options: GridOptions,
    pub machine: String,
    pub started: String,
    pub wall_s: f64,
    /// Load average and running compilers (other builds) at start and end.
    pub load: (f64, f64),
    pub compilers: (usize, usize),
    /// Measurements taken by this run; the rest came from the journal of an earlier one.
    pub measured_now: usize,
    /// Seconds the report's measurements took, summed over the journal, and how many of
    /// them have no recorded time (journals of older versions).
    #[serde(default)]
    pub measure_s: f64,
    #[serde(default)]
    pub untimed: usize,
    pub settings: Vec<Setting>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    spec: MeasureSpec,
    measurement: Measurement,
    /// Seconds the measurement took (its child process included); absent in journals
    /// written before it was recorded.
    #[serde(default)]
    elapsed_s: Option<f64>,
}

/// Specs are the same measurement when every field that changes the numbers agrees.
fn same(a: &MeasureSpec, b: &MeasureSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn read_journal(path: &Path) -> Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    // A line cut short by a kill is skipped, not fatal: that measurement is taken again.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn append(path: &Path, entry: &Entry) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io(path))?;
    let line = serde_json::to_string(entry).expect("entry serialises") + "\n";
    f.write_all(line.as_bytes()).map_err(Error::io(path))
}

/// Measures a spec in a child made by `child` (the command that ends in
/// [`super::suite::worker`]), so that each peak RSS belongs to one measurement.
pub fn in_child(child: impl Fn() -> Command) -> impl FnMut(&MeasureSpec) -> Result<Measurement> {
    move |spec| measure_in_child(child(), spec)
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} measurements (eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar
}

fn check(opts: &GridOptions) -> Result<()> {
    for (field, empty) in [
        ("presets", opts.presets.is_empty()),
        ("input_lengths", opts.input_lengths.is_empty()),
        ("threads", opts.threads.is_empty()),
        ("dtypes", opts.dtypes.is_empty()),
    ] {
        if empty {
            return Err(Error::input(field, "needs at least one value"));
        }
    }
    if let Some(t) = opts.threads.iter().find(|&&t| t < 1) {
        return Err(Error::input("threads", format!("{t} (must be >= 1)")));
    }
    for p in &opts.presets {
        edkd_models::student::StudentConfig::preset(p)?;
    }
    for d in &opts.dtypes {
        edkd_models::device::parse_dtype(d)?;
    }
    edkd_models::device::parse_device(&opts.device)?;
    if opts.image_tokens < 0 {
        return Err(Error::input(
            "image_tokens",
            format!("{} (must be >= 0)", opts.image_tokens),
        ));
    }
    if opts.image_tokens > 0 {
        super::vision::tower(&opts.tower)?;
    }
    Ok(())
}

/// Runs every measurement of `opts` not already in `work/measurements.jsonl` with
/// `measure_one` (the CLI: [`in_child`]; tests: [`super::measure`] in process) and
/// returns the report.
pub fn run(
    opts: &GridOptions,
    command: String,
    work: &Path,
    mut measure_one: impl FnMut(&MeasureSpec) -> Result<Measurement>,
) -> Result<EfficiencyReport> {
    check(opts)?;
    std::fs::create_dir_all(work).map_err(Error::io(work))?;
    let journal: PathBuf = work.join(JOURNAL);
    let mut entries = read_journal(&journal)?;
    let started = Instant::now();
    let (load0, builds0) = (host::load_average(), host::compilers_running());
    let started_at = host::utc_now();
    let specs = plan(opts);
    let todo = specs
        .iter()
        .filter(|s| !entries.iter().any(|e| same(&e.spec, s)))
        .count();
    eprintln!(
        "{} measurements, {} in the journal {}, {todo} to take",
        specs.len(),
        specs.len() - todo,
        journal.display()
    );
    let bar = progress_bar(todo as u64);
    let mut measured_now = 0;
    for spec in &specs {
        if entries.iter().any(|e| same(&e.spec, spec)) {
            continue;
        }
        bar.set_message(format!(
            "{} {:?} {} {}t {} tokens",
            spec.preset, spec.arch, spec.dtype, spec.threads, spec.input_length
        ));
        let t0 = Instant::now();
        let measurement = measure_one(spec)?;
        let entry = Entry {
            spec: spec.clone(),
            measurement,
            elapsed_s: Some(t0.elapsed().as_secs_f64()),
        };
        append(&journal, &entry)?;
        entries.push(entry);
        measured_now += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let used: Vec<&Entry> = plan(opts)
        .iter()
        .filter_map(|s| entries.iter().rev().find(|e| same(&e.spec, s)))
        .collect();
    Ok(EfficiencyReport {
        measure_s: used
            .iter()
            .filter_map(|e| e.elapsed_s)
            .fold(0.0, |a, b| a + b),
        untimed: used.iter().filter(|e| e.elapsed_s.is_none()).count(),
        command,
        options: opts.clone(),
        machine: host::machine(),
        started: started_at,
        wall_s: started.elapsed().as_secs_f64(),
        load: (load0, host::load_average()),
        compilers: (builds0, host::compilers_running()),
        measured_now,
        settings: settings(opts, &entries),
    })
}

/// Every spec in the order measured: presets small first, then per setting the lengths
/// ascending, student before twin.
fn plan(opts: &GridOptions) -> Vec<MeasureSpec> {
    let mut out = Vec::new();
    for preset in &opts.presets {
        let repeats = if preset == "mu-330m" {
            opts.repeats.1
        } else {
            opts.repeats.0
        };
        for dtype in &opts.dtypes {
            for &threads in &opts.threads {
                for &input_length in &opts.input_lengths {
                    for arch in [Arch::Student, Arch::Twin] {
                        out.push(MeasureSpec {
                            arch,
                            preset: preset.clone(),
                            input_length,
                            new_tokens: opts.new_tokens,
                            repeats,
                            threads,
                            seed: opts.seed,
                            dtype: dtype.clone(),
                            device: opts.device.clone(),
                            image_tokens: opts.image_tokens,
                            tower: opts.tower.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn settings(opts: &GridOptions, entries: &[Entry]) -> Vec<Setting> {
    let specs = plan(opts);
    let find = |s: &MeasureSpec| {
        entries
            .iter()
            .rev()
            .find(|e| same(&e.spec, s))
            .map(|e| e.measurement.clone())
    };
    let mut out: Vec<Setting> = Vec::new();
    for pair in specs.chunks(2) {
        let (s, t) = (&pair[0], &pair[1]);
        let (Some(student), Some(twin)) = (find(s), find(t)) else {
            continue;
        };
        let row = Row {
            input_length: s.input_length,
            new_tokens: s.new_tokens,
            student,
            twin,
        };
        match out
            .iter_mut()
            .find(|x| x.preset == s.preset && x.threads == s.threads && x.dtype == s.dtype)
        {
            Some(setting) => setting.rows.push(row),
            None => out.push(Setting {
                preset: s.preset.clone(),
                threads: s.threads,
                dtype: s.dtype.clone(),
                rows: vec![row],
            }),
        }
    }
    out
}
