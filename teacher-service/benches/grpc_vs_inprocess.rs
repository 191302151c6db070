//! Teacher service benchmark: scored target tokens/s through gRPC (loopback, pipelined
//! stream) vs the same batches scored in-process, wire bytes per target token at k = 64, and
//! unary p50/p99 latency.
//!
//! `cargo bench -p edkd-teacher --bench grpc_vs_inprocess [-- --layers 2 --hidden 256 ...]`
//! Random weights (a Llama-shaped model with a 32k vocabulary) are written to a temp folder.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use edkd_models::teacher::{CausalLm, CausalLmConfig};
use edkd_models::{LoadOptions, Teacher};
use edkd_teacher::proto::{ScoreRequest, Sequence, ValueFormat};
use edkd_teacher::scoring::{Scorer, SeqInput};
use edkd_teacher::wire::decode_response;
use edkd_teacher::{Client, ClientConfig, ServerConfig};
use prost::Message;

const TOP_K: usize = 64;

struct Shape {
    hidden: i64,
    layers: i64,
    vocab: i64,
    batches: usize,
    seqs_per_batch: usize,
    prompt: usize,
    target: usize,
    in_flight: usize,
    latency_calls: usize,
    /// Alternating in-process / gRPC measurements.
    rounds: usize,
}

/// One timed pass of every batch through the service.
struct GrpcRun {
    tokens_per_s: f64,
    /// Response bytes on the wire (protobuf encoded).
    wire: usize,
    /// Fraction of the run the batcher spent in forward passes.
    busy: f64,
    passes: u64,
    usage: Usage,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_random_teacher(dir: &Path, shape: &Shape) -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/teachers/llama_linear/config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fixture)?)?;
    let heads = shape.hidden / 64;
    json["hidden_size"] = shape.hidden.into();
    json["intermediate_size"] = (shape.hidden * 3).into();
    json["num_hidden_layers"] = shape.layers.into();
    json["num_attention_heads"] = heads.into();
    json["num_key_value_heads"] = (heads / 2).max(1).into();
    json["head_dim"] = 64.into();
    json["vocab_size"] = shape.vocab.into();
    json["max_position_embeddings"] = 2048.into();
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let config = CausalLmConfig::from_folder(dir)?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = CausalLm::new(&vs.root(), &config);
    edkd_models::student::save_folder(dir, &json, &vs, None)?;
    Ok(())
}

fn tokens(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(vocab)) as u32
        })
        .collect()
}

/// Process-wide (minor page faults, user + system CPU seconds) so far, from /proc/self/stat.
fn cpu_usage() -> (u64, f64) {
    /// Linux reports CPU times in USER_HZ ticks, 100 per second on every common build.
    const TICKS_PER_S: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // stat(5): minflt is field 10, utime 14, stime 15 (1-based, counting pid and comm).
    (field(7), (field(11) + field(12)) as f64 / TICKS_PER_S)
}

/// Page faults and CPU seconds spent while running `f`.
fn with_usage<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let (faults, cpu) = cpu_usage();
    let out = f();
    let (faults_after, cpu_after) = cpu_usage();
    let usage = Usage {
        faults: faults_after - faults,
        cpu_s: cpu_after - cpu,
    };
    (out, usage)
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    faults: u64,
    cpu_s: f64,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let shape = Shape {
        hidden: arg("--hidden", 256) as i64,
        layers: arg("--layers", 2) as i64,
        vocab: arg("--vocab", 32000) as i64,
        batches: arg("--batches", 24),
        seqs_per_batch: arg("--seqs", 8),
        prompt: arg("--prompt", 96),
        target: arg("--target", 32),
        in_flight: arg("--in-flight", 2),
        latency_calls: arg("--latency-calls", 100),
        rounds: arg("--rounds", 3).max(1),
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("teacher");
    write_random_teacher(&dir, &shape).context("writing the random teacher")?;
    let vocab = shape.vocab as u32;

    let batches: Vec<Vec<Sequence>> = (0..shape.batches)
        .map(|b| {
            (0..shape.seqs_per_batch)
                .map(|s| {
                    let seed = (b * 1000 + s) as u64;
                    // Mixed lengths: 50..100% of the nominal sizes.
                    let p = shape.prompt / 2 + (seed as usize * 7) % (shape.prompt / 2 + 1);
                    let t = shape.target / 2 + (seed as usize * 5) % (shape.target / 2 + 1);
                    Sequence {
                        id: format!("b{b}s{s}"),
                        prompt_ids: tokens(seed, p.max(1), vocab),
                        target_ids: tokens(seed + 7, t.max(1), vocab),
                        images: Vec::new(),
                    }
                })
                .collect()
        })
        .collect();
    let targets: usize = batches.iter().flatten().map(|s| s.target_ids.len()).sum();
    let request = |i: usize, seqs: &[Sequence]| ScoreRequest {
        request_id: i as u64,
        sequences: seqs.to_vec(),
        top_k: TOP_K as u32,
        temperature: 1.0,
        value_format: ValueFormat::F16 as i32,
        tokenizer_sha256: String::new(),
        ..Default::default()
    };

    // In-process: the same batches through the same scoring code, no network, on a thread
    // of its own like the server's batcher.
    let inputs: Vec<Vec<SeqInput>> = batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|s| SeqInput {
                    prompt: s.prompt_ids.clone(),
                    target: s.target_ids.clone(),
                    k: TOP_K,
                    temperature: 1.0,
                    ..SeqInput::default()
                })
                .collect()
        })
        .collect();
    let measure_in_process = || -> anyhow::Result<(f64, Usage)> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let scorer = Scorer::new(Teacher::load(&dir, LoadOptions::default())?);
                let run = || -> anyhow::Result<f64> {
                    let started = Instant::now();
                    for b in &inputs {
                        let refs: Vec<&SeqInput> = b.iter().collect();
                        let out = scorer.score(&refs)?;
                        anyhow::ensure!(out.len() == b.len());
                    }
                    Ok(targets as f64 / started.elapsed().as_secs_f64())
                };
                run()?; // warm-up
                let (tokens_per_s, usage) = with_usage(run);
                Ok((tokens_per_s?, usage))
            })
            .join()
            .expect("bench thread")
        })
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let server = runtime.block_on(async {
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            max_request_tokens: 1 << 20,
            max_wait: Duration::from_millis(1),
            ..ServerConfig::default()
        };
        anyhow::Ok(edkd_teacher::start(Teacher::load(&dir, LoadOptions::default())?, config).await?)
    })?;
    let client = {
        let _runtime = runtime.enter();
        Client::connect(ClientConfig::new(server.addr.to_string()))?
    };
    let requests: Vec<ScoreRequest> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| request(i, b))
        .collect();
    let forward = &server.metrics.forward_seconds;
    let run_grpc = || -> anyhow::Result<GrpcRun> {
        runtime.block_on(async {
            let (busy_before, passes_before) =
                (forward.get_sample_sum(), forward.get_sample_count());
            let usage_before = cpu_usage();
            let started = Instant::now();
            let responses = client.score_all(requests.clone(), shape.in_flight).await?;
            let mut wire = 0usize;
            for r in &responses {
                wire += r.encoded_len();
                decode_response(r)?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let usage_after = cpu_usage();
            Ok(GrpcRun {
                usage: Usage {
                    faults: usage_after.0 - usage_before.0,
                    cpu_s: usage_after.1 - usage_before.1,
                },
                tokens_per_s: targets as f64 / elapsed,
                wire,
                busy: (forward.get_sample_sum() - busy_before) / elapsed,
                passes: forward.get_sample_count() - passes_before,
            })
        })
    };
    run_grpc()?; // warm-up

    // Alternate the two, starting and ending in-process: on a shared machine the load
    // changes during the run; the best of each is compared.
    let mut in_process = vec![measure_in_process()?];
    let mut grpc = Vec::with_capacity(shape.rounds);
    for _ in 0..shape.rounds {
        grpc.push(run_grpc()?);
        in_process.push(measure_in_process()?);
    }
    let (best_in_process, in_process_usage) = in_process
        .iter()
        .copied()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .context("no in-process run")?;
    let in_process: Vec<f64> = in_process.iter().map(|r| r.0).collect();
    let best = grpc
        .iter()
        .max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s))
        .context("no gRPC round")?;
    // Each gRPC round against the mean of the in-process runs either side of it.
    let mut round_ratios: Vec<f64> = grpc
        .iter()
        .enumerate()
        .map(|(i, g)| 2.0 * g.tokens_per_s / (in_process[i] + in_process[i + 1]))
        .collect();
    round_ratios.sort_by(f64::total_cmp);

    let (p50, p99) = runtime.block_on(async {
        let mut latencies = Vec::with_capacity(shape.latency_calls);
        for i in 0..shape.latency_calls {
            let b = &batches[i % batches.len()];
            let started = Instant::now();
            client.score(request(i, &b[..1])).await?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        anyhow::Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
    })?;
    runtime.block_on(server.shutdown())?;

    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "teacher: Llama-shaped random, hidden {}, {} layers, vocab {}; {} batches x {} sequences, prompt ~{} target ~{} ({} target tokens), k {TOP_K}, f16 values",
        shape.hidden,
        shape.layers,
        shape.vocab,
        shape.batches,
        shape.seqs_per_batch,
        shape.prompt,
        shape.target,
        targets
    );
    println!(
        "in-process      {best_in_process:>10.0} target tokens/s (best of {}: {})",
        in_process.len(),
        list(&in_process)
    );
    let grpc_all: Vec<f64> = grpc.iter().map(|g| g.tokens_per_s).collect();
    println!(
        "gRPC (stream)   {:>10.0} target tokens/s (best of {}: {}; {} in flight)",
        best.tokens_per_s,
        grpc.len(),
        list(&grpc_all),
        shape.in_flight
    );
    println!(
        "                batcher in forward passes {:.0}% of that run ({} passes, {:.1} ms each; in-process {:.1} ms per batch)",
        100.0 * best.busy,
        best.passes,
        1e3 * best.busy * targets as f64 / best.tokens_per_s / best.passes.max(1) as f64,
        1e3 * targets as f64 / best_in_process / shape.batches as f64
    );
    let per_k = |u: Usage| 1e3 * u.cpu_s / targets as f64;
    println!(
        "                CPU s per 1k target tokens: in-process {:.2}, gRPC {:.2} (all threads); page faults {} vs {}",
        per_k(in_process_usage),
        per_k(best.usage),
        in_process_usage.faults,
        best.usage.faults
    );
    // The median round is the headline: a single quiet moment for one side skews the bests.
    println!(
        "ratio           {:>10.3}  median of the rounds (goal >= 0.90); rounds {}; best vs best {:.3}",
        round_ratios[round_ratios.len() / 2],
        round_ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        best.tokens_per_s / best_in_process
    );
    println!(
        "wire bytes      {:>10.1} per target token (goal <= 400)",
        best.wire as f64 / targets as f64
    );
    println!(
        "unary latency   p50 {:.2} ms, p99 {:.2} ms (1 sequence per call)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}
