//! The training loop, as a [`Trainer`] with named phases: construction ([`Trainer::new`]:
//! data checked against the tokenizer, the teacher source, the model, the optimizer, the
//! resume state), [`Trainer::step`], [`Trainer::evaluate`], [`Trainer::checkpoint`] and
//! [`Trainer::finish`]; [`Trainer::fit`] runs them in the order of DESIGN.md's data flow.
//!
//! Per optimizer step, each rank takes `accumulation` micro-batches from its reader (the
//! teacher's answers for them were fetched ahead by a background thread), computes
//! `(1 - alpha) * CE + alpha * KD` as a sum over target tokens divided by the step's
//! target-token count over all ranks and micro-batches, back-propagates, all-reduces the
//! gradients (a sum), clips, and applies AdamW. So N ranks with batch B make exactly the
//! update of one rank with batch N*B.
//!
//! Reproducibility: libtorch's RNG (dropout) is re-seeded from `(seed, step)` at every
//! step, student samples use a seeded generator per step, and the data cursor is part of
//! the checkpoint; a resumed run therefore repeats the uninterrupted run bit for bit.

mod log;
mod on_policy;
mod prefetch;
mod setup;
mod step;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use edkd_data::Reader;
use serde::Serialize;
use tch::{Device, Kind};

use crate::checkpoint::{self, TrainerState};
use crate::config::{TeacherKind, TrainConfig};
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use crate::eval::{EvalReport, evaluate};
use crate::loss::KdLoss;
use crate::model::Net;
use crate::optim::{AdamW, Schedule};

use self::log::RunLog;
use self::on_policy::OnPolicy;
use self::prefetch::{Prefetcher, SharedSource, lock};
pub(crate) use self::setup::image_token_id;
pub use self::setup::open_source;
use self::setup::{RunData, Vocabs};

/// How this process runs the job (not part of the job's config).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue from the newest valid checkpoint in `out/checkpoints`.
    pub resume: bool,
    /// With `resume`: when no checkpoint verifies, move them all to
    /// `out/checkpoints/corrupt/` and start over (without it, that is an error).
    pub discard_corrupt: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop (as if interrupted, without a checkpoint) after this many steps of this
    /// process: for tests of resumption.
    pub halt_after: Option<u64>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub steps: u64,
    pub final_eval: Option<EvalReport>,
    pub best: Option<(f64, u64)>,
    pub final_model: PathBuf,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub interrupted: bool,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub ce: f64,
    pub kd: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Real (input + target) tokens per second over all ranks.
    pub tokens_per_s: f64,
    pub target_tokens: f64,
    /// Mean teacher probability mass inside the top-k (1 for a full-vocabulary teacher).
    pub topk_mass: Option<f64>,
    /// Fraction of target positions where the student's and the teacher's argmax agree.
    pub top1_agree: Option<f64>,
    pub on_policy: bool,
    /// The loss or gradient norm was not finite: no update was made.
    pub skipped: bool,
    pub step_s: f64,
    /// Seconds this step waited for data and teacher answers.
    pub wait_s: f64,
    pub time: f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Deterministic per-step seed.
fn step_seed(seed: u64, step: u64, salt: u64) -> u64 {
    let mut x =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Runs (or resumes) a training job; `coll` connects the ranks.
pub fn train(
    cfg: &TrainConfig,
    opts: &RunOptions,
    coll: &mut dyn Collective,
) -> Result<RunSummary> {
    Trainer::new(cfg, opts, coll)?.fit()
}

/// Which phases are due after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub evaluate: bool,
    pub checkpoint: bool,
}

/// A training run between construction and [`Trainer::finish`].
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    coll: &'a mut dyn Collective,
    device: Device,
    lead: bool,
    data: RunData,
    vocabs: Vocabs,
    teacher: Option<SharedSource>,
    net: Net,
    opt: AdamW,
    state: TrainerState,
    prefetch: Prefetcher,
    on_policy: OnPolicy,
    loss: KdLoss,
    schedule: Schedule,
    reducer: dist::GradReducer,
    log: RunLog,
    started: Instant,
    /// Training seconds of earlier processes of this run.
    elapsed_before: f64,
    /// Steps this process has run.
    steps_here: u64,
    /// All ranks agreed to stop after the last step.
    stop_agreed: bool,
    /// Steps of this process skipped for a non-finite loss or gradient norm.
    nonfinite_steps: u64,
    /// Target tokens trained on before this process (for its tokens/s).
    tokens_before: u64,
    interrupted: bool,
}

impl<'a> Trainer<'a> {
    /// Construction: validates the config, opens and checks the data and the teacher,
    /// builds the model and the optimizer, restores the newest checkpoint when resuming,
    /// broadcasts rank 0's weights, and starts the prefetcher.
    pub fn new(
        cfg: &'a TrainConfig,
        opts: &'a RunOptions,
        coll: &'a mut dyn Collective,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = edkd_models::device::parse_device(&cfg.device)?;
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        let (rank, world) = (coll.rank(), coll.world());
        let lead = rank == 0;
        fs::create_dir_all(&opts.out).map_err(Error::io(&opts.out))?;

        let (data, train_ds) = RunData::open(cfg, &opts.out)?;
        setup::check_teacher_images(cfg, &data)?;
        let source = setup::open_viewed_source(cfg, device, &data)?;
        if let Some(src) = &source {
            setup::check_source(src.as_ref(), cfg, &data)?;
        }
        let vocabs = Vocabs::new(data.vocab, source.as_ref().map(|s| s.info().vocab_size));
        let mut net = Net::build(&cfg.model, vocabs.model, device, cfg.seed)?;
        setup::check_model_images(cfg, &data, &net)?;
        if vocabs.kd > net.vocab() {
            return Err(Error::Config(format!(
                "the teacher's vocabulary ({}) is larger than the student's ({})",
                vocabs.kd,
                net.vocab()
            )));
        }
        if cfg.model.precision == "bf16" {
            net.vs_mut().set_kind(Kind::BFloat16);
        }
        let mut opt = AdamW::new(net.vs(), cfg.optim.adamw());
        let root = checkpoint_root(&opts.out);
        if lead {
            let n = checkpoint::remove_stale_temporaries(&root);
            if n > 0 {
                tracing::info!(
                    removed = n,
                    "removed checkpoint temporaries of dead processes"
                );
            }
        }
        let (mut state, cursor) = setup::resume(cfg, opts, &root, &mut net, &mut opt, world)?;
        dist::broadcast_vars(coll, net.vs());
        let description = source.as_ref().map(|s| s.info().description.clone());
        if lead {
            write_run_files(
                cfg,
                &opts.out,
                coll,
                &net,
                description.as_deref(),
                state.step,
            )?;
        }
        tracing::info!(
            parameters = net.num_parameters(),
            steps = cfg.optim.steps,
            world,
            teacher = description
                .as_deref()
                .unwrap_or("none (cross-entropy only)"),
            "training"
        );

        let teacher: Option<SharedSource> = source.map(|s| Arc::new(Mutex::new(s)));
        let reader = Reader::new(train_ds, RunData::reader_config(cfg, rank, world), cursor)?;
        state.cursor = reader.cursor().clone();
        let prefetch = Prefetcher::start(reader, teacher.clone(), cfg.teacher.prefetch);
        let log = RunLog::open(&opts.out, lead, cfg, state.step)?;
        let elapsed_before = state.elapsed_s;
        let tokens_before = state.tokens;
        let stop_agreed = false;
        let mut trainer = Self {
            cfg,
            opts,
            coll,
            device,
            lead,
            data,
            vocabs,
            teacher,
            net,
            opt,
            state,
            prefetch,
            on_policy: OnPolicy::new(cfg, vocabs.sample),
            loss: cfg.loss.kd(),
            schedule: cfg.optim.schedule(),
            reducer: dist::GradReducer::new(),
            log,
            started: Instant::now(),
            elapsed_before,
            steps_here: 0,
            stop_agreed,
            nonfinite_steps: 0,
            tokens_before,
            interrupted: false,
        };
        // A stop requested before the first step is seen by a single process at once;
        // several ranks agree on it through the first step's metric sum.
        trainer.stop_agreed = trainer.coll.world() == 1 && trainer.stop_requested();
        Ok(trainer)
    }

    /// Runs the remaining steps with their evaluations and checkpoints, then finishes.
    pub fn fit(mut self) -> Result<RunSummary> {
        while self.should_continue() {
            let m = self.step()?;
            self.log.step(&m)?;
            let due = self.due();
            if due.evaluate
                && let Some(r) = self.evaluate()?
            {
                self.record_eval(&r, due.checkpoint)?;
            }
            if due.checkpoint {
                self.checkpoint()?;
            }
            self.log.flush()?;
        }
        self.finish()
    }

    /// False once every step is done, or when the run was asked to stop.
    fn should_continue(&mut self) -> bool {
        if self.state.step >= self.cfg.optim.steps {
            return false;
        }
        let halted = self.opts.halt_after.is_some_and(|h| self.steps_here >= h);
        if halted || self.stop_agreed {
            self.interrupted = true;
            return false;
        }
        true
    }

    /// What is due after the step just taken: the last step evaluates and checkpoints.
    pub fn due(&self) -> Due {
        let (step, cfg) = (self.state.step, self.cfg);
        let last = step == cfg.optim.steps;
        let every = |n: u64| n > 0 && step.is_multiple_of(n);
        Due {
            evaluate: last || every(cfg.eval.every),
            checkpoint: last || every(cfg.checkpoint.every),
        }
    }

    /// Validation losses and generation metrics on the evaluation split (rank 0 only;
    /// `None` elsewhere or without an evaluation split). The teacher (unless it is a
    /// cache, which holds training answers only) also gives the validation KD.
    pub fn evaluate(&mut self) -> Result<Option<EvalReport>> {
        let Some(ds) = self.data.eval.as_ref().filter(|_| self.lead) else {
            return Ok(None);
        };
        let mut guard = self
            .teacher
            .as_ref()
            .filter(|_| self.cfg.teacher.kind != TeacherKind::Cache)
            .map(lock);
        let src = guard.as_deref_mut().map(|b| &mut **b as _);
        let r = evaluate(
            &self.net,
            ds,
            src,
            &self.loss,
            &self.cfg.eval,
            self.data.tokenizer.as_ref(),
            self.device,
            self.state.step,
        )?;
        Ok(Some(r))
    }

    /// Logs an evaluation; it becomes the best one if its metric improved and a checkpoint
    /// of this step will exist (`checkpointed`).
    fn record_eval(&mut self, r: &EvalReport, checkpointed: bool) -> Result<()> {
        if let Some((v, higher)) = r.metric(&self.cfg.checkpoint.best_metric) {
            let better = match self.state.best {
                None => true,
                Some((b, _)) => (higher && v > b) || (!higher && v < b),
            };
            if better && checkpointed {
                self.state.best = Some((v, self.state.step));
            }
        }
        self.state.last_eval = Some(serde_json::to_value(r).expect("json"));
        self.log.eval(r)
    }

    /// Writes a checkpoint of this step (rank 0) and prunes old ones; all ranks wait.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.state.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
        if self.lead {
            let root = checkpoint_root(&self.opts.out);
            let tok = self.data.tokenizer_path.as_deref();
            let dir = checkpoint::save(&root, &self.net, &self.opt, &self.state, tok)?;
            let best = self.state.best.map(|(_, s)| s);
            checkpoint::prune(&root, self.cfg.checkpoint.keep_last, best, self.state.step)?;
            tracing::debug!(checkpoint = %dir.display(), "saved");
        }
        self.coll.barrier();
        Ok(())
    }

    /// Stops the prefetcher; an interrupted run keeps its progress in a checkpoint, a
    /// finished one writes the final model and the loss plot.
    pub fn finish(self) -> Result<RunSummary> {
        let Self {
            cfg,
            opts,
            coll,
            lead,
            data,
            net,
            opt,
            mut state,
            prefetch,
            log,
            started,
            elapsed_before,
            tokens_before,
            interrupted,
            ..
        } = self;
        drop(prefetch);
        log.finish_bar();
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let tok = data.tokenizer_path.as_deref();
        if interrupted && lead && opts.halt_after.is_none() && state.step > 0 {
            // Ctrl-C: keep the progress.
            checkpoint::save(&checkpoint_root(&opts.out), &net, &opt, &state, tok)?;
        }
        let final_model = opts.out.join("final");
        if !interrupted && lead {
            net.save(&final_model, tok)?;
            if cfg.log.plot {
                log.plot(&opts.out.join("loss.png"))?;
            }
        }
        coll.barrier();
        let final_eval = state
            .last_eval
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        Ok(RunSummary {
            steps: state.step,
            final_eval,
            best: state.best,
            final_model,
            elapsed_s: state.elapsed_s,
            // This process's tokens over this process's time (not the whole run's tokens).
            tokens_per_s: (state.tokens - tokens_before) as f64
                / started.elapsed().as_secs_f64().max(1e-9),
            interrupted,
        })
    }
}

fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// `config.resolved.toml` and `run.json`: what this run is, next to its outputs.
fn write_run_files(
    cfg: &TrainConfig,
    out: &Path,
    coll: &dyn Collective,
    net: &Net,
    teacher: Option<&str>,
    resumed_from: u64,
) -> Result<()> {
    let resolved = out.join("config.resolved.toml");
    fs::write(&resolved, cfg.to_toml()).map_err(Error::io(&resolved))?;
    let run = serde_json::json!({
        "total_steps": cfg.optim.steps,
        "started": now(),
        "world": coll.world(),
        "collective": coll.describe(),
        "seed": cfg.seed,
        "parameters": net.num_parameters(),
        "model": net.config_json(),
        "teacher": teacher,
        "resumed_from_step": resumed_from,
    });
    let p = out.join("run.json");
    fs::write(&p, serde_json::to_string_pretty(&run).expect("json") + "\n").map_err(Error::io(&p))
}
