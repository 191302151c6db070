//! The experiment's report: `kd-real.md` (tables and the facts the commentary rests on),
//! `kd-real.json` (everything, for tools) and `kd-real-curves.png` (validation CE per arm).

use std::fmt::Write as _;
use std::path::Path;

use edkd_trainer::metrics::bootstrap::{self, Interval};
use serde::{Deserialize, Serialize};

use super::arms::{Arm, Init, TrainSummary};
use super::score::{Latency, Prediction};
use super::task::TaskStats;
use super::{KdRealConfig, Phases};
use crate::error::{Error, Result};

/// Seed of every bootstrap in the report.
const BOOTSTRAP_SEED: u64 = 12;
/// The metrics of the tables, with the field each reads.
/// A per-example score.
type Metric = fn(&Prediction) -> f64;

const METRICS: [(&str, Metric); 4] = [
    ("ROUGE-L", |p| p.rouge_l),
    ("ROUGE-Lsum", |p| p.rouge_lsum),
    ("F1", |p| p.f1),
    ("EM", |p| p.em),
];

/// Means with 95% intervals over the test examples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub examples: usize,
    #[serde(rename = "rougeL")]
    pub rouge_l: Interval,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: Interval,
    pub f1: Interval,
    pub em: Interval,
}

impl Scores {
    pub fn of(rows: &[Prediction]) -> Self {
        let ci = |f: fn(&Prediction) -> f64| {
            let v: Vec<f64> = rows.iter().map(f).collect();
            bootstrap::mean_interval(&v, bootstrap::RESAMPLES, bootstrap::LEVEL, BOOTSTRAP_SEED)
        };
        Self {
            examples: rows.len(),
            rouge_l: ci(METRICS[0].1),
            rouge_lsum: ci(METRICS[1].1),
            f1: ci(METRICS[2].1),
            em: ci(METRICS[3].1),
        }
    }

    fn all(&self) -> [Interval; 4] {
        [self.rouge_l, self.rouge_lsum, self.f1, self.em]
    }
}

/// One trained arm and its test scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: Arm,
    pub name: String,
    pub train: TrainSummary,
    pub scores: Scores,
    /// Three predictions, for eyeballing.
    pub samples: Vec<Prediction>,
    #[serde(skip)]
    pub rows: Vec<Prediction>,
}

impl ArmResult {
    pub fn new(arm: Arm, train: TrainSummary, rows: Vec<Prediction>) -> Self {
        Self {
            name: arm.name(),
            arm,
            train,
            scores: Scores::of(&rows),
            samples: rows.iter().take(3).cloned().collect(),
            rows,
        }
    }
}

/// A paired difference `a - b` on the same test examples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Difference {
    pub name: String,
    /// ROUGE-L, ROUGE-Lsum, F1, EM.
    pub metrics: Vec<Interval>,
}

/// What [`KdRealReport::build`] turns into a report.
pub struct Inputs {
    pub cfg: KdRealConfig,
    pub command: String,
    pub stats: TaskStats,
    pub arms: Vec<ArmResult>,
    pub teacher: Vec<Prediction>,
    pub latency: Latency,
    pub phases: Phases,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdRealReport {
    pub command: String,
    pub machine: String,
    pub config: KdRealConfig,
    pub task: TaskStats,
    pub arms: Vec<ArmResult>,
    pub teacher: Scores,
    pub teacher_samples: Vec<Prediction>,
    pub differences: Vec<Difference>,
    pub latency: Latency,
    pub phases: Phases,
    pub elapsed_s: f64,
    /// Validation CE per evaluation, per arm: (arm dir, [(step, val CE)]).
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

/// Per-example mean over several arms' predictions (the same examples in the same order).
fn pooled(arms: &[&ArmResult]) -> Vec<[f64; 4]> {
    let n = arms.first().map_or(0, |a| a.rows.len());
    (0..n)
        .map(|i| {
            let mut m = [0.0; 4];
            for a in arms {
                for (k, (_, f)) in METRICS.iter().enumerate() {
                    m[k] += f(&a.rows[i]) / arms.len() as f64;
                }
            }
            m
        })
        .collect()
}

fn difference(name: String, a: &[&ArmResult], b: &[&ArmResult]) -> Option<Difference> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (pa, pb) = (pooled(a), pooled(b));
    let metrics = (0..4)
        .map(|k| {
            let x: Vec<f64> = pa.iter().map(|m| m[k]).collect();
            let y: Vec<f64> = pb.iter().map(|m| m[k]).collect();
            bootstrap::paired_difference(
                &x,
                &y,
                bootstrap::RESAMPLES,
                bootstrap::LEVEL,
                BOOTSTRAP_SEED,
            )
        })
        .collect();
    Some(Difference { name, metrics })
}

/// The comparisons the report makes: KD vs CE per init (each seed, then pooled over
/// seeds), and decoder vs random initialisation.
fn differences(arms: &[ArmResult]) -> Vec<Difference> {
    let pick = |init: Init, kd: bool, seed: Option<u64>| -> Vec<&ArmResult> {
        arms.iter()
            .filter(|a| {
                a.arm.init == init && a.arm.kd == kd && seed.is_none_or(|s| a.arm.seed == s)
            })
            .collect()
    };
    let mut seeds: Vec<u64> = arms.iter().map(|a| a.arm.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut out = Vec::new();
    for init in [Init::Decoder, Init::Random] {
        let label = if init == Init::Decoder {
            "decoder-init"
        } else {
            "random-init"
        };
        for &s in &seeds {
            out.extend(difference(
                format!("{label}: KD - CE (seed {s})"),
                &pick(init, true, Some(s)),
                &pick(init, false, Some(s)),
            ));
        }
        if pick(init, true, None).len() > 1 {
            out.extend(difference(
                format!("{label}: KD - CE (mean over seeds)"),
                &pick(init, true, None),
                &pick(init, false, None),
            ));
        }
    }
    for kd in [false, true] {
        out.extend(difference(
            format!(
                "{}: decoder-init - random-init (mean over seeds)",
                if kd { "KD" } else { "CE" }
            ),
            &pick(Init::Decoder, kd, None),
            &pick(Init::Random, kd, None),
        ));
    }
    out
}

/// `val_loss` per evaluation of one run (`eval.jsonl`).
fn curve(run: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(run.join("eval.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v["val_loss"].as_f64()?)))
        .collect()
}

/// CPU model, cores and load average of this machine.
fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{}; load average at the end {}",
        crate::host::machine(),
        load.join(" ")
    )
}

impl KdRealReport {
    pub fn build(i: Inputs) -> Self {
        let curves = i
            .arms
            .iter()
            .map(|a| {
                (
                    a.arm.dir(),
                    curve(&i.cfg.out.join("runs").join(a.arm.dir())),
                )
            })
            .collect();
        Self {
            command: i.command,
            machine: machine(),
            differences: differences(&i.arms),
            task: i.stats,
            teacher: Scores::of(&i.teacher),
            teacher_samples: i.teacher.iter().take(3).cloned().collect(),
            arms: i.arms,
            latency: i.latency,
            phases: i.phases,
            elapsed_s: i.elapsed_s,
            curves,
            config: i.cfg,
        }
    }

    /// Writes `kd-real.md`, `kd-real.json` and `kd-real-curves.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let json = dir.join("kd-real.json");
        let text = serde_json::to_string_pretty(self).expect("report serialises") + "\n";
        std::fs::write(&json, text).map_err(Error::io(&json))?;
        let md = dir.join("kd-real.md");
        std::fs::write(&md, super::report_md::markdown(self)).map_err(Error::io(&md))?;
        self.plot(&dir.join("kd-real-curves.png"))
    }

    fn plot(&self, png: &Path) -> Result<()> {
        let series: Vec<(&str, Vec<(f64, f64)>)> = self
            .curves
            .iter()
            .filter(|(_, pts)| !pts.is_empty())
            .map(|(name, pts)| (name.as_str(), pts.clone()))
            .collect();
        edkd_trainer::observe::plot_losses(
            png,
            &series,
            "kd-real: validation cross-entropy per arm",
            "optimizer step",
            "validation CE (nats / target token)",
        )
        .map_err(Error::io(png))
    }
}

/// A parameter count as `12.3M` (or `96k` below a million).
pub fn count(n: i64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.0}k", n as f64 / 1e3)
    }
}

/// `mean [lo, hi]` with three decimals.
pub fn ci(i: &Interval) -> String {
    format!("{:.3} [{:.3}, {:.3}]", i.mean, i.lo, i.hi)
}

/// One table row per arm plus the teacher: the four metrics with intervals.
pub fn score_table(r: &KdRealReport) -> String {
    let mut s = String::from(
        "| model | parameters | train wall time | ROUGE-L | ROUGE-Lsum | F1 | EM |\n|---|---|---|---|---|---|---|\n",
    );
    for a in &r.arms {
        let cells: Vec<String> = a.scores.all().iter().map(ci).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} s | {} |",
            a.name,
            count(a.train.parameters),
            a.train.elapsed_s,
            cells.join(" | ")
        );
    }
    let cells: Vec<String> = r.teacher.all().iter().map(ci).collect();
    let _ = writeln!(
        s,
        "| teacher ({}) | {} | {} | {} |",
        if r.config.teacher_finetune_steps > 0 {
            format!("fine-tuned {} steps", r.config.teacher_finetune_steps)
        } else {
            "not fine-tuned".into()
        },
        count(r.latency.teacher_parameters),
        if r.config.teacher_finetune_steps > 0 {
            "see phases"
        } else {
            "-"
        },
        cells.join(" | ")
    );
    s
}

/// Paired differences with their intervals, and whether each excludes 0.
pub fn difference_table(r: &KdRealReport) -> String {
    let mut s = String::from(
        "| comparison (a - b, paired) | ROUGE-L | ROUGE-Lsum | F1 | EM |\n|---|---|---|---|---|\n",
    );
    for d in &r.differences {
        let cells: Vec<String> = d
            .metrics
            .iter()
            .map(|i| {
                let mark = if i.contains(0.0) { "" } else { " *" };
                format!("{:+.3} [{:+.3}, {:+.3}]{mark}", i.mean, i.lo, i.hi)
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", d.name, cells.join(" | "));
    }
    s
}
