//! The paper's efficiency experiment (Figure 1a): an encoder-decoder student against its
//! decoder-only twin of equal size, batch 1, random weights (speed does not depend on
//! their values). Per input length and model: first-token latency, decode throughput,
//! peak memory.
//!
//! Each (model, length) pair is one [`MeasureSpec`], measured by [`measure`]. The CLI runs
//! every spec in a child process of its own ([`measure_in_child`]) so that the peak RSS
//! it reports belongs to that pair alone; tests call [`measure`] in process.

pub mod experiment;
pub mod flops;
pub mod report;
pub mod report_md;
pub mod session;
pub mod suite;
pub mod vision;

use std::process::Command;

use edkd_models::CausalLm;
use edkd_models::student::{StudentConfig, StudentModel, init_twin};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::memory;

pub use flops::{Cost, cost};
pub use report::{Row, figure, plot, table, write_csv};
pub use session::{Part, Parts};
use session::{Session, StudentSession, TwinSession, timed_run};

fn default_dtype() -> String {
    "f32".into()
}

fn default_device() -> String {
    "cpu".into()
}

/// Bytes per element of a weight dtype this benchmark runs.
pub fn elem_bytes(kind: Kind) -> u64 {
    match kind {
        Kind::BFloat16 | Kind::Half => 2,
        Kind::Double => 8,
        _ => 4,
    }
}

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
    /// Weight and compute dtype: `f32` or `bf16` (`f16` on CUDA).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Image tokens before the text (`input_length` is then the text's length): tiles of
    /// `tower`'s patch tokens, through the same tower and projector on both sides.
    #[serde(default)]
    pub image_tokens: i64,
    /// The vision tower ([`vision::TOWERS`]) when `image_tokens > 0`.
    #[serde(default = "default_tower")]
    pub tower: String,
}

pub(crate) fn default_tower() -> String {
    vision::TOWERS[0].into()
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
    /// The best first-token run split into components, milliseconds.
    #[serde(default)]
    pub first_parts_ms: Parts,
    /// The best decode run's mean step split into components, milliseconds.
    #[serde(default)]
    pub step_parts_ms: Parts,
    /// FLOPs and bytes by construction (see [`flops`]).
    pub cost: Cost,
}

/// KV-cache bytes at the end of a run, from the configs' shapes.
pub fn kv_cache_bytes(
    cfg: &StudentConfig,
    arch: Arch,
    input_length: i64,
    new_tokens: usize,
    elem_bytes: u64,
) -> u64 {
    let per_position = 2 * cfg.num_kv_heads * cfg.head_dim(); // K and V
    let n = new_tokens as i64;
    let elements = match arch {
        Arch::Student => cfg.decoder_layers * per_position * (n + input_length),
        Arch::Twin => (cfg.encoder_layers + cfg.decoder_layers) * per_position * (input_length + n),
    };
    elements as u64 * elem_bytes
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
    let device = edkd_models::device::parse_device(&spec.device)?;
    let kind = edkd_models::device::parse_dtype(&spec.dtype)?;
    edkd_models::device::check_available(device)?;
    edkd_models::teacher::check_dtype(kind, device)?;
    tch::set_num_threads(spec.threads);
    let cfg = StudentConfig::preset(&spec.preset)?;
    let new_tokens = spec.new_tokens as i64;
    let (student, twin) = match spec.arch {
        Arch::Student => {
            let mut m = StudentModel::init(&cfg, device, spec.seed)?;
            m.vs.set_kind(kind);
            (Some(m), None)
        }
        Arch::Twin => {
            let (mut vs, lm) = init_twin(&cfg, device, spec.seed);
            vs.set_kind(kind);
            (None, Some((vs, lm)))
        }
    };
    // The same tower and projector (same seed) on both sides.
    let images = (spec.image_tokens > 0)
        .then(|| {
            vision::ImageInput::new(
                &spec.tower,
                spec.image_tokens,
                cfg.d_model,
                kind,
                device,
                spec.seed + 2,
            )
        })
        .transpose()?;
    tch::manual_seed(spec.seed + 1);
    let ids = Tensor::randint(
        cfg.vocab_size,
        [1, spec.input_length],
        (Kind::Int64, device),
    );
    let (text_params, mut session): (i64, Box<dyn Session + '_>) = match (&student, &twin) {
        (Some(s), _) => (
            s.num_parameters(),
            Box::new(StudentSession {
                model: &s.model,
                new_tokens,
                state: None,
                images: images.as_ref(),
            }),
        ),
        (_, Some((vs, lm))) => (
            CausalLm::num_parameters(vs),
            Box::new(TwinSession {
                model: lm,
                new_tokens,
                cache: None,
                images: images.as_ref(),
            }),
        ),
        _ => unreachable!("one model was built"),
    };
    let params = text_params + images.as_ref().map_or(0, |i| i.num_parameters());
    let input_length = spec.input_length + spec.image_tokens;

    let baseline = memory::rss();
    let reset = memory::reset_peak();
    let mut first: Option<Parts> = None;
    let mut decode: Option<Parts> = None;
    tch::no_grad(|| {
        timed_run(session.as_mut(), &ids, spec.new_tokens, device); // warm-up
        for _ in 0..spec.repeats {
            let (f, d) = timed_run(session.as_mut(), &ids, spec.new_tokens, device);
            if first.as_ref().is_none_or(|b| f.total() < b.total()) {
                first = Some(f);
            }
            if decode.as_ref().is_none_or(|b| d.total() < b.total()) {
                decode = Some(d);
            }
        }
    });
    let (first, decode) = (first.expect("repeats >= 1"), decode.expect("repeats >= 1"));
    let peak = memory::peak_rss().unwrap_or(0);
    let steps = (spec.new_tokens - 1) as f64;
    let elem = elem_bytes(kind);
    Ok(Measurement {
        params,
        first_token_ms: first.total() * 1e3,
        decode_tokens_per_s: steps / decode.total(),
        peak_rss_bytes: peak,
        run_peak_bytes: baseline.filter(|_| reset).map(|b| peak.saturating_sub(b)),
        kv_cache_bytes: kv_cache_bytes(&cfg, spec.arch, input_length, spec.new_tokens, elem),
        first_parts_ms: first.scaled(1e-3),
        step_parts_ms: decode.scaled(steps * 1e-3),
        cost: {
            let mut c = cost(&cfg, spec.arch, input_length, spec.new_tokens, elem as f64);
            c.image_flops = images.as_ref().map_or(0.0, |i| i.flops());
            c.first_flops += c.image_flops;
            c
        },
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub preset: String,
    pub input_lengths: Vec<i64>,
    pub new_tokens: usize,
    pub repeats: usize,
    pub threads: i32,
    pub seed: i64,
    /// `f32` or `bf16` (`f16` on CUDA).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Image tokens before the text of every input (0: text only), and their tower.
    #[serde(default)]
    pub image_tokens: i64,
    #[serde(default = "default_tower")]
    pub tower: String,
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
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            image_tokens: self.image_tokens,
            tower: self.tower.clone(),
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
        dtype: default_dtype(),
        device: default_device(),
        image_tokens: 0,
        tower: default_tower(),
    }
}
