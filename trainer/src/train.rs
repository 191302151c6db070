//! The training loop.
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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edkd_data::{Batch, Cursor, Dataset, Reader, ReaderConfig};
use edkd_models::Tokenizer;
use edkd_models::generate::GenerationConfig;
use edkd_models::sampling::Sampling;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TrainerState};
use crate::config::{TeacherKind, TrainConfig};
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use crate::eval::{EvalReport, evaluate};
use crate::model::{BatchTensors, Net, Vocab};
use crate::observe::EventWriter;
use crate::optim::AdamW;
use crate::source::{self, TeacherOut, TeacherSource};

/// How this process runs the job (not part of the job's config).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue from the newest valid checkpoint in `out/checkpoints`.
    pub resume: bool,
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

/// Parses `cpu` / `cuda` / `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::Config(format!("device `{s}`: expected cpu, cuda or cuda:N"))),
    }
}

type Shared = Arc<Mutex<Box<dyn TeacherSource>>>;

/// A batch with its teacher answer and the reader's cursor after it.
struct Fetched {
    batch: Batch,
    teacher: Option<Result<TeacherOut>>,
    cursor: Cursor,
    /// The reader finished an epoch before this batch.
    epoch: u64,
}

/// Reads batches and asks the teacher about them ahead of the training step.
struct Prefetcher {
    rx: Receiver<Fetched>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    fn start(mut reader: Reader, teacher: Option<Shared>, depth: usize) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("edkd-prefetch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let batch = match reader.next_batch() {
                        Some(b) => b,
                        None => continue, // epoch boundary: the next call starts a new one
                    };
                    let cursor = reader.cursor().clone();
                    let epoch = reader.epoch();
                    let teacher = teacher.as_ref().filter(|_| batch.rows > 0).map(|t| {
                        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                        t.score(&batch)
                    });
                    let item = Fetched {
                        batch,
                        teacher,
                        cursor,
                        epoch,
                    };
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn prefetch thread");
        Self {
            rx,
            stop,
            handle: Some(handle),
        }
    }

    fn next(&self) -> Result<Fetched> {
        self.rx
            .recv()
            .map_err(|_| Error::Source("the data/teacher prefetch thread stopped".into()))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a send waiting for room.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

/// Opens the configured teacher source.
/// `vocab` is the tokenizer's size (the cache cannot tell the teacher's).
pub fn open_source(
    cfg: &TrainConfig,
    device: Device,
    vocab: i64,
) -> Result<Option<Box<dyn TeacherSource>>> {
    let t = &cfg.teacher;
    Ok(match t.kind {
        TeacherKind::None => None,
        TeacherKind::Model => Some(Box::new(source::InProcess::load(
            t.model.as_deref().expect("validated"),
            device,
        )?)),
        TeacherKind::Cache => Some(Box::new(source::Cache::open(
            t.cache.as_deref().expect("validated"),
            vocab,
        )?)),
        TeacherKind::Remote => {
            let token = match &t.auth_token_file {
                Some(p) => Some(
                    fs::read_to_string(p)
                        .map_err(Error::io(p))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            Some(Box::new(source::Remote::connect(source::RemoteConfig {
                addr: t.addr.clone(),
                top_k: t.top_k,
                temperature: cfg.loss.temperature as f32,
                auth_token: token,
                timeout: Duration::from_secs_f64(t.timeout_s),
            })?))
        }
    })
}

/// The tokenizer file the run uses: configured, or the teacher folder's.
fn tokenizer_path(cfg: &TrainConfig) -> Option<PathBuf> {
    if let Some(p) = &cfg.data.tokenizer {
        return Some(p.clone());
    }
    for dir in [&cfg.teacher.model, &cfg.model.init].into_iter().flatten() {
        let p = dir.join("tokenizer.json");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// Appends JSON lines, flushed per line (a reader never sees half a record unless the
/// process dies mid-write).
struct JsonLines(File);

impl JsonLines {
    fn open(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        Ok(Self(f))
    }
    fn write<T: Serialize>(&mut self, v: &T) {
        let line = serde_json::to_string(v).expect("serialises") + "\n";
        let _ = self.0.write_all(line.as_bytes());
    }
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
    cfg.validate()?;
    let device = parse_device(&cfg.device)?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let (rank, world) = (coll.rank(), coll.world());
    let lead = rank == 0;
    let out = &opts.out;
    let ckpt_root = out.join("checkpoints");
    fs::create_dir_all(out).map_err(Error::io(out))?;

    // Data and tokenizer, checked against each other.
    let tok_path = tokenizer_path(cfg);
    let tokenizer = match &tok_path {
        Some(p) => Some(Tokenizer::from_file(p)?),
        None => None,
    };
    let mut open = edkd_data::OpenOptions::new(&cfg.data.train_split);
    open.verify = edkd_data::Verify::RowCounts;
    open.expect_tokenizer_sha256 = tokenizer.as_ref().map(|t| t.sha256().to_owned());
    let train_ds = Dataset::open(&cfg.data.manifest, &open)?;
    let eval_ds = if train_ds.manifest.splits.contains_key(&cfg.data.eval_split) {
        let mut o = open.clone();
        o.split = cfg.data.eval_split.clone();
        Some(Dataset::open(&cfg.data.manifest, &o)?)
    } else {
        None
    };
    let manifest_sha = train_ds.manifest.tokenizer.sha256.clone();
    let specials = train_ds.manifest.tokenizer.special_ids;
    let vocab = Vocab {
        size: train_ds.manifest.tokenizer.vocab_size as i64,
        pad: specials.pad as i64,
        bos: specials.bos as i64,
        eos: specials.eos as i64,
    };

    // Teacher, refused when it speaks another tokenizer.
    let source = open_source(cfg, device, vocab.size)?;
    if let Some(src) = &source {
        let info = src.info();
        match &info.tokenizer_sha256 {
            Some(sha) if !sha.eq_ignore_ascii_case(&manifest_sha) => {
                return Err(Error::Config(format!(
                    "{}: its tokenizer (sha256 {sha}) differs from the data's ({manifest_sha}, \
                     in {}); prepare the data with the teacher's tokenizer",
                    info.description,
                    cfg.data.manifest.display()
                )));
            }
            None => tracing::warn!(
                teacher = %info.description,
                "the teacher does not report a tokenizer sha256; cannot check it against the data"
            ),
            _ => {}
        }
        if let Some(t) = info.temperature
            && (t as f64 - cfg.loss.temperature).abs() > 1e-6
        {
            return Err(Error::Config(format!(
                "{}: log-probs at temperature {t}, but loss.temperature = {}",
                info.description, cfg.loss.temperature
            )));
        }
    }
    // The student covers the teacher's whole vocabulary (teachers often pad theirs past
    // the tokenizer); the KD term compares the first `kd_vocab` columns only.
    let kd_vocab = source
        .as_ref()
        .map(|s| s.info().vocab_size)
        .unwrap_or(vocab.size);
    let model_vocab = Vocab {
        size: vocab.size.max(kd_vocab),
        ..vocab
    };
    // On-policy samples must be ids the tokenizer has and the teacher can read.
    let sample_vocab = vocab.size.min(kd_vocab);
    let mut net = Net::build(&cfg.model, model_vocab, device, cfg.seed)?;
    if kd_vocab > net.vocab() {
        return Err(Error::Config(format!(
            "the teacher's vocabulary ({kd_vocab}) is larger than the student's ({})",
            net.vocab()
        )));
    }
    if cfg.model.precision == "bf16" {
        net.vs_mut().set_kind(Kind::BFloat16);
    }
    let mut opt = AdamW::new(net.vs(), cfg.optim.adamw());
    let mut state = TrainerState {
        step: 0,
        total_steps: cfg.optim.steps,
        seed: cfg.seed,
        cursor: Cursor {
            epoch: 0,
            window: 0,
            batch: 0,
            examples_done: 0,
            layout: String::new(),
        },
        world,
        tokens: 0,
        elapsed_s: 0.0,
        best: None,
        last_eval: None,
    };
    let mut resumed_cursor = None;
    if opts.resume {
        let found = checkpoint::latest_valid(&ckpt_root, |e| {
            tracing::warn!("skipping a checkpoint that does not verify: {e}");
        });
        match found {
            Some((dir, st)) => {
                checkpoint::restore(&dir, &mut net, &mut opt)?;
                tracing::info!(checkpoint = %dir.display(), step = st.step, "resuming");
                resumed_cursor = Some(st.cursor.clone());
                state = TrainerState {
                    total_steps: cfg.optim.steps,
                    world,
                    ..st
                };
            }
            None => tracing::info!("--resume: no checkpoint yet, starting from scratch"),
        }
    } else if !checkpoint::list(&ckpt_root).is_empty() {
        return Err(Error::Config(format!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose \
             another output folder",
            ckpt_root.display()
        )));
    }
    dist::broadcast_vars(coll, net.vs());

    if lead {
        let resolved = out.join("config.resolved.toml");
        fs::write(&resolved, cfg.to_toml()).map_err(Error::io(&resolved))?;
        let run = serde_json::json!({
            "total_steps": cfg.optim.steps,
            "started": now(),
            "world": world,
            "collective": coll.describe(),
            "seed": cfg.seed,
            "parameters": net.num_parameters(),
            "model": net.config_json(),
            "teacher": source.as_ref().map(|s| s.info().description.clone()),
            "resumed_from_step": state.step,
        });
        let p = out.join("run.json");
        fs::write(&p, serde_json::to_string_pretty(&run).expect("json") + "\n")
            .map_err(Error::io(&p))?;
    }
    tracing::info!(
        parameters = net.num_parameters(),
        steps = cfg.optim.steps,
        world,
        teacher = source
            .as_ref()
            .map(|s| s.info().description.clone())
            .unwrap_or_else(|| "none (cross-entropy only)".into()),
        "training"
    );

    let shared: Option<Shared> = source.map(|s| Arc::new(Mutex::new(s)));
    let reader_cfg = ReaderConfig {
        rank,
        world,
        seed: cfg.seed,
        max_tokens: cfg.batch.max_tokens,
        max_rows: cfg.batch.max_rows,
        bucket_window: if cfg.batch.bucket_window == 0 {
            1
        } else {
            cfg.batch.bucket_window
        },
        bucket_by_length: cfg.batch.bucket_window > 0,
        shuffle: cfg.batch.shuffle,
        teacher: true,
    };
    let reader = Reader::new(train_ds, reader_cfg, resumed_cursor)?;
    state.cursor = reader.cursor().clone();
    let prefetch = Prefetcher::start(reader, shared.clone(), cfg.teacher.prefetch);

    let mut metrics = if lead {
        Some(JsonLines::open(&out.join("metrics.jsonl"))?)
    } else {
        None
    };
    let mut evals = if lead {
        Some(JsonLines::open(&out.join("eval.jsonl"))?)
    } else {
        None
    };
    let mut events = if lead && cfg.log.tensorboard {
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
        bar.set_position(state.step);
        bar
    } else {
        ProgressBar::hidden()
    };

    let loss = cfg.loss.kd();
    let schedule = cfg.optim.schedule();
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut steps_here = 0u64;
    let mut interrupted = false;
    let mut reducer = dist::GradReducer::new();
    // A stop request (Ctrl-C, SIGTERM) reaches ranks at different moments; ranks agree on
    // it through the per-step metric sum, so they all stop after the same step.
    let stop_requested = || {
        opts.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    let mut stop_agreed = coll.world() == 1 && stop_requested();
    let mut history: Vec<(f64, f64)> = Vec::new();
    let mut eval_history: Vec<(f64, f64)> = Vec::new();

    let evaluate_now = |net: &Net, step: u64| -> Result<Option<EvalReport>> {
        let Some(ds) = eval_ds.as_ref() else {
            return Ok(None);
        };
        let mut guard = shared
            .as_ref()
            .filter(|_| cfg.teacher.kind != TeacherKind::Cache)
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
        let src: Option<&mut (dyn TeacherSource + '_)> = match guard.as_deref_mut() {
            Some(b) => Some(&mut **b),
            None => None,
        };
        let r = evaluate(
            net,
            ds,
            src,
            &loss,
            &cfg.eval,
            tokenizer.as_ref(),
            device,
            step,
        )?;
        Ok(Some(r))
    };

    while state.step < cfg.optim.steps {
        if opts.halt_after.is_some_and(|h| steps_here >= h) {
            interrupted = true;
            break;
        }
        if stop_agreed {
            interrupted = true;
            break;
        }
        let step = state.step;
        let t0 = Instant::now();
        tch::manual_seed(step_seed(cfg.seed, step, 1) as i64);
        let on_policy = cfg.loss.on_policy_fraction > 0.0
            && shared.is_some()
            && (step_seed(cfg.seed, step, 2) as f64 / u64::MAX as f64)
                < cfg.loss.on_policy_fraction;

        // Gather the step's micro-batches (already scored by the prefetcher).
        let mut micro = Vec::with_capacity(cfg.optim.accumulation);
        for _ in 0..cfg.optim.accumulation {
            let f = prefetch.next()?;
            state.cursor = f.cursor.clone();
            let _ = f.epoch;
            micro.push(f);
        }
        let wait_s = t0.elapsed().as_secs_f64();
        let local_tokens: f64 = micro
            .iter()
            .map(|f| f.batch.decoder_mask.iter().filter(|&&m| m).count() as f64)
            .sum();
        let real_tokens: f64 = micro
            .iter()
            .filter(|f| f.batch.rows > 0)
            .map(|f| f.batch.real_tokens() as f64)
            .sum();

        // On-policy: the student samples, the teacher scores prompt ++ sample.
        let mut sampled: Vec<Option<(Batch, TeacherOut)>> = Vec::new();
        let mut sample_tokens = 0.0;
        if on_policy {
            for (i, f) in micro.iter().enumerate() {
                if f.batch.rows == 0 {
                    sampled.push(None);
                    continue;
                }
                let b = sample_batch(
                    &net,
                    &f.batch,
                    cfg,
                    step_seed(cfg.seed, step, 10 + i as u64),
                    sample_vocab,
                )?;
                let shared = shared.as_ref().expect("on-policy needs a teacher");
                let out = shared.lock().unwrap_or_else(|p| p.into_inner()).score(&b)?;
                sample_tokens += b.decoder_mask.iter().filter(|&&m| m).count() as f64;
                sampled.push(Some((b, out)));
            }
        }
        let mut counts = [local_tokens, sample_tokens, real_tokens];
        dist::sum_f64(coll, &mut counts);
        let [global_tokens, global_samples, global_real] = counts;

        let (mut ce_sum, mut kd_sum, mut mass_sum, mut agree_sum, mut kd_tokens) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, f) in micro.into_iter().enumerate() {
            if f.batch.rows == 0 {
                continue;
            }
            let t = BatchTensors::new(&f.batch, device);
            let logits = net.logits(&t, true);
            let n = f.batch.decoder_mask.iter().filter(|&&m| m).count() as f64;
            let teacher = match f.teacher {
                Some(r) => Some(r?),
                None => None,
            };
            if on_policy {
                let ce = loss.cross_entropy(
                    &crate::loss::select_rows(&logits, &t.decoder_mask),
                    &t.labels.masked_select(&t.decoder_mask),
                );
                let mut total = &ce * ((1.0 - loss.alpha) * n / global_tokens);
                ce_sum += ce.double_value(&[]) * n;
                if let Some(Some((sb, out))) = sampled.get(i) {
                    let st = BatchTensors::new(sb, device);
                    let s_logits = net.logits(&st, true);
                    let (targets, stats) = out.targets(&st.decoder_mask, device);
                    let z = crate::loss::select_rows(&s_logits, &st.decoder_mask);
                    let kd = loss.distill(&z, &targets, kd_vocab);
                    let ns = sb.decoder_mask.iter().filter(|&&m| m).count() as f64;
                    total += &kd * (loss.alpha * ns / global_samples.max(1.0));
                    kd_sum += kd.double_value(&[]) * ns;
                    kd_tokens += ns;
                    mass_sum += stats.topk_mass * ns;
                    agree_sum += agreement(&z, &stats.top1) * ns;
                }
                total.backward();
            } else {
                let tt = teacher.as_ref().map(|o| o.targets(&t.decoder_mask, device));
                let parts = loss.total(
                    &logits,
                    &t.labels,
                    &t.decoder_mask,
                    tt.as_ref().map(|(x, _)| (x, kd_vocab)),
                );
                (parts.total * (n / global_tokens)).backward();
                ce_sum += parts.ce * n;
                if let Some((_, stats)) = &tt {
                    kd_sum += parts.kd * n;
                    kd_tokens += n;
                    mass_sum += stats.topk_mass * n;
                    let z = crate::loss::select_rows(&logits, &t.decoder_mask);
                    agree_sum += agreement(&z, &stats.top1) * n;
                }
            }
        }
        dist::ensure_grads(net.vs());
        reducer.all_reduce(coll, net.vs());
        let grad_norm = if cfg.optim.clip > 0.0 {
            opt.clip_grad_norm(cfg.optim.clip)
        } else {
            opt.clip_grad_norm(f64::INFINITY)
        };
        let lr = schedule.lr(cfg.optim.lr, step as i64);
        opt.step(lr);
        opt.zero_grad();
        state.step += 1;
        steps_here += 1;

        let stop_here = if stop_requested() { 1.0 } else { 0.0 };
        let mut sums = [ce_sum, kd_sum, kd_tokens, mass_sum, agree_sum, stop_here];
        dist::sum_f64(coll, &mut sums);
        let [ce_sum, kd_sum, kd_tokens, mass_sum, agree_sum, stops] = sums;
        stop_agreed = stops > 0.0;
        state.tokens += global_tokens as u64;
        let step_s = t0.elapsed().as_secs_f64();
        let ce = ce_sum / global_tokens.max(1.0);
        let kd = if kd_tokens > 0.0 {
            kd_sum / kd_tokens
        } else {
            0.0
        };
        let alpha = if shared.is_some() { loss.alpha } else { 0.0 };
        let m = StepMetrics {
            step: state.step,
            loss: (1.0 - alpha) * ce + alpha * kd,
            ce,
            kd,
            lr,
            grad_norm,
            tokens_per_s: global_real / step_s.max(1e-9),
            target_tokens: global_tokens,
            topk_mass: (kd_tokens > 0.0).then(|| mass_sum / kd_tokens),
            top1_agree: (kd_tokens > 0.0).then(|| agree_sum / kd_tokens),
            on_policy,
            step_s,
            wait_s,
            time: now(),
        };
        history.push((m.step as f64, m.loss));
        if let Some(w) = metrics.as_mut() {
            w.write(&m);
        }
        if let Some(ev) = events.as_mut() {
            let s = m.step as i64;
            let _ = ev.add_scalar("train/loss", s, m.loss);
            let _ = ev.add_scalar("train/ce", s, m.ce);
            let _ = ev.add_scalar("train/kd", s, m.kd);
            let _ = ev.add_scalar("train/lr", s, m.lr);
            let _ = ev.add_scalar("train/grad_norm", s, m.grad_norm);
            let _ = ev.add_scalar("train/tokens_per_s", s, m.tokens_per_s);
            if let Some(v) = m.topk_mass {
                let _ = ev.add_scalar("train/teacher_topk_mass", s, v);
            }
            if let Some(v) = m.top1_agree {
                let _ = ev.add_scalar("train/top1_agree", s, v);
            }
        }
        bar.set_position(state.step);
        bar.set_message(format!(
            "loss {:.4} ce {:.4} kd {:.4} lr {:.2e} {:.0} tok/s",
            m.loss, m.ce, m.kd, m.lr, m.tokens_per_s
        ));

        let last = state.step == cfg.optim.steps;
        let eval_due = last || (cfg.eval.every > 0 && state.step.is_multiple_of(cfg.eval.every));
        let ckpt_due =
            last || (cfg.checkpoint.every > 0 && state.step.is_multiple_of(cfg.checkpoint.every));
        if eval_due
            && lead
            && let Some(r) = evaluate_now(&net, state.step)?
        {
            report_eval(&r, &bar);
            if let Some((v, higher)) = r.metric(&cfg.checkpoint.best_metric) {
                let better = match state.best {
                    None => true,
                    Some((b, _)) => (higher && v > b) || (!higher && v < b),
                };
                if better && ckpt_due {
                    state.best = Some((v, state.step));
                }
            }
            eval_history.push((r.step as f64, r.val_loss));
            if let Some(ev) = events.as_mut() {
                let s = r.step as i64;
                let _ = ev.add_scalar("eval/val_loss", s, r.val_loss);
                if let Some(o) = &r.overall {
                    let _ = ev.add_scalar("eval/em", s, o.em);
                    let _ = ev.add_scalar("eval/f1", s, o.f1);
                    let _ = ev.add_scalar("eval/rougeL", s, o.rouge_l);
                }
            }
            state.last_eval = Some(serde_json::to_value(&r).expect("json"));
            if let Some(w) = evals.as_mut() {
                w.write(&r);
            }
        }
        if ckpt_due {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            if lead {
                let dir = checkpoint::save(&ckpt_root, &net, &opt, &state, tok_path.as_deref())?;
                checkpoint::prune(
                    &ckpt_root,
                    cfg.checkpoint.keep_last,
                    state.best.map(|(_, s)| s),
                )?;
                tracing::debug!(checkpoint = %dir.display(), "saved");
            }
            coll.barrier();
        }
        if let Some(ev) = events.as_mut() {
            let _ = ev.flush();
        }
    }
    drop(prefetch);
    bar.finish_and_clear();

    state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
    if interrupted && lead && opts.halt_after.is_none() && state.step > 0 {
        // Ctrl-C: keep the progress.
        checkpoint::save(&ckpt_root, &net, &opt, &state, tok_path.as_deref())?;
    }
    let final_model = out.join("final");
    if !interrupted && lead {
        net.save(&final_model, tok_path.as_deref())?;
        if cfg.log.plot {
            let mut series = vec![("train loss", history.clone())];
            if !eval_history.is_empty() {
                series.push(("validation CE", eval_history.clone()));
            }
            let refs: Vec<(&str, Vec<(f64, f64)>)> =
                series.iter().map(|(n, v)| (*n, v.clone())).collect();
            let png = out.join("loss.png");
            crate::observe::plot_losses(&png, &refs, "edkd training", "step", "loss")
                .map_err(Error::io(&png))?;
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
        tokens_per_s: state.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        interrupted,
    })
}

fn report_eval(r: &EvalReport, bar: &ProgressBar) {
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
    bar.suspend(|| tracing::info!("{line}"));
}

/// Fraction of rows where the student's argmax (over the teacher's vocabulary) equals the
/// teacher's top-1.
fn agreement(student_rows: &Tensor, teacher_top1: &Tensor) -> f64 {
    if student_rows.size()[0] == 0 {
        return 0.0;
    }
    let s = student_rows.detach().argmax(-1, false);
    s.eq_tensor(teacher_top1)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// The batch with its targets replaced by the student's own samples (cached generation,
/// temperature and top-k from the config): `decoder_input_ids = [bos] + sample`,
/// `labels = sample + [eos]`, `teacher_ids = input ++ sample`. Samples use ids below
/// `vocab` only (the tokenizer's ids that the teacher also has).
fn sample_batch(net: &Net, b: &Batch, cfg: &TrainConfig, seed: u64, vocab: i64) -> Result<Batch> {
    let inputs: Vec<Vec<i64>> = (0..b.rows)
        .map(|r| {
            (0..b.enc_len)
                .filter(|&j| b.encoder_mask[r * b.enc_len + j])
                .map(|j| b.encoder_ids[r * b.enc_len + j])
                .collect()
        })
        .collect();
    let max_new = if cfg.loss.sample_max_tokens > 0 {
        cfg.loss.sample_max_tokens
    } else {
        b.dec_len
    };
    let (eos, pad) = (net.eos(), net.pad());
    let gen_cfg = GenerationConfig {
        max_new_tokens: max_new,
        sampling: Sampling::Sample {
            temperature: cfg.loss.sample_temperature,
            top_k: (cfg.loss.sample_top_k > 0).then_some(cfg.loss.sample_top_k),
            top_p: None,
        },
        eos_token_ids: vec![eos],
        pad_token_id: pad,
        seed,
        max_token_id: Some(vocab),
    };
    let outs = net.generate(&inputs, &gen_cfg)?;
    let targets: Vec<Vec<i64>> = outs
        .into_iter()
        .map(|o| o.into_iter().take_while(|&t| t != eos).collect())
        .collect();
    Ok(with_targets(
        b,
        &inputs,
        &targets,
        pad,
        b.decoder_input_ids.first().copied().unwrap_or(0),
        eos,
    ))
}

/// Re-collates a batch with new targets (same inputs and ids).
fn with_targets(
    b: &Batch,
    inputs: &[Vec<i64>],
    targets: &[Vec<i64>],
    pad: i64,
    bos: i64,
    eos: i64,
) -> Batch {
    let rows = b.rows;
    let dec_len = targets.iter().map(|t| t.len() + 1).max().unwrap_or(1);
    let teacher_len = inputs
        .iter()
        .zip(targets)
        .map(|(i, t)| i.len() + t.len())
        .max()
        .unwrap_or(1);
    let mut out = Batch {
        rows,
        indices: b.indices.clone(),
        ids: b.ids.clone(),
        enc_len: b.enc_len,
        encoder_ids: b.encoder_ids.clone(),
        encoder_mask: b.encoder_mask.clone(),
        dec_len,
        decoder_input_ids: vec![pad; rows * dec_len],
        labels: vec![edkd_data::IGNORE_INDEX; rows * dec_len],
        decoder_mask: vec![false; rows * dec_len],
        teacher_len,
        teacher_ids: vec![pad; rows * teacher_len],
        teacher_mask: vec![false; rows * teacher_len],
        target_start: inputs.iter().map(|i| i.len() as i64).collect(),
    };
    for (r, (inp, tgt)) in inputs.iter().zip(targets).enumerate() {
        let d = r * dec_len;
        out.decoder_input_ids[d] = bos;
        for (j, &t) in tgt.iter().enumerate() {
            out.decoder_input_ids[d + 1 + j] = t;
            out.labels[d + j] = t;
        }
        out.labels[d + tgt.len()] = eos;
        for j in 0..=tgt.len() {
            out.decoder_mask[d + j] = true;
        }
        let o = r * teacher_len;
        for (j, &t) in inp.iter().chain(tgt.iter()).enumerate() {
            out.teacher_ids[o + j] = t;
            out.teacher_mask[o + j] = true;
        }
    }
    out
}

/// Per-task rows for a results table: task -> (EM, F1, ROUGE-L).
pub fn task_table(r: &EvalReport) -> BTreeMap<String, (f64, f64, f64)> {
    let mut t: BTreeMap<String, (f64, f64, f64)> = r
        .by_task
        .iter()
        .map(|(k, s)| (k.clone(), (s.em, s.f1, s.rouge_l)))
        .collect();
    if let Some(o) = &r.overall {
        t.insert("all".into(), (o.em, o.f1, o.rouge_l));
    }
    t
}
