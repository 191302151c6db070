//! The paper's efficiency experiment (Figure 1a): an encoder-decoder student against its
//! decoder-only twin of equal size, batch 1, random weights (speed does not depend on
//! their values). Per input length and model: first-token latency, decode throughput,
//! peak memory.
//!
//! Each (model, length) pair is one [`MeasureSpec`], measured by [`measure`]. The CLI runs
//! every spec in a child process of its own ([`measure_in_child`]) so that the peak RSS
//! it reports belongs to that pair alone; tests call [`measure`] in process.

pub mod report;
pub mod suite;

use std::process::Command;
use std::time::Instant;

use edkd_models::CausalLm;
use edkd_models::nn::AttnMask;
use edkd_models::student::{
    DecoderCache, Encoded, Student, StudentConfig, StudentModel, init_twin,
};
use edkd_models::teacher::LmCache;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::memory;

pub use report::{Row, figure, plot, table, write_csv};

/// Bytes per fp32 element (the benchmark runs in fp32, as the paper's CPU numbers do).
const F32_BYTES: u64 = 4;

/// Which model of the pair a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The encoder-decoder student: encode the input once, then decode.
    Student,
    /// The decoder-only twin: prefill the input into the KV cache, then decode.
    Twin,
}

/// One measurement: a model of a preset at one input length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasureSpec {
    pub arch: Arch,
    pub preset: String,
    pub input_length: i64,
    /// Generated tokens per run: the first one (latency) plus `new_tokens - 1` decode steps.
    pub new_tokens: usize,
    /// Timed runs after one warm-up; the best of each figure is kept.
    pub repeats: usize,
    pub threads: i32,
    /// Seeds the weights; the input ids use `seed + 1`.
    pub seed: i64,
}

/// What [`measure`] found for one spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub params: i64,
    /// Input to the first generated token's logits (and its greedy pick), best run.
    pub first_token_ms: f64,
    /// Tokens per second over the steps after the first token, best run.
    pub decode_tokens_per_s: f64,
    /// Peak RSS of the measuring process (libtorch, weights and the runs).
    pub peak_rss_bytes: u64,
    /// Peak RSS above the RSS right after building the model: what the runs themselves
    /// needed (activations, caches). `None` where the peak cannot be reset.
    pub run_peak_bytes: Option<u64>,
    /// Size of the KV caches at the end of a run, from the shapes (student: decoder
    /// self-attention plus cross-attention K/V of the encoder output; twin: self-attention).
    pub kv_cache_bytes: u64,
}

/// The model under test and its per-run state.
trait Session {
    /// Processes the input and returns the first greedy token.
    fn first(&mut self, ids: &Tensor) -> i64;
    /// Feeds the previous token and returns the next one.
    fn next(&mut self, token: i64) -> i64;
}

fn greedy(logits: &Tensor) -> i64 {
    logits.argmax(-1, false).int64_value(&[0])
}

fn token_tensor(token: i64) -> Tensor {
    Tensor::from_slice(&[token]).reshape([1, 1])
}

struct StudentSession<'a> {
    model: &'a Student,
    new_tokens: i64,
    state: Option<(Encoded, DecoderCache)>,
}

impl Session for StudentSession<'_> {
    fn first(&mut self, ids: &Tensor) -> i64 {
        let valid = Tensor::ones(ids.size(), (Kind::Bool, Device::Cpu));
        let enc = self.model.encode(ids, &valid, false);
        let cache = self.model.new_cache(&enc, self.new_tokens);
        let (enc, cache) = self.state.insert((enc, cache));
        let bos = token_tensor(self.model.config.bos_token_id);
        let h = self.model.decode(&bos, enc, Some(cache), false); // [1, 1, d]
        greedy(&self.model.logits(&h.squeeze_dim(1)))
    }

    fn next(&mut self, token: i64) -> i64 {
        let (enc, cache) = self.state.as_mut().expect("first() ran");
        let h = self
            .model
            .decode(&token_tensor(token), enc, Some(cache), false);
        greedy(&self.model.logits(&h.squeeze_dim(1)))
    }
}

struct TwinSession<'a> {
    model: &'a CausalLm,
    new_tokens: i64,
    cache: Option<LmCache>,
}

impl Session for TwinSession<'_> {
    fn first(&mut self, ids: &Tensor) -> i64 {
        let (b, t) = ids.size2().expect("[b, t] ids");
        let cache = self
            .cache
            .insert(self.model.new_cache(b, t + self.new_tokens));
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0); // [1, t]
        let h = self
            .model
            .hidden(ids, &positions, &AttnMask::Causal, Some(cache), false);
        greedy(&self.model.logits(&h.narrow(1, t - 1, 1).squeeze_dim(1)))
    }

    fn next(&mut self, token: i64) -> i64 {
        let cache = self.cache.as_mut().expect("first() ran");
        let pos = Tensor::from_slice(&[cache.len()]).reshape([1, 1]);
        let h = self.model.hidden(
            &token_tensor(token),
            &pos,
            &AttnMask::Full,
            Some(cache),
            false,
        );
        greedy(&self.model.logits(&h.squeeze_dim(1)))
    }
}

/// One timed generation: (first-token seconds, seconds for the remaining steps).
fn timed_run(session: &mut dyn Session, ids: &Tensor, new_tokens: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let mut token = session.first(ids);
    let first = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 1..new_tokens {
        token = session.next(token);
    }
    (first, t1.elapsed().as_secs_f64())
}

/// KV-cache bytes at the end of a run, from the configs' shapes.
pub fn kv_cache_bytes(
    cfg: &StudentConfig,
    arch: Arch,
    input_length: i64,
    new_tokens: usize,
) -> u64 {
    let per_position = 2 * cfg.num_kv_heads * cfg.head_dim(); // K and V
    let n = new_tokens as i64;
    let elements = match arch {
        Arch::Student => cfg.decoder_layers * per_position * (n + input_length),
        Arch::Twin => (cfg.encoder_layers + cfg.decoder_layers) * per_position * (input_length + n),
    };
    elements as u64 * F32_BYTES
}

fn check(spec: &MeasureSpec) -> Result<()> {
    if spec.new_tokens < 2 {
        return Err(Error::Input {
            field: "new_tokens",
            msg: format!(
                "{} (need >= 2: one first token, then decode steps)",
                spec.new_tokens
            ),
        });
    }
    if spec.input_length < 1 || spec.repeats < 1 {
        return Err(Error::Input {
            field: "input_length/repeats",
            msg: format!(
                "{} / {} (both must be >= 1)",
                spec.input_length, spec.repeats
            ),
        });
    }
    Ok(())
}

/// Builds the model of `spec`, runs one warm-up and `spec.repeats` timed generations in
/// this process, and reads the peak RSS of the runs.
pub fn measure(spec: &MeasureSpec) -> Result<Measurement> {
    check(spec)?;
    tch::set_num_threads(spec.threads);
    let cfg = StudentConfig::preset(&spec.preset)?;
    let new_tokens = spec.new_tokens as i64;
    let (student, twin) = match spec.arch {
        Arch::Student => (
            Some(StudentModel::init(&cfg, Device::Cpu, spec.seed)?),
            None,
        ),
        Arch::Twin => (None, Some(init_twin(&cfg, Device::Cpu, spec.seed))),
    };
    tch::manual_seed(spec.seed + 1);
    let ids = Tensor::randint(
        cfg.vocab_size,
        [1, spec.input_length],
        (Kind::Int64, Device::Cpu),
    );
    let (params, mut session): (i64, Box<dyn Session + '_>) = match (&student, &twin) {
        (Some(s), _) => (
            s.num_parameters(),
            Box::new(StudentSession {
                model: &s.model,
                new_tokens,
                state: None,
            }),
        ),
        (_, Some((vs, lm))) => (
            CausalLm::num_parameters(vs),
            Box::new(TwinSession {
                model: lm,
                new_tokens,
                cache: None,
            }),
        ),
        _ => unreachable!("one model was built"),
    };

    let baseline = memory::rss();
    let reset = memory::reset_peak();
    let (mut first, mut decode) = (f64::INFINITY, f64::INFINITY);
    tch::no_grad(|| {
        timed_run(session.as_mut(), &ids, spec.new_tokens); // warm-up
        for _ in 0..spec.repeats {
            let (f, d) = timed_run(session.as_mut(), &ids, spec.new_tokens);
            first = first.min(f);
            decode = decode.min(d);
        }
    });
    let peak = memory::peak_rss().unwrap_or(0);
    Ok(Measurement {
        params,
        first_token_ms: first * 1e3,
        decode_tokens_per_s: (spec.new_tokens - 1) as f64 / decode,
        peak_rss_bytes: peak,
        run_peak_bytes: baseline.filter(|_| reset).map(|b| peak.saturating_sub(b)),
        kv_cache_bytes: kv_cache_bytes(&cfg, spec.arch, spec.input_length, spec.new_tokens),
    })
}

/// Runs `spec` in a child process: `cmd` plus the spec as one JSON argument; the child
/// calls [`measure`] and prints the [`Measurement`] as JSON on its last stdout line.
pub fn measure_in_child(mut cmd: Command, spec: &MeasureSpec) -> Result<Measurement> {
    let arg = serde_json::to_string(spec).expect("spec serialises");
    let out = cmd
        .arg(arg)
        .output()
        .map_err(|e| Error::Worker(format!("could not start {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Worker(format!(
            "{:?} at length {}: {}",
            spec.arch,
            spec.input_length,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| Error::Worker(format!("printed {last:?}: {e}")))
}

/// The whole experiment's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub preset: String,
    pub input_lengths: Vec<i64>,
    pub new_tokens: usize,
    pub repeats: usize,
    pub threads: i32,
    pub seed: i64,
}

impl Options {
    fn spec(&self, arch: Arch, input_length: i64) -> MeasureSpec {
        MeasureSpec {
            arch,
            preset: self.preset.clone(),
            input_length,
            new_tokens: self.new_tokens,
            repeats: self.repeats,
            threads: self.threads,
            seed: self.seed,
        }
    }
}

/// Measures the student and the twin at every input length with `measure_one` (in
/// process or in a child); `progress` hears about each spec before it runs.
pub fn run(
    opts: &Options,
    mut measure_one: impl FnMut(&MeasureSpec) -> Result<Measurement>,
    mut progress: impl FnMut(&MeasureSpec),
) -> Result<Vec<Row>> {
    StudentConfig::preset(&opts.preset)?; // fail before any work on a bad name
    opts.input_lengths
        .iter()
        .map(|&len| {
            let mut one = |arch| {
                let spec = opts.spec(arch, len);
                progress(&spec);
                measure_one(&spec)
            };
            Ok(Row {
                input_length: len,
                new_tokens: opts.new_tokens,
                student: one(Arch::Student)?,
                twin: one(Arch::Twin)?,
            })
        })
        .collect()
}

/// Defaults that fit a few minutes on 2 cores: the paper's lengths for the small presets,
/// fewer lengths, tokens and repeats for the full-size pair.
pub fn default_options(preset: &str) -> Options {
    let full_size = preset == "mu-330m";
    Options {
        preset: preset.into(),
        input_lengths: if full_size {
            vec![256, 1024, 4096]
        } else {
            vec![256, 512, 1024, 2048, 4096]
        },
        new_tokens: if full_size { 32 } else { 64 },
        repeats: if full_size { 1 } else { 3 },
        threads: 2,
        seed: 0,
    }
}
