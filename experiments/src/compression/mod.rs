//! `edkd experiment compression`: what packing the teacher's top-k costs. Real
//! SmolLM2-135M-Instruct targets (the `kd` experiment's code-summarisation task and chat
//! view, annotated once at k = 128 into a version-1 f32 cache), smaller k derived from them
//! (the dropped entries' mass moved into the tail), and real student logits (the
//! decoder-initialised student of `edkd student init`, untrained, on the same examples).
//! For every packing and k: bytes per target token (packed, and after zstd), and the
//! relative error of the forward-KL KD loss and of its gradient against f32 targets of the
//! same k, per example (its positions' mean) and pooled over all examples.
//!
//! Phases leave their results in the output folder (task, data, cache, student), so a
//! second run skips them.

mod measure;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use edkd_data::packing::{IdOrder, PACKINGS, Packing};
use edkd_data::{CacheReader, Dataset, OpenOptions};
use edkd_models::LoadOptions;
use edkd_models::student::StudentModel;
use edkd_trainer::loss::select_rows;
use edkd_trainer::model::BatchTensors;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::error::{Error, Result};
use crate::kd_real::{KdRealConfig, Source, arms};
pub use measure::Variant;
pub use report::{CompressionReport, Row};

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionConfig {
    /// Work folder: task, data, cache, student (a second run reuses them).
    pub out: PathBuf,
    pub teacher: PathBuf,
    pub python: PathBuf,
    pub sources: Vec<Source>,
    /// Training examples measured.
    pub examples: usize,
    /// Training examples annotated before the measured ones, whose rows give the `freq`
    /// packings their id order (as `edkd teacher annotate` calibrates on a cache's first
    /// examples); not measured.
    pub calibration_examples: usize,
    /// k of the annotation (the largest measured).
    pub annotate_k: usize,
    pub ks: Vec<usize>,
    /// Packing names (`bits-q8`, ...).
    pub packings: Vec<String>,
    pub zstd_level: i32,
    /// Examples per student forward pass.
    pub rows_per_batch: usize,
    /// libtorch threads (0: libtorch's default).
    pub threads: usize,
}

impl CompressionConfig {
    pub fn new(out: PathBuf, teacher: PathBuf, python: PathBuf, sources: Vec<Source>) -> Self {
        Self {
            out,
            teacher,
            python,
            sources,
            examples: 200,
            calibration_examples: 50,
            annotate_k: 128,
            ks: vec![16, 32, 64, 128],
            packings: PACKINGS.iter().map(|p| p.name()).collect(),
            zstd_level: 3,
            rows_per_batch: 8,
            threads: 0,
        }
    }

    fn packings(&self) -> Result<Vec<Packing>> {
        self.packings
            .iter()
            .map(|n| {
                Packing::from_name(n).map_err(|e| Error::Input {
                    field: "packings",
                    msg: e.to_string(),
                })
            })
            .collect()
    }

    fn check(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::Input { field, msg });
        if self.examples == 0 || self.rows_per_batch == 0 {
            return bad(
                "examples",
                "examples and rows per batch must be positive".into(),
            );
        }
        if let Some(&k) = self.ks.iter().find(|&&k| k == 0 || k > self.annotate_k) {
            return bad(
                "ks",
                format!("{k} is outside 1..={} (the annotated k)", self.annotate_k),
            );
        }
        if self.sources.is_empty() {
            return bad("sources", "no source trees given".into());
        }
        let packings = self.packings()?;
        if self.calibration_examples == 0 && packings.iter().any(|p| p.needs_order()) {
            return bad(
                "calibration_examples",
                "freq packings need calibration examples for their id order".into(),
            );
        }
        Ok(())
    }

    /// The `kd` experiment's cpu preset, cut to this experiment: `examples` training
    /// functions, a few held-out ones (the task builder wants them), annotation at
    /// `annotate_k`, no random-init students.
    fn kd_config(&self) -> Result<KdRealConfig> {
        let mut kd = KdRealConfig::preset("cpu", &self.out, &self.teacher, &self.python)?;
        kd.sources = self.sources.clone();
        kd.task.train_examples = self.calibration_examples + self.examples;
        kd.task.validation_examples = HELD_OUT_EXAMPLES;
        kd.task.test_examples = HELD_OUT_EXAMPLES;
        kd.top_k = self.annotate_k;
        kd.random_seeds.clear();
        kd.threads = self.threads;
        Ok(kd)
    }
}

/// Validation and test examples the task builder must make (unused here).
const HELD_OUT_EXAMPLES: usize = 10;

/// Sums of one (variant, k) cell over examples.
#[derive(Debug, Default, Clone)]
struct Cell {
    bytes: usize,
    zstd_bytes: usize,
    errors: Vec<measure::Errors>,
    /// `sum KL * positions` of the compressed and of the reference targets.
    pooled: (f64, f64),
    /// Relative KL error against the f32 targets at the largest k, per example.
    vs_largest: Vec<f64>,
}

/// Annotates (once), then measures every variant at every k; writes nothing but the work
/// folder's phases (the caller writes the report).
pub fn run(cfg: &CompressionConfig, command: &str) -> Result<CompressionReport> {
    cfg.check()?;
    let started = Instant::now();
    let load_before = report::load_average();
    let builds_before = report::compilers_running();
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let kd = cfg.kd_config()?;
    let files = arms::Files::new(&cfg.out);
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    let phase = |name: &str| eprintln!("[compression] {name} ...");
    phase("teacher tokenizer");
    let tokenizer = arms::teacher_tokenizer(&kd, &files)?;
    phase("task: extract, filter, split");
    arms::build_task(&kd, &files, &tokenizer)?;
    phase("prepare data");
    arms::prepare_data(&kd, &files, &tokenizer)?;
    phase(&format!("teacher annotation at k {}", cfg.annotate_k));
    let t0 = Instant::now();
    arms::annotate(&kd, &files, &cfg.teacher, Device::Cpu)?;
    let annotate_s = t0.elapsed().as_secs_f64();
    phase("student init from the teacher");
    arms::init_student(&kd, &files)?;
    phase("measure");
    let t0 = Instant::now();
    let measured = measure_all(cfg, &files)?;
    Ok(CompressionReport::build(report::Inputs {
        config: cfg.clone(),
        command: command.to_owned(),
        measured,
        annotate_s,
        measure_s: t0.elapsed().as_secs_f64(),
        elapsed_s: started.elapsed().as_secs_f64(),
        load: (load_before, report::load_average()),
        builds: (builds_before, report::compilers_running()),
        student: files.decoder_init().display().to_string(),
        encoder_layers: kd.encoder_layers.clone(),
        decoder_layers: kd.decoder_layers.clone(),
    }))
}

/// What [`measure_all`] found.
pub struct Measured {
    pub examples: usize,
    pub positions: usize,
    pub vocab: usize,
    pub temperature: f32,
    /// Mean reference KL per example, per k.
    pub reference_kl: Vec<(usize, f64)>,
    pub rows: Vec<Row>,
}

fn measure_all(cfg: &CompressionConfig, files: &arms::Files) -> Result<Measured> {
    let cache = CacheReader::open(&files.cache())?;
    let ds = Dataset::open(&files.main_data(), &OpenOptions::new("train"))?;
    let specials = ds.manifest.tokenizer.special_ids;
    let student = StudentModel::load(
        &files.decoder_init(),
        LoadOptions {
            device: Device::Cpu,
            kind: Kind::Float,
        },
    )?;
    let vocab = ds.manifest.tokenizer.vocab_size;
    let temperature = cache.meta().temperature;
    let mut variants = vec![Variant::F32, Variant::WireF16];
    variants.extend(cfg.packings()?.into_iter().map(Variant::Packed));
    let largest = *cfg.ks.iter().max().expect("checked: ks not empty");
    let mut cells = vec![vec![Cell::default(); cfg.ks.len()]; variants.len()];
    let mut reference_sum = vec![0.0; cfg.ks.len()];
    let (mut examples, mut positions) = (0, 0);
    let calib = (ds.len() as usize).min(cfg.calibration_examples);
    let n = (ds.len() as usize).min(calib + cfg.examples);
    // The freq packings' order at each k: the calibration examples' rows cut to k.
    let mut orders = Vec::with_capacity(cfg.ks.len());
    let calib_rows = (0..calib)
        .map(|i| {
            let id = ds.example(i as u64).id;
            cache.get(id)?.ok_or_else(|| Error::Measurement {
                what: "cache",
                msg: format!("no entry for calibration example `{id}`"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let big = cache.meta().k;
    for &k in &cfg.ks {
        let rows = calib_rows
            .iter()
            .flat_map(|r| r.entry().topk_ids.chunks(big).map(move |c| &c[..k]));
        orders.push(
            IdOrder::from_rows(vocab, rows).map_err(|e| Error::Measurement {
                what: "id order",
                msg: e.to_string(),
            })?,
        );
    }
    let _no_grad = tch::no_grad_guard();
    for start in (calib..n).step_by(cfg.rows_per_batch) {
        let idx: Vec<u64> = (start..(start + cfg.rows_per_batch).min(n))
            .map(|i| i as u64)
            .collect();
        let batch = edkd_data::batch::collate(&ds, &idx, specials, false)?;
        let t = BatchTensors::new(&batch, Device::Cpu);
        let m = &student.model;
        let enc = m.encode(&t.encoder_ids, &t.encoder_mask, false);
        let hidden = m.decode(&t.decoder_input_ids, &enc, None, false);
        let logits = m.logits(&select_rows(&hidden, &t.decoder_mask)); // [n, V]
        let mut offset = 0i64;
        for (r, id) in batch.ids.iter().enumerate() {
            let row = cache.get(id)?.ok_or_else(|| Error::Measurement {
                what: "cache",
                msg: format!("no entry for `{id}`"),
            })?;
            let e = row.entry();
            let p = e.positions();
            let want = (0..batch.dec_len)
                .filter(|&j| batch.decoder_mask[r * batch.dec_len + j])
                .count();
            if p != want {
                return Err(Error::Measurement {
                    what: "cache",
                    msg: format!("`{id}` has {p} positions, the batch {want}"),
                });
            }
            let z = logits.narrow(0, offset, p as i64).to_kind(Kind::Float);
            offset += p as i64;
            let full = edkd_data::packing::Targets {
                k: cache.meta().k,
                topk_ids: e.topk_ids.to_vec(),
                topk_logprobs: e.topk_logprobs.to_vec(),
                tail_logmass: e.tail_logmass.to_vec(),
                gold_logprob: e.gold_logprob.to_vec(),
            };
            tch::with_grad(|| -> Result<()> {
                let top = measure::truncate(&full, largest);
                let top_ref = measure::kd_and_grad(&z, &top, temperature as f64, vocab as i64);
                for (ki, &k) in cfg.ks.iter().enumerate() {
                    let t_k = measure::truncate(&full, k);
                    let reference =
                        measure::kd_and_grad(&z, &t_k, temperature as f64, vocab as i64);
                    reference_sum[ki] += reference.kl;
                    for (vi, &variant) in variants.iter().enumerate() {
                        let order = Some(&orders[ki]);
                        let (back, bytes) = measure::through(&t_k, variant, vocab, order)?;
                        let got = measure::kd_and_grad(&z, &back, temperature as f64, vocab as i64);
                        let cell = &mut cells[vi][ki];
                        cell.bytes += bytes;
                        cell.zstd_bytes += match variant {
                            Variant::Packed(p) => {
                                measure::zstd_bytes(&t_k, p, vocab, order, cfg.zstd_level)?
                            }
                            _ => bytes,
                        };
                        cell.errors.push(measure::errors(&reference, &got));
                        cell.pooled.0 += got.kl * p as f64;
                        cell.pooled.1 += reference.kl * p as f64;
                        cell.vs_largest.push(
                            (got.kl - top_ref.kl).abs() / top_ref.kl.abs().max(f64::MIN_POSITIVE),
                        );
                    }
                }
                Ok(())
            })?;
            examples += 1;
            positions += p;
        }
        eprintln!(
            "[compression] measured {examples} of {} examples",
            n - calib
        );
    }
    let mut rows = Vec::new();
    for (vi, variant) in variants.iter().enumerate() {
        for (ki, &k) in cfg.ks.iter().enumerate() {
            rows.push(Row::from_cell(variant, k, &cells[vi][ki], positions));
        }
    }
    Ok(Measured {
        examples,
        positions,
        vocab,
        temperature,
        reference_kl: cfg
            .ks
            .iter()
            .zip(&reference_sum)
            .map(|(&k, s)| (k, s / examples.max(1) as f64))
            .collect(),
        rows,
    })
}

impl Row {
    fn from_cell(variant: &Variant, k: usize, c: &Cell, positions: usize) -> Self {
        let mean = |f: &dyn Fn(&measure::Errors) -> f64| {
            c.errors.iter().map(f).sum::<f64>() / c.errors.len().max(1) as f64
        };
        let max = |f: &dyn Fn(&measure::Errors) -> f64| c.errors.iter().map(f).fold(0.0, f64::max);
        let per_token = |b: usize| b as f64 / positions.max(1) as f64;
        Row {
            variant: variant.name(),
            packed: matches!(variant, Variant::Packed(_)),
            k,
            bytes_per_token: per_token(c.bytes),
            zstd_bytes_per_token: per_token(c.zstd_bytes),
            kl_rel_mean: mean(&|e| e.kl_rel),
            kl_rel_max: max(&|e| e.kl_rel),
            kl_abs_mean: mean(&|e| e.kl_abs),
            grad_norm_rel_mean: mean(&|e| e.grad_norm_rel),
            grad_norm_rel_max: max(&|e| e.grad_norm_rel),
            grad_rel_mean: mean(&|e| e.grad_rel),
            grad_rel_max: max(&|e| e.grad_rel),
            pooled_kl_rel: if c.pooled.1 > 0.0 {
                (c.pooled.0 - c.pooled.1).abs() / c.pooled.1
            } else {
                0.0
            },
            vs_largest_k_kl_rel_mean: c.vs_largest.iter().sum::<f64>()
                / c.vs_largest.len().max(1) as f64,
        }
    }
}
