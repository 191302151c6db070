//! The compression report: `compression.md` (the command, the machine, the table),
//! `compression.json` and `compression.png` (error against bytes per target token).

use std::fmt::Write;
use std::path::Path;

use edkd_plot::{Axis, Corner, Figure, Panel, Series};
use serde::{Deserialize, Serialize};

use super::{CompressionConfig, Measured};
use crate::error::{Error, Result};

/// One (variant, k) cell. Relative errors are fractions; per example (the mean KL over its
/// positions, against the f32 targets of the same k), then their mean and max.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub variant: String,
    pub packed: bool,
    pub k: usize,
    pub bytes_per_token: f64,
    /// Packed rows after zstd (the same as `bytes_per_token` for unpacked variants).
    pub zstd_bytes_per_token: f64,
    pub kl_rel_mean: f64,
    pub kl_rel_max: f64,
    /// Nats.
    pub kl_abs_mean: f64,
    pub grad_norm_rel_mean: f64,
    pub grad_norm_rel_max: f64,
    /// `|g' - g| / |g|`.
    pub grad_rel_mean: f64,
    pub grad_rel_max: f64,
    /// The KD loss over all measured positions at once.
    pub pooled_kl_rel: f64,
    /// Against f32 targets at the largest k (truncation and compression together).
    pub vs_largest_k_kl_rel_mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionReport {
    pub command: String,
    pub config: CompressionConfig,
    pub machine: String,
    pub load_before: f64,
    pub load_after: f64,
    /// rustc processes running (other builds on the shared machine) at start and end.
    pub compilers_before: usize,
    pub compilers_after: usize,
    pub examples: usize,
    pub positions: usize,
    pub vocab: usize,
    pub temperature: f32,
    pub student: String,
    pub encoder_layers: Vec<usize>,
    pub decoder_layers: Vec<usize>,
    pub reference_kl: Vec<(usize, f64)>,
    pub rows: Vec<Row>,
    pub annotate_s: f64,
    pub measure_s: f64,
    pub elapsed_s: f64,
}

pub struct Inputs {
    pub config: CompressionConfig,
    pub command: String,
    pub measured: Measured,
    pub annotate_s: f64,
    pub measure_s: f64,
    pub elapsed_s: f64,
    pub load: (f64, f64),
    pub builds: (usize, usize),
    pub student: String,
    pub encoder_layers: Vec<usize>,
    pub decoder_layers: Vec<usize>,
}

pub use crate::host::{compilers_running, load_average};

fn machine() -> String {
    format!(
        "{}, libtorch {} threads",
        crate::host::machine(),
        tch::get_num_threads()
    )
}

impl CompressionReport {
    pub fn build(i: Inputs) -> Self {
        Self {
            command: i.command,
            config: i.config,
            machine: machine(),
            load_before: i.load.0,
            load_after: i.load.1,
            compilers_before: i.builds.0,
            compilers_after: i.builds.1,
            examples: i.measured.examples,
            positions: i.measured.positions,
            vocab: i.measured.vocab,
            temperature: i.measured.temperature,
            student: i.student,
            encoder_layers: i.encoder_layers,
            decoder_layers: i.decoder_layers,
            reference_kl: i.measured.reference_kl,
            rows: i.measured.rows,
            annotate_s: i.annotate_s,
            measure_s: i.measure_s,
            elapsed_s: i.elapsed_s,
        }
    }

    /// Writes `compression.md`, `.json` and `.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let json = dir.join("compression.json");
        let text = serde_json::to_string_pretty(self).expect("report serializes") + "\n";
        std::fs::write(&json, text).map_err(Error::io(&json))?;
        let md = dir.join("compression.md");
        std::fs::write(&md, self.markdown()).map_err(Error::io(&md))?;
        figure(self).save_png(&dir.join("compression.png"))?;
        Ok(())
    }

    /// The table alone (packing x k).
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:.3}", 100.0 * x);
        let mut s = String::from(
            "| storage | k | B / token | B / token, zstd | KL rel. err. mean % | max % | pooled % | KL abs. err. (nats) | grad-norm rel. err. mean % | max % | grad rel. err. mean % | max % | KL vs f32 at largest k, mean % |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let zstd = if r.packed {
                format!("{:.1}", r.zstd_bytes_per_token)
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {zstd} | {} | {} | {} | {:.2e} | {} | {} | {} | {} | {} |",
                r.variant,
                r.k,
                r.bytes_per_token,
                pct(r.kl_rel_mean),
                pct(r.kl_rel_max),
                pct(r.pooled_kl_rel),
                r.kl_abs_mean,
                pct(r.grad_norm_rel_mean),
                pct(r.grad_norm_rel_max),
                pct(r.grad_rel_mean),
                pct(r.grad_rel_max),
                pct(r.vs_largest_k_kl_rel_mean),
            );
        }
        s
    }

    fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(s, "# What compressing the teacher's top-k costs\n");
        let _ = writeln!(s, "Command:\n\n```\n{}\n```\n", self.command);
        let _ = writeln!(
            s,
            "Machine: {}; 1-minute load {:.1} at the start and {:.1} at the end; {} and {} \
             rustc processes of other builds running then (the machine was shared). \
             Annotation took {:.0} s, the measurement {:.0} s, {:.0} s in all.\n",
            self.machine,
            self.load_before,
            self.load_after,
            self.compilers_before,
            self.compilers_after,
            self.annotate_s,
            self.measure_s,
            self.elapsed_s
        );
        let _ = writeln!(
            s,
            "Data: {} training examples of the `kd` experiment's task (Python function -> \
             first docstring sentence, from this machine's Python sources), {} target \
             positions (target + eos). Teacher: `{}` through its chat template, scored at \
             T = {} and k = {} into a version-1 (f32) cache; k = {:?} are that cache's rows \
             cut to k with the dropped mass added to the tail. Vocabulary {}. The `freq` \
             packings' id orders come from the rows of {} more training examples annotated \
             before these (one order per k, from the rows cut to k), which are not measured: \
             the order is calibrated on other text than it packs, as a cache's first \
             examples calibrate the rest.\n",
            self.examples,
            self.positions,
            c.teacher.display(),
            self.temperature,
            c.annotate_k,
            c.ks,
            self.vocab,
            c.calibration_examples
        );
        let _ = writeln!(
            s,
            "Student logits: the decoder-initialised student `{}` (`edkd student init` from \
             the teacher, encoder layers {:?}, decoder layers {:?}, cross-attention scale 0; \
             untrained), one forward pass per example, f32. The loss is edkd's KD term \
             (`KdLoss::distill`, forward KL over the top-k + tail buckets, mean over the \
             example's positions, T^2-scaled); the gradient is `d loss / d logits` over the \
             whole vocabulary. Each compressed target set is compared with the f32 set of \
             the same k; `pooled` is the loss over all positions at once.\n",
            self.student, self.encoder_layers, self.decoder_layers
        );
        let kl: Vec<String> = self
            .reference_kl
            .iter()
            .map(|(k, v)| format!("k {k}: {v:.3}"))
            .collect();
        let _ = writeln!(
            s,
            "Mean reference KL per example (nats): {}.\n",
            kl.join(", ")
        );
        let _ = writeln!(s, "{}", self.table());
        let _ = writeln!(s, "![error against bytes](compression.png)\n");
        s
    }
}

/// Relative KL error (left) and gradient error (right) against bytes per target token, one
/// line per storage through its k values.
fn figure(r: &CompressionReport) -> Figure {
    let mut variants: Vec<&str> = Vec::new();
    for row in &r.rows {
        if row.packed && !variants.contains(&row.variant.as_str()) {
            variants.push(&row.variant);
        }
    }
    let panel = |y: &str, f: &dyn Fn(&Row) -> f64| {
        let mut p = Panel::new(Axis::log2("bytes per target token"), Axis::linear(y))
            .legend_at(Corner::Best);
        for v in &variants {
            let points = r
                .rows
                .iter()
                .filter(|row| row.variant == *v)
                .map(|row| (row.bytes_per_token, 100.0 * f(row)))
                .collect();
            p = p.with(Series::line_markers(*v, points));
        }
        p
    };
    Figure::new(
        format!(
            "Packed teacher top-k (k = {:?} along each line): error vs f32 targets of the same k",
            r.config.ks
        ),
        1400,
        560,
    )
    .with(panel("mean relative KD-loss error (%)", &|row| row.kl_rel_mean).titled("forward KL"))
    .with(
        panel("mean relative gradient error (%)", &|row| row.grad_rel_mean)
            .titled("gradient |g' - g| / |g|"),
    )
}
