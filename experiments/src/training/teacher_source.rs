//! Section 1 of the training bench: the distillation loop with the teacher behind the gRPC
//! service against the same teacher's answers read from an annotated cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};
use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use edkd_trainer::config::TrainConfig;
use edkd_trainer::dist::Single;
use edkd_trainer::model::{Net, Vocab};
use edkd_trainer::source::{self, TeacherSource};
use edkd_trainer::{RunOptions, train};
use serde::Serialize;
use tch::Device;

use super::{
    BATCH_ROWS, BATCH_TOKENS, LR, MAX_INPUT_TOKENS, MAX_TARGET_TOKENS, Options, STUDENT,
    TEMPERATURE, VOCAB_SIZE, mean,
};
use crate::error::{Error, Result};
use crate::loopback::serve_on_loopback;

/// Batches scored synchronously to measure the teacher's latency on its own.
const LATENCY_BATCHES: usize = 4;
/// Reader window over which batches are bucketed by length.
const BUCKET_WINDOW: usize = 512;
const SHARD_ROWS: usize = 1024;
/// Score requests the annotator keeps in flight.
const ANNOTATE_IN_FLIGHT: usize = 2;
/// A synchronous Score of a training batch may take this long.
const SCORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Runtime threads of the in-process teacher server.
const SERVER_WORKERS: usize = 2;

/// Means over the timed steps of one loop run's `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct LoopRun {
    pub step_s: f64,
    pub wait_s: f64,
    pub tokens_per_s: f64,
}

/// How a remote-teacher loop run shares the machine: the teacher's batcher thread and the
/// trainer each get their own libtorch intra-op thread count (see
/// `edkd_models::device::set_thread_intra_op_threads`), and the trainer fetches teacher
/// answers `prefetch` batches ahead (0: only when the step needs them, so the two never
/// compute at once; `None`: the trainer's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub teacher_threads: usize,
    pub trainer_threads: usize,
    pub prefetch: Option<usize>,
}

impl Placement {
    /// `TEACHER+TRAINER[@PREFETCH]`, e.g. `1+1` or `2+2@0`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::input(
                "remote placement",
                format!(
                    "{s:?}: expected TEACHER+TRAINER threads (both >= 1), optionally \
                     @PREFETCH batches, e.g. 1+1 or 2+2@0"
                ),
            )
        };
        let (threads, prefetch) = match s.split_once('@') {
            Some((t, p)) => (t, Some(p.trim().parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let (t, r) = threads.split_once('+').ok_or_else(bad)?;
        let n = |x: &str| x.trim().parse::<usize>().ok().filter(|&n| n >= 1);
        Ok(Self {
            teacher_threads: n(t).ok_or_else(bad)?,
            trainer_threads: n(r).ok_or_else(bad)?,
            prefetch,
        })
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.teacher_threads, self.trainer_threads)?;
        match self.prefetch {
            Some(p) => write!(f, "@{p}"),
            None => Ok(()),
        }
    }
}

/// Section 1's findings.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherReport {
    pub teacher_params: i64,
    /// The remote runs of each placement, in the order given.
    pub remote: Vec<(Placement, Vec<LoopRun>)>,
    /// Cache-fed runs, with the bench's `threads`.
    pub cache: Vec<LoopRun>,
    /// Seconds of one synchronous `Score` of a training batch (first placement's server).
    pub latency_s: f64,
}

impl TeacherReport {
    pub fn avg(runs: &[LoopRun], f: fn(&LoopRun) -> f64) -> f64 {
        mean(&runs.iter().map(f).collect::<Vec<_>>())
    }
}

struct Prepared {
    data: PathBuf,
    tokenizer: PathBuf,
    vocab: Vocab,
}

/// Synthetic mixed tasks, a BPE tokenizer trained on them, and the prepared dataset.
fn prepare_data(work: &Path, examples: usize, seed: u64) -> Result<Prepared> {
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
        shard_rows: SHARD_ROWS,
        overwrite: true,
        command: vec!["edkd bench train".into()],
        ..PrepareConfig::new(&[&raw], &tokenizer, &data)
    };
    edkd_data::prepare::prepare(&cfg)?;
    let ds = Dataset::open(&data, &OpenOptions::new("train"))?;
    let t = &ds.manifest.tokenizer;
    let vocab = Vocab {
        size: t.vocab_size as i64,
        pad: t.special_ids.pad as i64,
        bos: t.special_ids.bos as i64,
        eos: t.special_ids.eos as i64,
        image_token_id: None,
    };
    Ok(Prepared {
        data,
        tokenizer,
        vocab,
    })
}

/// A random Llama-shaped teacher with the bench tokenizer, saved as a model folder.
fn make_teacher(opts: &Options, p: &Prepared, dir: &Path) -> Result<i64> {
    let d = opts.teacher_d_model;
    let section = TrainConfig::from_overrides(&[
        "model.architecture=decoder-only".to_string(),
        "model.preset=small".into(),
        format!("model.overrides.d_model={d}"),
        format!("model.overrides.encoder_layers={}", opts.teacher_layers),
        "model.overrides.decoder_layers=0".into(),
        format!("model.overrides.attn_dim={d}"),
        "model.overrides.num_heads=4".into(),
        "model.overrides.num_kv_heads=2".into(),
        format!("model.overrides.ffn_dim={}", 3 * d),
        "model.overrides.max_positions=512".into(),
    ])?
    .model;
    let net = Net::build(&section, p.vocab, Device::Cpu, opts.seed + 1)?;
    net.save(dir, Some(&p.tokenizer))?;
    Ok(net.num_parameters())
}

fn read_metrics(path: &Path, warmup: u64) -> Result<LoopRun> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let bad = |msg: String| Error::Measurement {
        what: "metrics.jsonl",
        msg: format!("{}: {msg}", path.display()),
    };
    let (mut step, mut wait, mut tps) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let m: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        if m["step"].as_u64().unwrap_or(0) <= warmup {
            continue;
        }
        let f = |k: &str| {
            m[k].as_f64()
                .ok_or_else(|| bad(format!("line {} lacks {k}", i + 1)))
        };
        step.push(f("step_s")?);
        wait.push(f("wait_s")?);
        tps.push(f("tokens_per_s")?);
    }
    if step.is_empty() {
        return Err(bad("no steps after the warm-up".into()));
    }
    Ok(LoopRun {
        step_s: mean(&step),
        wait_s: mean(&wait),
        tokens_per_s: mean(&tps),
    })
}

fn loop_overrides(opts: &Options, p: &Prepared, teacher: &[String]) -> Vec<String> {
    let mut o: Vec<String> = STUDENT.iter().map(|s| s.to_string()).collect();
    o.extend([
        format!("data.manifest=\"{}\"", p.data.display()),
        format!("data.tokenizer=\"{}\"", p.tokenizer.display()),
        format!("seed={}", opts.seed),
        format!("optim.steps={}", opts.warmup + opts.steps),
        format!("optim.lr={LR}"),
        "optim.schedule=constant".into(),
        "optim.warmup_steps=0".into(),
        format!("batch.max_tokens={BATCH_TOKENS}"),
        format!("batch.max_rows={BATCH_ROWS}"),
        format!("batch.bucket_window={BUCKET_WINDOW}"),
        format!("loss.alpha={}", super::ALPHA),
        format!("loss.temperature={TEMPERATURE}"),
        format!("teacher.top_k={}", opts.top_k),
        "eval.every=0".into(),
        "checkpoint.every=0".into(),
        "log.progress=false".into(),
        "log.tensorboard=false".into(),
        "log.plot=false".into(),
    ]);
    o.extend(teacher.iter().cloned());
    o
}

/// Prepares data and a teacher, annotates a cache with it, and times `opts.rounds` loop
/// runs per teacher source (the cache, and the teacher served on loopback in this process
/// under each of `opts.placements`), in an order that rotates every round.
pub fn remote_vs_cache(opts: &Options, work: &Path) -> Result<TeacherReport> {
    eprintln!(
        "preparing {} synthetic examples and a tokenizer ...",
        opts.examples
    );
    let p = prepare_data(work, opts.examples, opts.seed)?;
    let teacher_dir = work.join("teacher");
    let teacher_params = make_teacher(opts, &p, &teacher_dir)?;

    tch::set_num_threads(opts.threads);
    let cache_dir = work.join("cache");
    let latency_s = {
        let threads = opts.threads.max(1) as usize;
        let (rt, server) = serve(&teacher_dir, threads)?;
        let addr = server.addr.to_string();
        eprintln!("teacher service on {addr}; annotating the cache ...");
        rt.block_on(annotate_cache(&p, opts, &addr, &cache_dir))?;
        let latency = teacher_latency(opts, &p, &addr)?;
        rt.block_on(server.shutdown())?;
        latency
    };

    let cache_kind = vec![
        "teacher.kind=cache".to_string(),
        format!("teacher.cache=\"{}\"", cache_dir.display()),
    ];
    // Arm 0 is the cache, arm i + 1 is placement i.
    let arms = opts.placements.len() + 1;
    let mut runs: Vec<Vec<LoopRun>> = vec![Vec::new(); arms];
    for round in 0..opts.rounds {
        for turn in 0..arms {
            let arm = (turn + round) % arms;
            let name = if arm == 0 {
                "cache".to_string()
            } else {
                format!("remote {}", opts.placements[arm - 1])
            };
            eprintln!("loop run {}/{}: {name} ...", round + 1, opts.rounds);
            let out = work.join(format!(
                "runs/{}-{round}",
                name.replace([' ', '+', '@'], "-")
            ));
            if out.exists() {
                std::fs::remove_dir_all(&out).map_err(Error::io(&out))?;
            }
            let run = if arm == 0 {
                loop_run(opts, &p, &cache_kind, opts.threads, &out)?
            } else {
                let place = opts.placements[arm - 1];
                let (rt, server) = serve(&teacher_dir, place.teacher_threads)?;
                let mut kind = vec![
                    "teacher.kind=remote".to_string(),
                    format!("teacher.addr=\"{}\"", server.addr),
                ];
                kind.extend(place.prefetch.map(|p| format!("teacher.prefetch={p}")));
                let run = loop_run(opts, &p, &kind, place.trainer_threads as i32, &out);
                rt.block_on(server.shutdown())?;
                run?
            };
            runs[arm].push(run);
        }
    }
    let cache = runs.remove(0);
    Ok(TeacherReport {
        teacher_params,
        remote: opts.placements.iter().copied().zip(runs).collect(),
        cache,
        latency_s,
    })
}

/// The bench teacher on a free loopback port, its forward passes on `threads` threads.
fn serve(
    teacher_dir: &Path,
    threads: usize,
) -> Result<(tokio::runtime::Runtime, edkd_teacher::RunningServer)> {
    serve_on_loopback(teacher_dir, "edkd-bench-teacher", SERVER_WORKERS, threads)
}

async fn annotate_cache(p: &Prepared, opts: &Options, addr: &str, out: &Path) -> Result<()> {
    let client = edkd_teacher::Client::connect(edkd_teacher::ClientConfig::new(addr.to_owned()))?;
    let cfg = edkd_teacher::AnnotateConfig {
        data: p.data.clone(),
        split: "train".into(),
        out: out.to_owned(),
        top_k: opts.top_k,
        temperature: TEMPERATURE as f32,
        sequences_per_request: BATCH_ROWS,
        in_flight: ANNOTATE_IN_FLIGHT,
        shard_rows: SHARD_ROWS,
        limit: None,
        progress: false,
        view: std::sync::Arc::new(edkd_models::chat::TeacherView::raw()),
        packing: None,
        zstd_level: None,
        calibration_examples: edkd_teacher::annotate::CALIBRATION_EXAMPLES,
    };
    edkd_teacher::annotate(&client, &cfg).await?;
    Ok(())
}

/// One training loop run with `teacher` overrides and `threads` trainer threads.
fn loop_run(
    opts: &Options,
    p: &Prepared,
    teacher: &[String],
    threads: i32,
    out: &Path,
) -> Result<LoopRun> {
    let mut o = loop_overrides(opts, p, teacher);
    o.push(format!("threads={threads}"));
    let cfg = TrainConfig::from_overrides(&o)?;
    let run_opts = RunOptions {
        out: out.to_owned(),
        ..Default::default()
    };
    train(&cfg, &run_opts, &mut Single)?;
    read_metrics(&out.join("metrics.jsonl"), opts.warmup)
}

/// Mean seconds of a synchronous `Score` call for a training batch (what prefetching hides).
fn teacher_latency(opts: &Options, p: &Prepared, addr: &str) -> Result<f64> {
    let mut src = source::Remote::connect(source::RemoteConfig {
        addr: addr.to_owned(),
        top_k: opts.top_k,
        temperature: TEMPERATURE as f32,
        auth_token: None,
        timeout: SCORE_TIMEOUT,
        retry_for: Duration::ZERO,
        packing: None,
    })?;
    let ds = Dataset::open(&p.data, &OpenOptions::new("train"))?;
    let mut reader = Reader::new(
        ds,
        ReaderConfig {
            seed: opts.seed,
            max_tokens: BATCH_TOKENS,
            max_rows: BATCH_ROWS,
            bucket_window: BUCKET_WINDOW,
            ..Default::default()
        },
        None,
    )?;
    let mut times = Vec::new();
    for i in 0..=LATENCY_BATCHES {
        let batch = reader.next_batch().ok_or_else(|| Error::Measurement {
            what: "teacher latency",
            msg: "the bench data yields no batch".into(),
        })?;
        let t0 = Instant::now();
        src.score(&batch)?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64()); // the first call warms up
        }
    }
    Ok(mean(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_and_bad_ones_are_named() {
        let p = Placement::parse("2+1@0").unwrap();
        assert_eq!(
            (p.teacher_threads, p.trainer_threads, p.prefetch),
            (2, 1, Some(0))
        );
        assert_eq!(p.to_string(), "2+1@0");
        assert_eq!(Placement::parse("1+1").unwrap().prefetch, None);
        for bad in ["2", "0+1", "1+x", "1+1@", "1+1@-1"] {
            let err = Placement::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn metrics_means_skip_the_warm_up_and_name_missing_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let line = |step: u64, s: f64| {
            format!(
                r#"{{"step":{step},"step_s":{s},"wait_s":{},"tokens_per_s":{}}}"#,
                s / 10.0,
                1.0 / s
            )
        };
        let text = [line(1, 100.0), line(2, 1.0), line(3, 3.0)].join("\n");
        std::fs::write(&path, text).unwrap();
        let run = read_metrics(&path, 1).unwrap();
        assert_eq!(run.step_s, 2.0);
        assert!((run.wait_s - 0.2).abs() < 1e-12);
        assert!((run.tokens_per_s - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);

        let err = read_metrics(&path, 3).unwrap_err().to_string();
        assert!(err.contains("no steps after the warm-up"), "{err}");
        std::fs::write(&path, r#"{"step":5,"step_s":1.0}"#).unwrap();
        let err = read_metrics(&path, 0).unwrap_err().to_string();
        assert!(err.contains("line 1 lacks wait_s"), "{err}");
    }
}
