//! What a run records as it goes (rank 0 only): `metrics.jsonl`, `eval.jsonl`, TensorBoard
//! scalars, the progress bar, and the curves for `loss.png`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::observe::EventWriter;

use super::StepMetrics;

/// Appends JSON lines, flushed per line (a reader never sees half a record unless the
/// process dies mid-write). A failed write is an error naming the file: a run must not
/// go on silently with a log cut mid-record (a full disk, say).
pub(crate) struct JsonLines {
    file: File,
    path: PathBuf,
}

impl JsonLines {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    pub fn write<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let line = serde_json::to_string(v).expect("serialises") + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(Error::io(&self.path))
    }
}

/// The run's records; on ranks other than 0 every method is a no-op.
pub(crate) struct RunLog {
    metrics: Option<JsonLines>,
    evals: Option<JsonLines>,
    events: Option<EventWriter>,
    bar: ProgressBar,
    /// (step, training loss) and (step, validation CE), for the final plot.
    train_curve: Vec<(f64, f64)>,
    eval_curve: Vec<(f64, f64)>,
}

impl RunLog {
    /// Opens the records under `out` for a run that starts at `step`. Records of later
    /// steps (written by a process that died after its last checkpoint) are dropped
    /// first: the resumed run writes those steps again.
    pub fn open(out: &Path, lead: bool, cfg: &TrainConfig, step: u64) -> Result<Self> {
        let jsonl = |name: &str| -> Result<Option<JsonLines>> {
            if !lead {
                return Ok(None);
            }
            let path = out.join(name);
            keep_up_to(&path, step)?;
            JsonLines::open(&path).map(Some)
        };
        let events = if lead && cfg.log.tensorboard {
            Some(EventWriter::create(out.join("tensorboard")).map_err(Error::io(out))?)
        } else {
            None
        };
        let bar = if lead && cfg.log.progress {
            let bar = ProgressBar::new(cfg.optim.steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps ({eta} left) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(step);
            bar
        } else {
            ProgressBar::hidden()
        };
        Ok(Self {
            metrics: jsonl("metrics.jsonl")?,
            evals: jsonl("eval.jsonl")?,
            events,
            bar,
            train_curve: Vec::new(),
            eval_curve: Vec::new(),
        })
    }

    /// Records one optimizer step.
    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        self.train_curve.push((m.step as f64, m.loss));
        if let Some(w) = self.metrics.as_mut() {
            w.write(m)?;
        }
        if let Some(ev) = self.events.as_mut() {
            let mut scalars = vec![
                ("train/loss", m.loss),
                ("train/ce", m.ce),
                ("train/kd", m.kd),
                ("train/lr", m.lr),
                ("train/grad_norm", m.grad_norm),
                ("train/tokens_per_s", m.tokens_per_s),
            ];
            if let Some(v) = m.topk_mass {
                scalars.push(("train/teacher_topk_mass", v));
            }
            if let Some(v) = m.top1_agree {
                scalars.push(("train/top1_agree", v));
            }
            for (tag, v) in scalars {
                ev.add_scalar(tag, m.step as i64, v)
                    .map_err(Error::io(ev.path()))?;
            }
        }
        self.bar.set_position(m.step);
        self.bar.set_message(format!(
            "loss {:.4} ce {:.4} kd {:.4} lr {:.2e} {:.0} tok/s",
            m.loss, m.ce, m.kd, m.lr, m.tokens_per_s
        ));
        Ok(())
    }

    /// Records one evaluation and prints its one-line summary.
    pub fn eval(&mut self, r: &EvalReport) -> Result<()> {
        self.bar.suspend(|| tracing::info!("{}", eval_line(r)));
        self.eval_curve.push((r.step as f64, r.val_loss));
        if let Some(ev) = self.events.as_mut() {
            let s = r.step as i64;
            let mut scalars = vec![("eval/val_loss", r.val_loss)];
            if let Some(o) = &r.overall {
                scalars.extend([
                    ("eval/em", o.em),
                    ("eval/f1", o.f1),
                    ("eval/rougeL", o.rouge_l),
                ]);
            }
            for (tag, v) in scalars {
                ev.add_scalar(tag, s, v).map_err(Error::io(ev.path()))?;
            }
        }
        if let Some(w) = self.evals.as_mut() {
            w.write(r)?;
        }
        Ok(())
    }

    /// Pushes buffered TensorBoard events to disk.
    pub fn flush(&mut self) -> Result<()> {
        match self.events.as_mut() {
            Some(ev) => ev.flush().map_err(Error::io(ev.path())),
            None => Ok(()),
        }
    }

    pub fn finish_bar(&self) {
        self.bar.finish_and_clear();
    }

    /// Draws the training loss (smoothed over the raw series) and the validation CE on
    /// its own axis into `png`.
    pub fn plot(&self, png: &Path) -> Result<()> {
        crate::observe::plot_training(png, &self.train_curve, &self.eval_curve, "edkd training")
            .map_err(Error::io(png))
    }
}

/// Rewrites a JSON-lines file keeping the records whose `step` is at most `step` (and any
/// line without one); a missing file is fine. The rewrite goes through a temporary file
/// and a rename, so a crash leaves the old or the new file, never half of one.
fn keep_up_to(path: &Path, step: u64) -> Result<()> {
    // Only a regular file is rewritten (a log pointed at a device or a pipe is left be).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let keep = |line: &&str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
            .is_none_or(|s| s <= step)
    };
    // A line cut mid-record (the process died writing it) is dropped too.
    let complete = |line: &&str| serde_json::from_str::<serde_json::Value>(line).is_ok();
    let kept: Vec<&str> = text.lines().filter(complete).filter(keep).collect();
    if kept.len() == text.lines().count() && text.ends_with('\n') || text.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(&tmp, body).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// `eval @ step N: val CE ... (ppl ...), KD ..., EM ... F1 ... ROUGE-L ... (n examples)`.
fn eval_line(r: &EvalReport) -> String {
    let mut line = format!(
        "eval @ step {}: val CE {:.4} (ppl {:.2})",
        r.step, r.val_loss, r.perplexity
    );
    if let Some(kd) = r.val_kd {
        line += &format!(", KD {kd:.4}");
    }
    if let Some(o) = &r.overall {
        line += &format!(
            ", EM {:.3} F1 {:.3} ROUGE-L {:.3} ({} examples)",
            o.em, o.f1, o.rouge_l, o.count
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_after_the_resumed_step_and_cut_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let lines = [
            r#"{"step":1,"loss":2.0}"#,
            r#"{"step":2,"loss":1.5}"#,
            r#"{"step":3,"loss":1.2}"#,
            r#"{"step":4,"lo"#,
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        keep_up_to(&p, 2).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("{}\n{}\n", lines[0], lines[1]));
        // Idempotent, and a fresh run (step 0) starts from an empty file.
        keep_up_to(&p, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        keep_up_to(&p, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
        keep_up_to(&dir.path().join("absent.jsonl"), 3).unwrap();
    }
}
