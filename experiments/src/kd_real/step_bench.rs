//! Where a student's training step goes at a 49k vocabulary: the step split at detach
//! boundaries into the model body (encoder + decoder), the LM head and the loss, forward
//! and backward each, for the loss as it was (LM head over every decoder position, a
//! log-softmax for CE and another for KD, the top-k tail from a second full-vocabulary
//! copy) and as it is (LM head over target rows only, one log-softmax for both terms, the
//! tail from the top-k mass), and with the LM head's matmul in bf16.
//!
//! Each backward part is driven through a surrogate `sum(out * grad)`, which adds one
//! elementwise pass over that part's output to it.
//!
//! A measurement: run it on a quiet machine (`max_load`); the report states the load.

use std::path::PathBuf;
use std::time::Instant;

use edkd_models::LoadOptions;
use edkd_models::student::StudentModel;
use edkd_trainer::loss::{Divergence, KdLoss, TeacherTargets, select_rows};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// What to time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepBenchConfig {
    /// A student folder (e.g. the experiment's `students/decoder-init`).
    pub student: PathBuf,
    pub rows: i64,
    pub enc_len: i64,
    /// Longest target (+ eos); rows have between half of it and all of it.
    pub dec_len: i64,
    pub top_k: i64,
    pub repeats: usize,
    pub threads: i32,
    /// Refuse to measure above this 1-minute load average.
    pub max_load: f64,
}

/// Median seconds of each part of one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Split {
    pub body_forward: f64,
    pub head_forward: f64,
    pub loss_forward: f64,
    pub loss_backward: f64,
    pub head_backward: f64,
    pub body_backward: f64,
}

impl Split {
    pub fn total(&self) -> f64 {
        self.body_forward
            + self.head_forward
            + self.loss_forward
            + self.loss_backward
            + self.head_backward
            + self.body_backward
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepBenchReport {
    pub config: StepBenchConfig,
    pub vocab: i64,
    pub parameters: i64,
    pub target_rows: i64,
    pub decoder_positions: i64,
    pub load_before: f64,
    pub load_after: f64,
    /// (variant, split).
    pub variants: Vec<(String, Split)>,
}

use crate::host::load_average;

/// The loss as `KdLoss::total` computed it before: CE and KD each with their own
/// log-softmax, the student's tail a logsumexp over a scattered full-vocabulary copy.
fn loss_before(
    z: &Tensor,
    labels: &Tensor,
    ids: &Tensor,
    logprobs: &Tensor,
    tail: &Tensor,
    alpha: f64,
) -> Tensor {
    let log_q_ce = z.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let ce = (-log_q_ce.gather(-1, &labels.unsqueeze(-1), false)).mean(Kind::Float);
    let log_q = z.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let log_q_top = log_q.gather(-1, ids, false);
    let outside = log_q.scatter_value(-1, ids, f64::NEG_INFINITY);
    let log_q_tail = outside.logsumexp([-1], true);
    let log_p = Tensor::cat(&[logprobs.shallow_clone(), tail.unsqueeze(-1)], -1);
    let log_q = Tensor::cat(&[log_q_top, log_q_tail], -1);
    let kd = Divergence::ForwardKl.rows(&log_p, &log_q).mean(Kind::Float);
    ce * (1.0 - alpha) + kd * alpha
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Before,
    After,
    AfterBf16Head,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Before => "before: head on all positions, two log-softmaxes, scattered tail",
            Variant::After => "after: head on target rows, one log-softmax, tail from top-k mass",
            Variant::AfterBf16Head => "after + LM head matmul in bf16",
        }
    }
}

pub fn run(cfg: &StepBenchConfig) -> Result<StepBenchReport> {
    let load_before = load_average();
    if load_before > cfg.max_load {
        return Err(Error::Input {
            field: "machine",
            msg: format!(
                "load average {load_before:.2} is above {}: timings would not be the step's \
                 own; rerun on a quiet machine (or raise --max-load)",
                cfg.max_load
            ),
        });
    }
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads);
    }
    tch::manual_seed(0);
    let s = StudentModel::load(&cfg.student, LoadOptions::default())?;
    let m = &s.model;
    let v = m.config.vocab_size;
    let (b, te, td) = (cfg.rows, cfg.enc_len, cfg.dec_len);
    let enc = Tensor::randint(v, [b, te], (Kind::Int64, Device::Cpu));
    let enc_valid = Tensor::ones([b, te], (Kind::Bool, Device::Cpu));
    let dec = Tensor::randint(v, [b, td], (Kind::Int64, Device::Cpu));
    // Row r has td/2 + r*(td/2)/b real targets: about a quarter of the positions are padding.
    let lens: Vec<i64> = (0..b)
        .map(|r| td / 2 + r * (td / 2) / b.max(1) + 1)
        .collect();
    let mask = Tensor::stack(
        &lens
            .iter()
            .map(|&l| Tensor::arange(td, (Kind::Int64, Device::Cpu)).lt(l.min(td)))
            .collect::<Vec<_>>(),
        0,
    );
    let n = mask.sum(Kind::Int64).int64_value(&[]);
    let labels = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
    let raw = Tensor::randn([n, v], (Kind::Float, Device::Cpu)) * 3.0;
    let (top, ids) = raw
        .log_softmax(-1, Kind::Float)
        .topk(cfg.top_k, -1, true, true);
    let tail = (-top.logsumexp([-1], false).exp()).log1p();
    let targets = TeacherTargets::TopK {
        ids: ids.shallow_clone(),
        logprobs: top.shallow_clone(),
        tail_logmass: tail.shallow_clone(),
    };
    let loss = KdLoss {
        divergence: Divergence::ForwardKl,
        temperature: 1.0,
        alpha: 0.5,
        label_smoothing: 0.0,
    };
    let embed =
        s.vs.variables()
            .remove("embed_tokens.weight")
            .ok_or_else(|| Error::Input {
                field: "student",
                msg: "no embed_tokens.weight".into(),
            })?;
    let tied = m.config.tie_word_embeddings;

    let mut variants = Vec::new();
    for variant in [Variant::Before, Variant::After, Variant::AfterBf16Head] {
        if variant == Variant::AfterBf16Head && !tied {
            continue; // the bf16 head below is written for the tied embedding
        }
        let mut parts: [Vec<f64>; 6] = Default::default();
        for rep in 0..cfg.repeats + 1 {
            let mut t = [0.0; 6];
            let clock = Instant::now();
            let e = m.encode(&enc, &enc_valid, true);
            let hidden = m.decode(&dec, &e, None, true);
            t[0] = clock.elapsed().as_secs_f64();

            let h = hidden.detach().set_requires_grad(true);
            let clock = Instant::now();
            let head_in = if variant == Variant::Before {
                h.shallow_clone()
            } else {
                select_rows(&h, &mask)
            };
            let logits = match variant {
                Variant::AfterBf16Head => head_in
                    .to_kind(Kind::BFloat16)
                    .matmul(&embed.to_kind(Kind::BFloat16).tr())
                    .to_kind(Kind::Float),
                _ => m.logits(&head_in),
            };
            t[1] = clock.elapsed().as_secs_f64();

            let z = logits.detach().set_requires_grad(true);
            let clock = Instant::now();
            let total = match variant {
                Variant::Before => {
                    let rows = select_rows(&z, &mask);
                    loss_before(&rows, &labels, &ids, &top, &tail, loss.alpha)
                }
                _ => loss.total_rows(&z, &labels, Some((&targets, v))).total,
            };
            t[2] = clock.elapsed().as_secs_f64();

            let clock = Instant::now();
            total.backward();
            t[3] = clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            (&logits * z.grad()).sum(Kind::Float).backward();
            t[4] = clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            (&hidden * h.grad()).sum(Kind::Float).backward();
            t[5] = clock.elapsed().as_secs_f64();
            s.vs.variables().values().for_each(|p| {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            });
            if rep > 0 {
                // The first repeat warms up the allocator and the kernels.
                for (k, x) in t.iter().enumerate() {
                    parts[k].push(*x);
                }
            }
        }
        let [a, b2, c, d, e, f] = parts.map(median);
        variants.push((
            variant.name().to_owned(),
            Split {
                body_forward: a,
                head_forward: b2,
                loss_forward: c,
                loss_backward: d,
                head_backward: e,
                body_backward: f,
            },
        ));
    }
    Ok(StepBenchReport {
        config: cfg.clone(),
        vocab: v,
        parameters: s.num_parameters(),
        target_rows: n,
        decoder_positions: b * td,
        load_before,
        load_after: load_average(),
        variants,
    })
}

/// The report as a markdown table (milliseconds).
pub fn table(r: &StepBenchReport) -> String {
    let ms = |x: f64| format!("{:.0}", x * 1e3);
    let mut s = format!(
        "Student step at vocabulary {} ({:.1}M parameters), {} rows x ({} input + {} decoder \
         positions, {} of them targets), top-{} KD, {} threads; load average {:.2} before, \
         {:.2} after. Medians of {} repeats, milliseconds.\n\n| variant | body fwd | head fwd | \
         loss fwd | loss bwd | head bwd | body bwd | step |\n|---|---|---|---|---|---|---|---|\n",
        r.vocab,
        r.parameters as f64 / 1e6,
        r.config.rows,
        r.config.enc_len,
        r.config.dec_len,
        r.target_rows,
        r.config.top_k,
        tch::get_num_threads(),
        r.load_before,
        r.load_after,
        r.config.repeats
    );
    for (name, p) in &r.variants {
        s += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            ms(p.body_forward),
            ms(p.head_forward),
            ms(p.loss_forward),
            ms(p.loss_backward),
            ms(p.head_backward),
            ms(p.body_backward),
            ms(p.total())
        );
    }
    s
}
