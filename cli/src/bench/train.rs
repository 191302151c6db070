//! `edkd bench train`: the student's training step measured three ways in one run.
//!
//! 1. The distillation loop (`edkd_trainer::train`) with the teacher behind the gRPC
//!    service (an in-process server on loopback, prefetched) against the same teacher's
//!    answers read from a cache annotated beforehand: mean `step_s` / `wait_s` from
//!    `metrics.jsonl`, warm-up steps skipped.
//! 2. One training step (logits, CE + forward KL, backward, clipping, AdamW) in edkd and in
//!    PyTorch (`train_reference.py`) on the same weights, batch and hyperparameters; the
//!    two loss curves are compared to show both sides compute the same thing.
//! 3. Model FLOP utilisation of those steps against the machine's measured fp32 matmul peak.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};
use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use edkd_models::student::StudentConfig;
use edkd_trainer::config::{ModelSection, TrainConfig};
use edkd_trainer::dist::Single;
use edkd_trainer::loss::TeacherTargets;
use edkd_trainer::model::{BatchTensors, Net, Vocab};
use edkd_trainer::optim::{AdamW, AdamWConfig};
use edkd_trainer::source::{self, TeacherSource};
use edkd_trainer::{Divergence, KdLoss, RunOptions, train};
use tch::{Device, Kind, Tensor};

// The student is the demo's: an encoder-decoder with most layers in the encoder.
use crate::demo::STUDENT;

/// BPE vocabulary trained for the bench data (the demo's).
const VOCAB_SIZE: usize = 1024;
/// Data shapes and batch budget (the demo trims inputs to 160 tokens).
const MAX_INPUT_TOKENS: usize = 192;
const MAX_TARGET_TOKENS: usize = 24;
const BATCH_TOKENS: usize = 6144;
const BATCH_ROWS: usize = 32;
const TEMPERATURE: f64 = 2.0;
const ALPHA: f64 = 0.5;
const LR: f64 = 1e-3;
const CLIP: f64 = 1.0;
const ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};
/// Batches scored synchronously to measure the teacher's latency on its own.
const LATENCY_BATCHES: usize = 4;
/// Side of the square matmul that measures the machine's fp32 peak.
const PEAK_N: i64 = 2048;
const PEAK_ITERS: usize = 5;
/// What the bench writes under `--out` (cleared first: a stale cache would be resumed).
const WORK_DIRS: [&str; 5] = ["data", "teacher", "cache", "runs", "step"];
/// Ids below this are specials; random batch tokens avoid them.
const FIRST_ORDINARY_ID: i64 = 4;

#[derive(clap::Args)]
pub struct Args {
    /// Timed optimizer steps per run (loop runs and step timings alike).
    #[arg(long, default_value_t = 30)]
    steps: u64,
    /// Untimed steps at the start of every run.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Loop runs per teacher source, alternated (remote, cache, cache, remote, ...) so that
    /// a change in machine load does not favour either. (edkd's and PyTorch's training
    /// steps alternate step by step.)
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip section 1 (the distillation loop with the remote teacher and the cache).
    #[arg(long)]
    skip_loop: bool,
    /// libtorch intra-op threads: edkd, the teacher server and PyTorch alike.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Rows of the fixed batch of the edkd-vs-PyTorch step.
    #[arg(long, default_value_t = 32)]
    batch: i64,
    /// Encoder tokens per row of that batch.
    #[arg(long, default_value_t = MAX_INPUT_TOKENS as i64)]
    input_len: i64,
    /// Decoder tokens per row of that batch.
    #[arg(long, default_value_t = MAX_TARGET_TOKENS as i64)]
    target_len: i64,
    /// Synthetic training examples for the loop runs.
    #[arg(long, default_value_t = 1200)]
    examples: usize,
    /// Width of the random Llama teacher served on loopback.
    #[arg(long, default_value_t = 64)]
    teacher_d_model: i64,
    /// Its layers (more make its compute compete harder with the student's on shared cores).
    #[arg(long, default_value_t = 2)]
    teacher_layers: i64,
    /// Teacher top-k per position (service and cache alike).
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Seeds data, weights and the fixed batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Working folder; the bench's subfolders in it are rebuilt on every run.
    #[arg(long, default_value = "out/bench/train")]
    out: PathBuf,
    /// A smoke run in a few minutes: 6 steps after 2, one round, 300 examples.
    #[arg(long)]
    quick: bool,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

fn student_section() -> anyhow::Result<ModelSection> {
    let o: Vec<String> = STUDENT.iter().map(|s| s.to_string()).collect();
    Ok(TrainConfig::from_overrides(&o)?.model)
}

// ---------------------------------------------------------------------------------------
// 1. Remote teacher vs cache.

struct Prepared {
    data: PathBuf,
    tokenizer: PathBuf,
    vocab: Vocab,
}

/// Synthetic mixed tasks, a BPE tokenizer trained on them, and the prepared dataset.
fn prepare_data(work: &Path, examples: usize, seed: u64) -> anyhow::Result<Prepared> {
    let raw = work.join("train.jsonl");
    synth::write_jsonl(&raw, &synth::generate("mix", Split::Train, seed, examples)?)?;
    let tokenizer = work.join("tokenizer.json");
    let texts =
        edkd_data::tokenizer::training_texts(std::slice::from_ref(&raw), "input", "target")?;
    edkd_data::tokenizer::train_bpe_to_file(texts, VOCAB_SIZE, 2, &tokenizer)?;
    let data = work.join("data");
    let cfg = PrepareConfig {
        max_input_tokens: Some(MAX_INPUT_TOKENS),
        max_target_tokens: Some(MAX_TARGET_TOKENS),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 1024,
        overwrite: true,
        command: vec!["edkd bench train".into()],
        ..PrepareConfig::new(&[&raw], &tokenizer, &data)
    };
    edkd_data::prepare::prepare(&cfg).context("preparing the bench data")?;
    let ds = Dataset::open(&data, &OpenOptions::new("train"))?;
    let t = &ds.manifest.tokenizer;
    let vocab = Vocab {
        size: t.vocab_size as i64,
        pad: t.special_ids.pad as i64,
        bos: t.special_ids.bos as i64,
        eos: t.special_ids.eos as i64,
    };
    Ok(Prepared {
        data,
        tokenizer,
        vocab,
    })
}

/// A random Llama-shaped teacher with the bench tokenizer, saved as a model folder.
fn make_teacher(args: &Args, p: &Prepared, dir: &Path) -> anyhow::Result<i64> {
    if args.teacher_layers < 1 {
        bail!("--teacher-layers must be at least 1");
    }
    let d = args.teacher_d_model;
    let section = TrainConfig::from_overrides(&[
        "model.architecture=decoder-only".to_string(),
        "model.preset=small".into(),
        format!("model.overrides.d_model={d}"),
        format!("model.overrides.encoder_layers={}", args.teacher_layers),
        "model.overrides.decoder_layers=0".into(),
        format!("model.overrides.attn_dim={d}"),
        "model.overrides.num_heads=4".into(),
        "model.overrides.num_kv_heads=2".into(),
        format!("model.overrides.ffn_dim={}", 3 * d),
        "model.overrides.max_positions=512".into(),
    ])?
    .model;
    let net = Net::build(&section, p.vocab, Device::Cpu, args.seed + 1)?;
    net.save(dir, Some(&p.tokenizer))?;
    Ok(net.num_parameters())
}

/// Means over the timed steps of one loop run's `metrics.jsonl`.
struct LoopRun {
    step_s: f64,
    wait_s: f64,
    tokens_per_s: f64,
}

fn read_metrics(path: &Path, warmup: u64) -> anyhow::Result<LoopRun> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let (mut step, mut wait, mut tps) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let m: serde_json::Value = serde_json::from_str(line)?;
        if m["step"].as_u64().unwrap_or(0) <= warmup {
            continue;
        }
        let f = |k: &str| {
            m[k].as_f64()
                .with_context(|| format!("metrics line lacks {k}"))
        };
        step.push(f("step_s")?);
        wait.push(f("wait_s")?);
        tps.push(f("tokens_per_s")?);
    }
    if step.is_empty() {
        bail!("{}: no steps after the warm-up", path.display());
    }
    Ok(LoopRun {
        step_s: mean(&step),
        wait_s: mean(&wait),
        tokens_per_s: mean(&tps),
    })
}

struct TeacherReport {
    teacher_params: i64,
    addr: String,
    remote: Vec<LoopRun>,
    cache: Vec<LoopRun>,
    /// Seconds of one synchronous `Score` of a training batch.
    latency_s: f64,
}

fn loop_overrides(args: &Args, p: &Prepared, teacher: &[String]) -> Vec<String> {
    let mut o: Vec<String> = STUDENT.iter().map(|s| s.to_string()).collect();
    o.extend([
        format!("data.manifest=\"{}\"", p.data.display()),
        format!("data.tokenizer=\"{}\"", p.tokenizer.display()),
        format!("seed={}", args.seed),
        format!("threads={}", args.threads),
        format!("optim.steps={}", args.warmup + args.steps),
        format!("optim.lr={LR}"),
        "optim.schedule=constant".into(),
        "optim.warmup_steps=0".into(),
        format!("batch.max_tokens={BATCH_TOKENS}"),
        format!("batch.max_rows={BATCH_ROWS}"),
        "batch.bucket_window=512".into(),
        format!("loss.alpha={ALPHA}"),
        format!("loss.temperature={TEMPERATURE}"),
        format!("teacher.top_k={}", args.top_k),
        "eval.every=0".into(),
        "checkpoint.every=0".into(),
        "log.progress=false".into(),
        "log.tensorboard=false".into(),
        "log.plot=false".into(),
    ]);
    o.extend(teacher.iter().cloned());
    o
}

fn remote_vs_cache(args: &Args, work: &Path) -> anyhow::Result<TeacherReport> {
    eprintln!(
        "preparing {} synthetic examples and a tokenizer ...",
        args.examples
    );
    let p = prepare_data(work, args.examples, args.seed)?;
    let teacher_dir = work.join("teacher");
    let teacher_params = make_teacher(args, &p, &teacher_dir)?;

    tch::set_num_threads(args.threads);
    let (rt, server) = crate::demo::serve_on_loopback(&teacher_dir, "edkd-bench-teacher", 2)?;
    let addr = server.addr.to_string();
    eprintln!("teacher service on {addr}; annotating the cache ...");
    let cache_dir = work.join("cache");
    rt.block_on(async {
        let client = edkd_teacher::Client::connect(edkd_teacher::ClientConfig::new(addr.clone()))?;
        let cfg = edkd_teacher::AnnotateConfig {
            data: p.data.clone(),
            split: "train".into(),
            out: cache_dir.clone(),
            top_k: args.top_k,
            temperature: TEMPERATURE as f32,
            sequences_per_request: BATCH_ROWS,
            in_flight: 2,
            shard_rows: 1024,
            limit: None,
            progress: false,
            view: std::sync::Arc::new(edkd_models::chat::TeacherView::raw()),
        };
        edkd_teacher::annotate(&client, &cfg).await?;
        anyhow::Ok(())
    })?;

    let latency_s = teacher_latency(args, &p, &addr)?;

    let remote_kind = vec![
        "teacher.kind=remote".to_string(),
        format!("teacher.addr=\"{addr}\""),
    ];
    let cache_kind = vec![
        "teacher.kind=cache".to_string(),
        format!("teacher.cache=\"{}\"", cache_dir.display()),
    ];
    let (mut remote, mut cache) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Remote, cache, cache, remote, ...: load drift hits both sides alike.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_remote in order {
            let name = if is_remote { "remote" } else { "cache" };
            eprintln!("loop run {}/{}: {name} teacher ...", round + 1, args.rounds);
            let kind = if is_remote { &remote_kind } else { &cache_kind };
            let cfg = TrainConfig::from_overrides(&loop_overrides(args, &p, kind))?;
            let out = work.join(format!("runs/{name}-{round}"));
            if out.exists() {
                std::fs::remove_dir_all(&out)?;
            }
            let opts = RunOptions {
                out: out.clone(),
                ..Default::default()
            };
            train(&cfg, &opts, &mut Single).with_context(|| format!("the {name} run"))?;
            let run = read_metrics(&out.join("metrics.jsonl"), args.warmup)?;
            if is_remote {
                remote.push(run);
            } else {
                cache.push(run);
            }
        }
    }
    rt.block_on(server.shutdown())?;
    Ok(TeacherReport {
        teacher_params,
        addr,
        remote,
        cache,
        latency_s,
    })
}

/// Mean seconds of a synchronous `Score` call for a training batch (what prefetching hides).
fn teacher_latency(args: &Args, p: &Prepared, addr: &str) -> anyhow::Result<f64> {
    let mut src = source::Remote::connect(source::RemoteConfig {
        addr: addr.to_owned(),
        top_k: args.top_k,
        temperature: TEMPERATURE as f32,
        auth_token: None,
        timeout: Duration::from_secs(120),
        retry_for: Duration::ZERO,
    })?;
    let ds = Dataset::open(&p.data, &OpenOptions::new("train"))?;
    let mut reader = Reader::new(
        ds,
        ReaderConfig {
            seed: args.seed,
            max_tokens: BATCH_TOKENS,
            max_rows: BATCH_ROWS,
            bucket_window: 512,
            ..Default::default()
        },
        None,
    )?;
    let mut times = Vec::new();
    for i in 0..=LATENCY_BATCHES {
        let batch = reader
            .next_batch()
            .context("the bench data yields no batch")?;
        let t0 = Instant::now();
        src.score(&batch)?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64()); // the first call warms up
        }
    }
    Ok(mean(&times))
}

// ---------------------------------------------------------------------------------------
// 2. edkd vs PyTorch, one training step on a fixed batch.

struct StepBatch {
    tensors: BatchTensors,
    /// Full-vocabulary teacher logits at the target positions, `[b * target_len, V]`.
    teacher: Tensor,
}

fn make_batch(args: &Args, vocab: Vocab) -> StepBatch {
    tch::manual_seed(args.seed as i64 + 2);
    let (b, li, lo) = (args.batch, args.input_len, args.target_len);
    let ids = (Kind::Int64, Device::Cpu);
    let encoder_ids = Tensor::randint_low(FIRST_ORDINARY_ID, vocab.size, [b, li], ids);
    let labels = Tensor::randint_low(FIRST_ORDINARY_ID, vocab.size, [b, lo], ids);
    let bos = Tensor::full([b, 1], vocab.bos, ids);
    let decoder_input_ids = Tensor::cat(&[bos, labels.narrow(1, 0, lo - 1)], 1);
    let all = |len| Tensor::ones([b, len], (Kind::Bool, Device::Cpu));
    let teacher = Tensor::randn([b * lo, vocab.size], (Kind::Float, Device::Cpu)) * 2.0;
    StepBatch {
        tensors: BatchTensors {
            teacher_ids: encoder_ids.shallow_clone(),
            teacher_mask: all(li),
            teacher_positions: Tensor::zeros([b, lo], ids),
            encoder_ids,
            encoder_mask: all(li),
            decoder_input_ids,
            labels,
            decoder_mask: all(lo),
        },
        teacher,
    }
}

fn save_batch(batch: &StepBatch, path: &Path) -> anyhow::Result<()> {
    let t = &batch.tensors;
    let u8 = |x: &Tensor| x.to_kind(Kind::Uint8);
    Tensor::write_safetensors(
        &[
            ("encoder_ids", t.encoder_ids.shallow_clone()),
            ("encoder_mask", u8(&t.encoder_mask)),
            ("decoder_input_ids", t.decoder_input_ids.shallow_clone()),
            ("labels", t.labels.shallow_clone()),
            ("decoder_mask", u8(&t.decoder_mask)),
            ("teacher_logits", batch.teacher.shallow_clone()),
        ],
        path,
    )?;
    Ok(())
}

/// edkd's side: the trainer's per-micro-batch work (trainer/src/train.rs) on a ready
/// batch: logits, loss, backward, clipping, AdamW, zeroed gradients.
struct EdkdStep {
    net: Net,
    opt: AdamW,
    loss: KdLoss,
    targets: TeacherTargets,
    vocab: i64,
}

impl EdkdStep {
    fn new(
        section: &ModelSection,
        vocab: Vocab,
        batch: &StepBatch,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let net = Net::build(section, vocab, Device::Cpu, seed)?;
        let opt = AdamW::new(net.vs(), ADAMW);
        Ok(Self {
            net,
            opt,
            loss: KdLoss {
                divergence: Divergence::ForwardKl,
                temperature: TEMPERATURE,
                alpha: ALPHA,
                label_smoothing: 0.0,
            },
            targets: TeacherTargets::Full {
                logits: batch.teacher.shallow_clone(),
            },
            vocab: vocab.size,
        })
    }

    /// One step: (seconds, loss).
    fn step(&mut self, t: &BatchTensors) -> (f64, f64) {
        let t0 = Instant::now();
        let logits = self.net.logits(t, true);
        let parts = self.loss.total(
            &logits,
            &t.labels,
            &t.decoder_mask,
            Some((&self.targets, self.vocab)),
        );
        parts.total.backward();
        self.opt.clip_grad_norm(CLIP);
        self.opt.step(LR);
        self.opt.zero_grad();
        let loss = parts.total.double_value(&[]);
        (t0.elapsed().as_secs_f64(), loss)
    }
}

/// PyTorch's side: `train_reference.py --serve`, one step per `step` line on its stdin, so
/// that the two sides' steps alternate and share whatever load the machine has.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    torch: String,
}

impl Reference {
    fn start(args: &Args, model: &Path, batch: &Path) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench/train_reference.py");
        let a = |k: &str, v: String| [format!("--{k}"), v];
        let argv: Vec<String> = [
            a("model", model.display().to_string()),
            a("batch", batch.display().to_string()),
            a("threads", args.threads.to_string()),
            a("lr", LR.to_string()),
            a("weight-decay", ADAMW.weight_decay.to_string()),
            a("beta1", ADAMW.beta1.to_string()),
            a("beta2", ADAMW.beta2.to_string()),
            a("eps", ADAMW.eps.to_string()),
            a("clip", CLIP.to_string()),
            a("alpha", ALPHA.to_string()),
            a("temperature", TEMPERATURE.to_string()),
        ]
        .concat();
        let mut child = Command::new(super::python()?)
            .arg(&script)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut me = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            torch: String::new(),
        };
        let ready = me.read()?;
        me.torch = ready["torch"].as_str().unwrap_or("?").to_owned();
        Ok(me)
    }

    fn read(&mut self) -> anyhow::Result<serde_json::Value> {
        match self.lines.next() {
            Some(line) => Ok(serde_json::from_str(&line?)?),
            None => bail!(
                "train_reference.py ended early ({}); its errors are above",
                self.child.wait()?
            ),
        }
    }

    /// One step: (seconds, loss), as timed inside the Python process.
    fn step(&mut self) -> anyhow::Result<(f64, f64)> {
        writeln!(self.stdin, "step")?;
        self.stdin.flush()?;
        let v = self.read()?;
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("reply without {k}: {v}"))
        };
        Ok((f("step_s")?, f("loss")?))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

struct StepReport {
    /// Median seconds of the timed steps.
    edkd_s: f64,
    torch_s: f64,
    /// Median over timed steps of (PyTorch step time / edkd's next or previous step time).
    paired_ratio: f64,
    torch_version: String,
    edkd_loss: Vec<f64>,
    torch_loss: Vec<f64>,
    flops: Flops,
    params: i64,
}

fn edkd_vs_pytorch(args: &Args, work: &Path) -> anyhow::Result<StepReport> {
    if args.input_len < 1 || args.target_len < 2 || args.batch < 1 {
        bail!("--batch, --input-len must be >= 1 and --target-len >= 2");
    }
    let dir = work.join("step");
    let model = dir.join("student");
    let vocab = Vocab {
        size: VOCAB_SIZE as i64,
        pad: 0,
        bos: 1,
        eos: 2,
    };
    let section = student_section()?;
    let net = Net::build(&section, vocab, Device::Cpu, args.seed)?;
    net.save(&model, None)?;
    let Net::EncoderDecoder(student) = &net else {
        bail!("the bench student is an encoder-decoder");
    };
    let flops = Flops::of(
        &student.model.config,
        &net,
        args.batch,
        args.input_len,
        args.target_len,
    );
    let params = net.num_parameters();
    drop(net);
    // Both sides start from the saved folder.
    let section = ModelSection {
        init: Some(model.clone()),
        ..section
    };
    let batch = make_batch(args, vocab);
    let batch_file = dir.join("batch.safetensors");
    save_batch(&batch, &batch_file)?;

    tch::set_num_threads(args.threads);
    eprintln!(
        "timing {} + {} training steps, edkd and PyTorch alternately ...",
        args.warmup, args.steps
    );
    let mut ours = EdkdStep::new(&section, vocab, &batch, args.seed)?;
    let mut theirs = Reference::start(args, &model, &batch_file)?;
    let (mut e_s, mut p_s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut edkd_loss, mut torch_loss) = (Vec::new(), Vec::new());
    for i in 0..args.warmup + args.steps {
        // Alternate which side goes first, so neither always follows the other.
        let ((es, el), (ps, pl)) = if i % 2 == 0 {
            let e = ours.step(&batch.tensors);
            (e, theirs.step()?)
        } else {
            let p = theirs.step()?;
            (ours.step(&batch.tensors), p)
        };
        edkd_loss.push(el);
        torch_loss.push(pl);
        if i >= args.warmup {
            e_s.push(es);
            p_s.push(ps);
            ratios.push(ps / es);
        }
    }
    Ok(StepReport {
        edkd_s: median(&e_s),
        torch_s: median(&p_s),
        paired_ratio: median(&ratios),
        torch_version: theirs.torch.clone(),
        edkd_loss,
        torch_loss,
        flops,
        params,
    })
}

// ---------------------------------------------------------------------------------------
// 3. FLOPs and the matmul peak.

/// Training FLOPs of one step on a `[b, l_in]` / `[b, l_out]` batch:
/// `6 * (P_enc * T_in + P_xkv * T_in + (P_dec + d * V) * T_out)` for the weight matmuls
/// (forward 2, backward 4 per parameter and token; the tied LM head counted as `d * V`),
/// plus `12 * a * b * (n_enc * l_in^2 + n_dec * (l_out^2 + l_out * l_in))` for the
/// attention scores and weighted sums (two matmuls of `a = attn_dim` per query-key pair,
/// times 3 for training; causal self-attention counted in full, as SDPA computes it).
struct Flops {
    p_enc: i64,
    p_xkv: i64,
    p_dec: i64,
    head: i64,
    attn_dim: i64,
    t_in: i64,
    t_out: i64,
    per_step: f64,
}

impl Flops {
    fn of(c: &StudentConfig, net: &Net, b: i64, l_in: i64, l_out: i64) -> Self {
        let (mut p_enc, mut p_xkv, mut p_dec) = (0, 0, 0);
        for (name, t) in net.vs().variables() {
            let n = t.numel() as i64;
            if name.starts_with("encoder.") {
                p_enc += n;
            } else if name.contains(".cross_attn.k_proj.") || name.contains(".cross_attn.v_proj.") {
                p_xkv += n; // applied to the encoder's output: l_in tokens
            } else if name.starts_with("decoder.") {
                p_dec += n;
            }
        }
        let head = c.d_model * c.vocab_size;
        let (t_in, t_out) = (b * l_in, b * l_out);
        let weights =
            6.0 * ((p_enc + p_xkv) as f64 * t_in as f64 + (p_dec + head) as f64 * t_out as f64);
        let (li, lo) = (l_in as f64, l_out as f64);
        let attn = 12.0
            * c.attn_dim as f64
            * b as f64
            * (c.encoder_layers as f64 * li * li + c.decoder_layers as f64 * (lo * lo + lo * li));
        Self {
            p_enc,
            p_xkv,
            p_dec,
            head,
            attn_dim: c.attn_dim,
            t_in,
            t_out,
            per_step: weights + attn,
        }
    }
}

/// fp32 matmul GFLOP/s with libtorch on this process's threads (best of a few).
fn matmul_peak() -> f64 {
    let opts = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([PEAK_N, PEAK_N], opts);
    let b = Tensor::randn([PEAK_N, PEAK_N], opts);
    let _ = a.matmul(&b); // warm-up
    let best = (0..PEAK_ITERS)
        .map(|_| {
            let t0 = Instant::now();
            let _ = a.matmul(&b);
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (PEAK_N as f64).powi(3) / best / 1e9
}

// ---------------------------------------------------------------------------------------

pub fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.steps = 6;
        args.warmup = 2;
        args.rounds = 1;
        args.examples = 300;
    }
    if args.steps == 0 || args.rounds == 0 {
        bail!("--steps and --rounds must be at least 1");
    }
    let load_before = load_average();
    let work = args.out.clone();
    for sub in WORK_DIRS {
        let dir = work.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&work)?;
    tch::set_num_threads(args.threads);
    let peak_before = matmul_peak();
    let teacher = if args.skip_loop {
        None
    } else {
        Some(remote_vs_cache(&args, &work)?)
    };
    let step = edkd_vs_pytorch(&args, &work)?;
    tch::set_num_threads(args.threads);
    let peak = peak_before.max(matmul_peak());
    let load_after = load_average();
    print_header(&args, &step, [&load_before, &load_after]);
    if let Some(t) = &teacher {
        print_loop(&args, t);
    }
    print_step(&args, &step, peak);
    Ok(())
}

fn print_header(args: &Args, s: &StepReport, load: [&str; 2]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "edkd bench train: {} threads on {cpus} CPUs; load average {} before, {} after \
         (a shared machine: figures are noisy)",
        args.threads, load[0], load[1]
    );
    println!(
        "student: the demo's encoder-decoder ({}), {:.2}M parameters, vocabulary {VOCAB_SIZE}",
        STUDENT[1..]
            .iter()
            .map(|s| s.trim_start_matches("model.overrides."))
            .collect::<Vec<_>>()
            .join(" "),
        s.params as f64 / 1e6
    );
}

fn print_loop(args: &Args, t: &TeacherReport) {
    let (remote, cache) = (&t.remote, &t.cache);
    let avg = |v: &[LoopRun], f: fn(&LoopRun) -> f64| mean(&v.iter().map(f).collect::<Vec<_>>());
    let (r_step, c_step) = (avg(remote, |r| r.step_s), avg(cache, |r| r.step_s));
    println!(
        "\n1. distillation loop, remote teacher vs cache: mean over {} steps after {} warm-up, \
         {} run(s) each, alternated",
        args.steps, args.warmup, args.rounds
    );
    println!(
        "   teacher: random Llama, d_model {} x {} layers ({:.2}M params), gRPC on {} in this \
         process (same cores); top-k {}, T {TEMPERATURE}; batches <= {BATCH_TOKENS} tokens / \
         {BATCH_ROWS} rows",
        args.teacher_d_model,
        args.teacher_layers,
        t.teacher_params as f64 / 1e6,
        t.addr,
        args.top_k
    );
    println!(
        "   {:<10} {:>9} {:>9} {:>10}",
        "teacher", "step s", "wait s", "tokens/s"
    );
    for (name, runs) in [("cache", cache), ("remote", remote)] {
        println!(
            "   {name:<10} {:>9.4} {:>9.4} {:>10.0}",
            avg(runs, |r| r.step_s),
            avg(runs, |r| r.wait_s),
            avg(runs, |r| r.tokens_per_s)
        );
    }
    println!(
        "   remote/cache step time: {:.3}x (goal <= 1.15); one synchronous Score of a batch \
         takes {:.4} s, the remote run waited {:.4} s per step",
        r_step / c_step,
        t.latency_s,
        avg(remote, |r| r.wait_s)
    );
}

fn print_step(args: &Args, s: &StepReport, peak_gflops: f64) {
    let tokens = (args.batch * (args.input_len + args.target_len)) as f64;
    let target = (args.batch * args.target_len) as f64;
    let mfu = |secs: f64| s.flops.per_step / secs / (peak_gflops * 1e9);
    println!(
        "\n2. training step, edkd vs PyTorch {}: batch {} x ({} input + {} target) tokens, \
         (1-{ALPHA}) CE + {ALPHA} T^2 KL(teacher||student) at T {TEMPERATURE} on full-vocabulary \
         teacher logits, clip {CLIP}, AdamW lr {LR}; median of {} steps after {} warm-up, \
         the two sides alternating step by step",
        s.torch_version, args.batch, args.input_len, args.target_len, args.steps, args.warmup
    );
    println!(
        "   {:<10} {:>9} {:>10} {:>12} {:>7}",
        "", "step s", "tokens/s", "target tok/s", "MFU"
    );
    for (name, secs) in [("edkd", s.edkd_s), ("PyTorch", s.torch_s)] {
        println!(
            "   {name:<10} {secs:>9.4} {:>10.0} {:>12.0} {:>6.1}%",
            tokens / secs,
            target / secs,
            100.0 * mfu(secs)
        );
    }
    println!(
        "   edkd/PyTorch tokens/s: {:.3}x (goal >= 0.95); median of per-step pairs {:.3}x",
        s.torch_s / s.edkd_s,
        s.paired_ratio
    );
    let n = s.edkd_loss.len().min(s.torch_loss.len());
    let max_diff = (0..n)
        .map(|i| (s.edkd_loss[i] - s.torch_loss[i]).abs())
        .fold(0.0, f64::max);
    if n > 0 {
        println!(
            "   same computation: loss at step 1 edkd {:.6} / PyTorch {:.6}, at step {n} \
             {:.6} / {:.6}; max |diff| over {n} steps {max_diff:.2e}",
            s.edkd_loss[0],
            s.torch_loss[0],
            s.edkd_loss[n - 1],
            s.torch_loss[n - 1]
        );
    }

    let f = &s.flops;
    println!(
        "\n3. model FLOP utilisation: peak {peak_gflops:.1} GFLOP/s ({PEAK_N}x{PEAK_N} fp32 \
         matmul, libtorch, {} threads, best of {PEAK_ITERS}, measured before and after)",
        args.threads
    );
    println!(
        "   FLOPs/step = 6 * (P_enc*T_in + P_xkv*T_in + (P_dec + d*V)*T_out) \
         + 12 * a * B * (n_enc*L_in^2 + n_dec*(L_out^2 + L_out*L_in))"
    );
    println!(
        "   P_enc {} (encoder layers + norm), P_xkv {} (cross-attention k/v, on encoder \
         tokens), P_dec {} (rest of the decoder), d*V {} (tied LM head), a {}, T_in {}, T_out {}",
        f.p_enc, f.p_xkv, f.p_dec, f.head, f.attn_dim, f.t_in, f.t_out
    );
    println!(
        "   = {:.2} GFLOP per step, {:.0} kFLOP per (input + target) token; MFU edkd {:.1}%, \
         PyTorch {:.1}%",
        f.per_step / 1e9,
        f.per_step / tokens / 1e3,
        100.0 * mfu(s.edkd_s),
        100.0 * mfu(s.torch_s)
    );
}
