//! `vision.md` and `vision.json`: teacher, CE student and KD student on the synthetic image
//! tasks (EM and F1 with 95% intervals, per question type, against the majority-answer
//! baseline), the paired KD - CE difference, and the efficiency of the vision student
//! against its twin at 576 and 2,304 image tokens when those reports are next to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edkd_data::synth_image::ImageExample;
use edkd_trainer::eval::Prediction;
use edkd_trainer::metrics::bootstrap::{self, Interval};
use serde::{Deserialize, Serialize};

use super::{StudentRun, VisionConfig};
use crate::efficiency::experiment::EfficiencyReport;
use crate::error::{Error, Result};

const BOOTSTRAP_SEED: u64 = 21;
/// The efficiency reports the vision report summarises, by image tokens.
pub const EFFICIENCY_REPORTS: [(i64, &str); 2] = [
    (576, "vision-efficiency-576"),
    (2304, "vision-efficiency-2304"),
];

/// One model's held-out scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelScores {
    pub name: String,
    pub em: Interval,
    pub f1: Interval,
    /// EM per question type (mean over seeds and examples).
    pub em_by_task: BTreeMap<String, f64>,
    pub per_seed_em: Vec<f64>,
    pub mean_train_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionReport {
    pub command: String,
    pub machine: String,
    pub finished: String,
    pub config: VisionConfig,
    pub wall_s: f64,
    /// EM of always giving each question type's most frequent training answer.
    pub majority_em: f64,
    pub majority_em_by_task: BTreeMap<String, f64>,
    pub models: Vec<ModelScores>,
    /// KD student - CE student, EM and F1, paired on examples and seeds.
    pub kd_minus_ce: (Interval, Interval),
    /// CE student - majority baseline, EM (paired on examples).
    pub ce_minus_majority: Interval,
}

fn interval(runs: &[Vec<f64>]) -> Interval {
    bootstrap::seeds_and_examples_interval(
        runs,
        bootstrap::RESAMPLES,
        bootstrap::LEVEL,
        BOOTSTRAP_SEED,
    )
}

fn column(runs: &[&Vec<Prediction>], f: fn(&Prediction) -> f64) -> Vec<Vec<f64>> {
    runs.iter().map(|r| r.iter().map(f).collect()).collect()
}

fn em(p: &Prediction) -> f64 {
    p.metrics.exact_match
}

fn f1(p: &Prediction) -> f64 {
    p.metrics.f1
}

fn scores(name: &str, runs: &[&Vec<Prediction>], train_s: f64) -> ModelScores {
    let mut by_task: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for p in runs.iter().flat_map(|r| r.iter()) {
        let e = by_task.entry(p.task.clone()).or_default();
        e.0 += em(p);
        e.1 += 1;
    }
    ModelScores {
        name: name.into(),
        em: interval(&column(runs, em)),
        f1: interval(&column(runs, f1)),
        em_by_task: by_task
            .into_iter()
            .map(|(t, (s, n))| (t, s / n.max(1) as f64))
            .collect(),
        per_seed_em: runs
            .iter()
            .map(|r| r.iter().map(em).sum::<f64>() / r.len().max(1) as f64)
            .collect(),
        mean_train_s: train_s,
    }
}

/// The most frequent answer of each question type among `train`.
fn majority(train: &[ImageExample]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in train {
        *counts
            .entry((e.task.clone(), e.answer.clone()))
            .or_default() += 1;
    }
    let mut best: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for ((task, answer), n) in counts {
        let slot = best.entry(task).or_insert((0, String::new()));
        if n > slot.0 {
            *slot = (n, answer);
        }
    }
    best.into_iter().map(|(t, (_, a))| (t, a)).collect()
}

impl VisionReport {
    pub fn build(
        cfg: &VisionConfig,
        command: &str,
        train: &[ImageExample],
        teacher: Vec<Prediction>,
        students: Vec<StudentRun>,
        wall_s: f64,
    ) -> Self {
        let guess = majority(train);
        let base: Vec<f64> = teacher
            .iter()
            .map(|p| {
                let hit = guess
                    .get(&p.task)
                    .is_some_and(|a| edkd_trainer::metrics::exact_match(a, &p.reference) == 1.0);
                f64::from(u8::from(hit))
            })
            .collect();
        let mut base_by_task: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for (p, b) in teacher.iter().zip(&base) {
            let e = base_by_task.entry(p.task.clone()).or_default();
            e.0 += b;
            e.1 += 1;
        }
        let pick = |kd: bool| -> Vec<&StudentRun> {
            let mut v: Vec<&StudentRun> = students.iter().filter(|s| s.kd == kd).collect();
            v.sort_by_key(|s| s.seed);
            v
        };
        let (ce, kd) = (pick(false), pick(true));
        fn preds<'a>(v: &[&'a StudentRun]) -> Vec<&'a Vec<Prediction>> {
            v.iter().map(|s| &s.predictions).collect()
        }
        let mean_s =
            |v: &[&StudentRun]| v.iter().map(|s| s.train_s).sum::<f64>() / v.len().max(1) as f64;
        let diff = |f: fn(&Prediction) -> f64| {
            let (a, b) = (column(&preds(&kd), f), column(&preds(&ce), f));
            let d: Vec<Vec<f64>> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
                .collect();
            interval(&d)
        };
        let ce_runs = column(&preds(&ce), em);
        let ce_vs_base: Vec<Vec<f64>> = ce_runs
            .iter()
            .map(|r| r.iter().zip(&base).map(|(p, q)| p - q).collect())
            .collect();
        Self {
            command: command.into(),
            machine: crate::host::machine(),
            finished: crate::host::utc_now(),
            config: cfg.clone(),
            wall_s,
            majority_em: base.iter().sum::<f64>() / base.len().max(1) as f64,
            majority_em_by_task: base_by_task
                .into_iter()
                .map(|(t, (s, n))| (t, s / n.max(1) as f64))
                .collect(),
            models: vec![
                scores(
                    "teacher (decoder-only twin + tower, all labels)",
                    &[&teacher],
                    f64::NAN,
                ),
                scores("encoder-decoder student, CE", &preds(&ce), mean_s(&ce)),
                scores("encoder-decoder student, KD", &preds(&kd), mean_s(&kd)),
            ],
            kd_minus_ce: (diff(em), diff(f1)),
            ce_minus_majority: interval(&ce_vs_base),
        }
    }

    fn markdown(&self, dir: &Path) -> String {
        let c = &self.config;
        let ci = |i: &Interval| format!("{:.3} [{:.3}, {:.3}]", i.mean, i.lo, i.hi);
        let sci = |i: &Interval| format!("{:+.3} [{:+.3}, {:+.3}]", i.mean, i.lo, i.hi);
        let mut md = String::from(
            "# Vision: image-to-text students distilled from a vision-language teacher\n\n",
        );
        let _ = writeln!(md, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            md,
            "Machine: {}. Finished {}; wall time {:.0} s, including what an earlier invocation \
             left to resume.\n",
            self.machine, self.finished, self.wall_s
        );
        let _ = writeln!(
            md,
            "Task: `edkd data synth --task image-mix` scenes of {px}x{px} pixels (counting \
             shapes of a colour, the colour of a shape, the shape left of / above another, a \
             written word), one question each, one-word answers. Teacher: the decoder-only \
             twin architecture with a CLIP-style tower (64 wide, 2 blocks, patch {p}, \
             {patches} patch tokens, trained from scratch) and an `mlp2x_gelu` projector, \
             cross-entropy on {te} labelled examples, {ts} steps. Students: the \
             encoder-decoder with the same tower shape, {ss} steps each, seeds {seeds:?}; CE \
             on {se} labelled examples, KD on those plus the {un} inputs the teacher answered \
             (pseudo-labels), with top-{k} token-level KD from the teacher in process (alpha \
             {a}). {ev} held-out examples. Intervals: 95% percentile bootstrap, over examples \
             for the teacher, over seeds and examples for the students.\n",
            px = c.image_size,
            p = c.patch_size,
            patches = (i64::from(c.image_size) / c.patch_size).pow(2),
            te = c.teacher_examples,
            ts = c.teacher_steps,
            ss = c.student_steps,
            seeds = c.seeds,
            se = c.student_examples,
            un = c.teacher_examples - c.student_examples,
            k = c.top_k,
            a = c.alpha,
            ev = c.eval_examples,
        );
        md += "## Scores\n\n| model | EM | F1 | EM per seed | train s (mean) |\n|---|---|---|---|---|\n";
        for m in &self.models {
            let seeds: Vec<String> = m.per_seed_em.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                m.name,
                ci(&m.em),
                ci(&m.f1),
                seeds.join(" / "),
                if m.mean_train_s.is_finite() {
                    format!("{:.0}", m.mean_train_s)
                } else {
                    "-".into()
                }
            );
        }
        let _ = writeln!(
            md,
            "| majority answer per question type (chance) | {:.3} | - | - | - |\n",
            self.majority_em
        );
        let _ = writeln!(
            md,
            "KD - CE: EM {}, F1 {}. CE student - majority baseline: EM {}.\n",
            sci(&self.kd_minus_ce.0),
            sci(&self.kd_minus_ce.1),
            sci(&self.ce_minus_majority)
        );
        md += "### EM per question type\n\n| question type | majority | ";
        md += &self
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" | ");
        md += " |\n|---|---|";
        md += &"---|".repeat(self.models.len());
        md += "\n";
        for (task, base) in &self.majority_em_by_task {
            let _ = write!(md, "| {task} | {base:.3} |");
            for m in &self.models {
                let _ = write!(
                    md,
                    " {:.3} |",
                    m.em_by_task.get(task).copied().unwrap_or(f64::NAN)
                );
            }
            md += "\n";
        }
        md += &efficiency_section(dir);
        md
    }

    /// Writes `vision.md` (keeping a `## Commentary` section of the old file) and
    /// `vision.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let md_path = dir.join("vision.md");
        crate::report_files::write_markdown(&md_path, self.markdown(dir))?;
        let json = dir.join("vision.json");
        crate::report_files::write_json(&json, self)?;
        Ok(vec![md_path, json])
    }
}

/// The vision efficiency reports found in `dir`, summarised: per image-token count,
/// dtype and text length, first-token latency and decode throughput, student / twin.
fn efficiency_section(dir: &Path) -> String {
    let mut md = String::from("\n## Efficiency with image tokens\n\n");
    let mut found = false;
    for (tokens, name) in EFFICIENCY_REPORTS {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.json"))) else {
            continue;
        };
        let Ok(r) = serde_json::from_str::<EfficiencyReport>(&text) else {
            continue;
        };
        if !found {
            md += "| image tokens | setting | text tokens | first token ms (s / t) | of it: tower + projector ms | ratio | decode tok/s (s / t) | ratio | peak RSS MiB (s / t) |\n|---|---|---|---|---|---|---|---|---|\n";
            found = true;
        }
        for s in &r.settings {
            for row in &s.rows {
                let (a, b) = (&row.student, &row.twin);
                let vis = a.first_parts_ms.get(crate::efficiency::Part::Tower)
                    + a.first_parts_ms.get(crate::efficiency::Part::Projector);
                let _ = writeln!(
                    md,
                    "| {tokens} | {} | {} | {:.0} / {:.0} | {vis:.0} | {:.2} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} |",
                    s.name(),
                    row.input_length,
                    a.first_token_ms,
                    b.first_token_ms,
                    row.first_token_ratio(),
                    a.decode_tokens_per_s,
                    b.decode_tokens_per_s,
                    row.decode_ratio(),
                    a.peak_rss_bytes as f64 / f64::from(1u32 << 20),
                    b.peak_rss_bytes as f64 / f64::from(1u32 << 20),
                );
            }
        }
    }
    if found {
        md += "\nFrom `vision-efficiency-576.md` and `vision-efficiency-2304.md` next to this \
               report (made by `edkd experiment efficiency --presets mu-330m --image-tokens N \
               ...`; the commands, machine and per-component breakdown are there).\n";
    } else {
        md += "Not measured yet: run `edkd experiment efficiency --image-tokens 576` (and \
               2304) with `--report-name vision-efficiency-576` (`-2304`) into this folder.\n";
    }
    md
}
