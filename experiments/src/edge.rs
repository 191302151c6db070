//! The edge-deployment measurement: the student and its decoder-only twin on libtorch f32,
//! ONNX Runtime f32 and ONNX Runtime int8 (dynamic int8 matmuls), at 1 and 2 threads, per
//! input length: first-token latency, decode tokens/s, peak memory and model bytes. Batch
//! 1, random weights (speed does not depend on their values), greedy decoding with the
//! caches of each runtime. The closest this project gets to the paper's on-device numbers
//! without the device: a CPU, its threads limited, running the exported graphs.
//!
//! Each measurement runs in a child process of its own ([`measure_in_child`]) so that the
//! peak RSS belongs to it alone; the ONNX exports are made once per model and scheme by
//! [`prepare_exports`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use edkd_export::{ExportOptions, OnnxModel, Scheme, export_folder};
use edkd_models::student::{StudentConfig, StudentModel, init_twin, save_folder};
use serde::{Deserialize, Serialize};

use crate::efficiency::{self, Arch, MeasureSpec};
use crate::error::{Error, Result};
use crate::memory;

/// Bytes per f32 weight on libtorch.
const F32_BYTES: u64 = 4;
const MIB: f64 = (1u64 << 20) as f64;

/// Where a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeRuntime {
    Torch,
    OrtF32,
    OrtInt8,
}

impl EdgeRuntime {
    pub const ALL: [EdgeRuntime; 3] = [
        EdgeRuntime::Torch,
        EdgeRuntime::OrtF32,
        EdgeRuntime::OrtInt8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EdgeRuntime::Torch => "libtorch-f32",
            EdgeRuntime::OrtF32 => "ort-f32",
            EdgeRuntime::OrtInt8 => "ort-int8",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s || format!("{r:?}").eq_ignore_ascii_case(s))
    }

    fn scheme(self) -> Option<Scheme> {
        match self {
            EdgeRuntime::Torch => None,
            EdgeRuntime::OrtF32 => Some(Scheme::None),
            EdgeRuntime::OrtInt8 => Some(Scheme::Int8),
        }
    }
}

fn arch_name(a: Arch) -> &'static str {
    match a {
        Arch::Student => "student",
        Arch::Twin => "twin",
    }
}

/// One measurement: a model on a runtime with a thread count at one input length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeSpec {
    pub arch: Arch,
    pub runtime: EdgeRuntime,
    pub preset: String,
    pub input_length: i64,
    pub new_tokens: usize,
    pub repeats: usize,
    pub threads: usize,
    pub seed: i64,
    /// The export folder of this model and scheme (ONNX Runtime only).
    pub export: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeMeasurement {
    pub first_token_ms: f64,
    pub decode_tokens_per_s: f64,
    pub peak_rss_bytes: u64,
    /// Peak RSS above the worker's RSS before the model was built or loaded: weights,
    /// runtime arenas and caches, without the process's own libraries (`None` where the
    /// peak cannot be reset).
    pub model_run_bytes: Option<u64>,
    /// Bytes of the weights as the runtime loads them (f32 tensors; the ONNX files).
    pub model_bytes: u64,
}

/// Exports the student and the twin of `preset` (weights from `seed`, as the libtorch
/// measurement builds them) in f32 and int8 under `dir`; returns the folders by
/// (arch, runtime).
pub fn prepare_exports(
    preset: &str,
    seed: i64,
    dir: &Path,
) -> Result<Vec<(Arch, EdgeRuntime, PathBuf)>> {
    let cfg = StudentConfig::preset(preset)?;
    let mut out = Vec::new();
    for arch in [Arch::Student, Arch::Twin] {
        let src = dir.join(format!("{}-{preset}", arch_name(arch)));
        match arch {
            Arch::Student => StudentModel::init(&cfg, tch::Device::Cpu, seed)?.save(&src, None)?,
            Arch::Twin => {
                let (vs, twin) = init_twin(&cfg, tch::Device::Cpu, seed);
                save_folder(&src, &twin.config.to_hf_json(), &vs, None)?;
            }
        }
        for rt in [EdgeRuntime::OrtF32, EdgeRuntime::OrtInt8] {
            let dst = dir.join(format!("{}-{preset}-{}", arch_name(arch), rt.name()));
            let opts = ExportOptions {
                scheme: rt.scheme().expect("an ONNX runtime"),
                quantize_embeddings: true,
            };
            export_folder(&src, &dst, &opts)?;
            out.push((arch, rt, dst));
        }
        std::fs::remove_dir_all(&src).map_err(Error::io(&src))?;
    }
    Ok(out)
}

/// Measures `spec` in this process (one warm-up, then the best of `repeats`).
pub fn measure(spec: &EdgeSpec) -> Result<EdgeMeasurement> {
    let before = memory::rss().filter(|_| memory::reset_peak());
    let above = |peak: u64| before.map(|b| peak.saturating_sub(b));
    if spec.runtime == EdgeRuntime::Torch {
        let m = efficiency::measure(&MeasureSpec {
            arch: spec.arch,
            preset: spec.preset.clone(),
            input_length: spec.input_length,
            new_tokens: spec.new_tokens,
            repeats: spec.repeats,
            threads: spec.threads as i32,
            seed: spec.seed,
            dtype: "f32".into(),
            device: "cpu".into(),
            image_tokens: 0,
            tower: String::new(),
        })?;
        return Ok(EdgeMeasurement {
            first_token_ms: m.first_token_ms,
            decode_tokens_per_s: m.decode_tokens_per_s,
            peak_rss_bytes: m.peak_rss_bytes,
            model_run_bytes: above(m.peak_rss_bytes),
            model_bytes: m.params as u64 * F32_BYTES,
        });
    }
    let dir = spec.export.as_ref().ok_or(Error::Input {
        field: "export",
        msg: "an ONNX Runtime measurement needs its export folder".into(),
    })?;
    if spec.new_tokens < 2 || spec.repeats < 1 || spec.input_length < 1 {
        return Err(Error::Input {
            field: "new_tokens/repeats/input_length",
            msg: "need new_tokens >= 2, repeats >= 1, input_length >= 1".into(),
        });
    }
    let mut model = OnnxModel::load(dir, spec.threads)?;
    let vocab = model.manifest.vocab_size;
    tch::manual_seed(spec.seed + 1);
    let ids = tch::Tensor::randint(
        vocab,
        [spec.input_length],
        (tch::Kind::Int64, tch::Device::Cpu),
    );
    let ids = Vec::<i64>::try_from(&ids).map_err(edkd_models::Error::from)?;
    let (mut first, mut decode) = (f64::INFINITY, f64::INFINITY);
    model.time_greedy(&ids, spec.new_tokens)?; // warm-up
    for _ in 0..spec.repeats {
        let (f, d) = model.time_greedy(&ids, spec.new_tokens)?;
        first = first.min(f);
        decode = decode.min(d);
    }
    Ok(EdgeMeasurement {
        first_token_ms: first * 1e3,
        decode_tokens_per_s: (spec.new_tokens - 1) as f64 / decode,
        peak_rss_bytes: memory::peak_rss().unwrap_or(0),
        model_run_bytes: above(memory::peak_rss().unwrap_or(0)),
        model_bytes: model.manifest.model_bytes(),
    })
}

/// Runs `spec` in a child: `cmd` plus the spec as one JSON argument; the child prints the
/// [`EdgeMeasurement`] as JSON on its last stdout line.
pub fn measure_in_child(mut cmd: Command, spec: &EdgeSpec) -> Result<EdgeMeasurement> {
    let out = cmd
        .arg(serde_json::to_string(spec).expect("spec serialises"))
        .output()
        .map_err(|e| Error::Worker(format!("could not start {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Worker(format!(
            "{} on {} at length {}: {}",
            arch_name(spec.arch),
            spec.runtime.name(),
            spec.input_length,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| Error::Worker(format!("printed {last:?}: {e}")))
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeRow {
    pub arch: Arch,
    pub runtime: EdgeRuntime,
    pub threads: usize,
    pub input_length: i64,
    pub m: EdgeMeasurement,
}

/// The experiment's settings.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeOptions {
    pub preset: String,
    pub input_lengths: Vec<i64>,
    pub threads: Vec<usize>,
    pub runtimes: Vec<EdgeRuntime>,
    pub new_tokens: usize,
    pub repeats: usize,
    pub seed: i64,
}

/// Defaults: the mid preset at 256..2048, mu-330m at a few lengths, 1 and 2 threads.
pub fn default_options(preset: &str) -> EdgeOptions {
    let full = preset == "mu-330m";
    EdgeOptions {
        preset: preset.into(),
        input_lengths: if full {
            vec![256, 1024, 2048]
        } else {
            vec![256, 512, 1024, 2048]
        },
        threads: vec![1, 2],
        runtimes: EdgeRuntime::ALL.to_vec(),
        new_tokens: if full { 32 } else { 64 },
        repeats: if full { 1 } else { 3 },
        seed: 0,
    }
}

/// Measures every (length, threads, runtime, arch) with `measure_one`.
pub fn run(
    opts: &EdgeOptions,
    exports: &[(Arch, EdgeRuntime, PathBuf)],
    mut measure_one: impl FnMut(&EdgeSpec) -> Result<EdgeMeasurement>,
    mut progress: impl FnMut(&EdgeSpec),
) -> Result<Vec<EdgeRow>> {
    let mut rows = Vec::new();
    for &input_length in &opts.input_lengths {
        for &threads in &opts.threads {
            for &runtime in &opts.runtimes {
                for arch in [Arch::Student, Arch::Twin] {
                    let export = exports
                        .iter()
                        .find(|(a, r, _)| *a == arch && *r == runtime)
                        .map(|(_, _, p)| p.clone());
                    let spec = EdgeSpec {
                        arch,
                        runtime,
                        preset: opts.preset.clone(),
                        input_length,
                        new_tokens: opts.new_tokens,
                        repeats: opts.repeats,
                        threads,
                        seed: opts.seed,
                        export,
                    };
                    progress(&spec);
                    let m = measure_one(&spec)?;
                    rows.push(EdgeRow {
                        arch,
                        runtime,
                        threads,
                        input_length,
                        m,
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// The whole benchmark: exports (when an ONNX runtime is asked for) into
/// `out/exports-PRESET`, every spec measured in a fresh `exe bench edge --worker` process,
/// then `out/edge-PRESET.{csv,json}` and a figure per thread count. Returns the rows and
/// the files written.
pub fn bench(opts: &EdgeOptions, out: &Path, exe: &Path) -> Result<(Vec<EdgeRow>, Vec<PathBuf>)> {
    let wants_ort = opts.runtimes.iter().any(|r| *r != EdgeRuntime::Torch);
    if wants_ort {
        edkd_export::runtime::init()?;
    }
    let exports = if wants_ort {
        eprintln!(
            "exporting the {} student and twin (f32, int8) ...",
            opts.preset
        );
        prepare_exports(
            &opts.preset,
            opts.seed,
            &out.join(format!("exports-{}", opts.preset)),
        )?
    } else {
        Vec::new()
    };
    let in_child = |spec: &EdgeSpec| {
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "edge", "--worker"]);
        measure_in_child(cmd, spec)
    };
    let progress = |s: &EdgeSpec| {
        eprintln!(
            "measuring {:?} on {} with {} thread(s) at {} input tokens ...",
            s.arch,
            s.runtime.name(),
            s.threads,
            s.input_length
        );
    };
    let rows = run(opts, &exports, in_child, progress)?;
    let stem = out.join(format!("edge-{}", opts.preset));
    let csv = stem.with_extension("csv");
    write_csv(&csv, &rows)?;
    let json = stem.with_extension("json");
    let text = serde_json::to_string_pretty(opts).expect("options serialise") + "\n";
    std::fs::write(&json, text).map_err(Error::io(&json))?;
    let title = format!(
        "{} student vs decoder-only twin on libtorch and ONNX Runtime",
        opts.preset
    );
    let mut files = vec![csv, json];
    files.extend(plot(&rows, &stem, &title)?);
    Ok((rows, files))
}

pub const CSV_HEADER: &str = "arch,runtime,threads,input_length,first_token_ms,decode_tokens_per_s,peak_rss_mib,model_run_mib,model_mib";

pub fn write_csv(path: &Path, rows: &[EdgeRow]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        let _ = writeln!(
            text,
            "{},{},{},{},{:.3},{:.2},{:.1},{},{:.2}",
            arch_name(r.arch),
            r.runtime.name(),
            r.threads,
            r.input_length,
            r.m.first_token_ms,
            r.m.decode_tokens_per_s,
            r.m.peak_rss_bytes as f64 / MIB,
            r.m.model_run_bytes
                .map(|b| format!("{:.1}", b as f64 / MIB))
                .unwrap_or_default(),
            r.m.model_bytes as f64 / MIB
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    std::fs::write(path, text).map_err(Error::io(path))
}

fn find(
    rows: &[EdgeRow],
    arch: Arch,
    rt: EdgeRuntime,
    threads: usize,
    len: i64,
) -> Option<&EdgeMeasurement> {
    rows.iter()
        .find(|r| {
            r.arch == arch && r.runtime == rt && r.threads == threads && r.input_length == len
        })
        .map(|r| &r.m)
}

/// The measurements as a text table, then the ratios side by side: ORT f32 / libtorch,
/// ORT int8 / ORT f32 and student / twin on each runtime (first-token latency and decode
/// throughput; below 1 is sooner for latency, above 1 is faster for throughput).
pub fn table(rows: &[EdgeRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:<13} {:>3} {:>6} {:>11} {:>10} {:>9} {:>10} {:>9}",
        "model",
        "runtime",
        "thr",
        "input",
        "first ms",
        "decode t/s",
        "peak MiB",
        "model+run",
        "model MiB"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<8} {:<13} {:>3} {:>6} {:>11.2} {:>10.1} {:>9.1} {:>10} {:>9.2}",
            arch_name(r.arch),
            r.runtime.name(),
            r.threads,
            r.input_length,
            r.m.first_token_ms,
            r.m.decode_tokens_per_s,
            r.m.peak_rss_bytes as f64 / MIB,
            r.m.model_run_bytes
                .map(|b| format!("{:.1}", b as f64 / MIB))
                .unwrap_or("-".into()),
            r.m.model_bytes as f64 / MIB
        );
    }
    let _ = writeln!(t, "\nratios (first-token latency / decode tokens/s):");
    let mut keys: Vec<(usize, i64)> = rows.iter().map(|r| (r.threads, r.input_length)).collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    let ratio = |a: Option<&EdgeMeasurement>, b: Option<&EdgeMeasurement>| match (a, b) {
        (Some(a), Some(b)) => format!(
            "{:.2} / {:.2}",
            a.first_token_ms / b.first_token_ms,
            a.decode_tokens_per_s / b.decode_tokens_per_s
        ),
        _ => "-".into(),
    };
    let cols = [
        "student f32/torch",
        "twin f32/torch",
        "student int8/f32",
        "twin int8/f32",
        "student/twin torch",
        "student/twin f32",
        "student/twin int8",
    ];
    let _ = write!(t, "{:>3} {:>6}", "thr", "input");
    for c in cols {
        let _ = write!(t, "  {c:>18}");
    }
    t.push('\n');
    use EdgeRuntime::*;
    for (th, len) in keys {
        let g = |a, r| find(rows, a, r, th, len);
        let (s, w) = (Arch::Student, Arch::Twin);
        let cells = [
            ratio(g(s, OrtF32), g(s, Torch)),
            ratio(g(w, OrtF32), g(w, Torch)),
            ratio(g(s, OrtInt8), g(s, OrtF32)),
            ratio(g(w, OrtInt8), g(w, OrtF32)),
            ratio(g(s, Torch), g(w, Torch)),
            ratio(g(s, OrtF32), g(w, OrtF32)),
            ratio(g(s, OrtInt8), g(w, OrtInt8)),
        ];
        let _ = write!(t, "{th:>3} {len:>6}");
        for c in cells {
            let _ = write!(t, "  {c:>18}");
        }
        t.push('\n');
    }
    t
}

/// Size of one edge figure (two panels side by side), in pixels.
pub const PLOT_WIDTH: u32 = 1320;
pub const PLOT_HEIGHT: u32 = 520;

/// First-token latency and decode throughput against input length at `threads` threads:
/// one line per model and runtime (student blue, twin red; lighter for ONNX Runtime f32,
/// lightest for int8).
pub fn figure(rows: &[EdgeRow], threads: usize, title: &str) -> edkd_plot::Figure {
    use edkd_plot::{Axis, Figure, PALETTE, Panel, Series};
    let colour = |a: Arch, rt: EdgeRuntime| {
        let base = match a {
            Arch::Student => PALETTE[0],
            Arch::Twin => PALETTE[3],
        };
        let mix = match rt {
            EdgeRuntime::Torch => 0.0,
            EdgeRuntime::OrtF32 => 0.35,
            EdgeRuntime::OrtInt8 => 0.6,
        };
        base.map(|c| (c as f64 + (255.0 - c as f64) * mix) as u8)
    };
    let panel = |label: &str, title: String, f: &dyn Fn(&EdgeMeasurement) -> f64| {
        let mut p =
            Panel::new(Axis::log2("input length (tokens)"), Axis::linear(label)).titled(title);
        for a in [Arch::Student, Arch::Twin] {
            for rt in EdgeRuntime::ALL {
                let pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.arch == a && r.runtime == rt && r.threads == threads)
                    .map(|r| (r.input_length as f64, f(&r.m)))
                    .collect();
                if !pts.is_empty() {
                    let name = format!("{} {}", arch_name(a), rt.name());
                    p = p.with(Series::line_markers(name, pts).with_colour(colour(a, rt)));
                }
            }
        }
        p
    };
    Figure::new(title, PLOT_WIDTH, PLOT_HEIGHT)
        .with(panel(
            "first-token latency (ms)",
            "first-token latency".into(),
            &|m| m.first_token_ms,
        ))
        .with(panel(
            "decode throughput (tokens/s)",
            "decode throughput (batch 1)".into(),
            &|m| m.decode_tokens_per_s,
        ))
}

/// Draws one [`figure`] per thread count as `{stem}-{threads}t.png`; returns the files.
pub fn plot(rows: &[EdgeRow], stem: &Path, title: &str) -> Result<Vec<PathBuf>> {
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort();
    threads.dedup();
    let mut out = Vec::new();
    for t in threads {
        let png = PathBuf::from(format!("{}-{t}t.png", stem.display()));
        figure(rows, t, &format!("{title}, {t} thread(s)")).save_png(&png)?;
        out.push(png);
    }
    Ok(out)
}

/// Greedy decoding of one input with the student on libtorch, timed as
/// [`OnnxModel::time_greedy`] times the export: (seconds to the first token, seconds for
/// the `new_tokens - 1` steps after it).
pub fn time_student_torch(
    model: &edkd_models::student::Student,
    ids: &[i64],
    new_tokens: usize,
) -> (f64, f64) {
    use tch::{Device, Kind, Tensor};
    tch::no_grad(|| {
        let t0 = std::time::Instant::now();
        let x = Tensor::from_slice(ids).reshape([1, ids.len() as i64]);
        let valid = Tensor::ones(x.size(), (Kind::Bool, Device::Cpu));
        let enc = model.encode(&x, &valid, false);
        let mut cache = model.new_cache(&enc, new_tokens as i64);
        let token = |t: i64| Tensor::from_slice(&[t]).reshape([1, 1]);
        let next = |h: Tensor| {
            model
                .logits(&h.squeeze_dim(1))
                .argmax(-1, false)
                .int64_value(&[0])
        };
        let mut t = next(model.decode(
            &token(model.config.bos_token_id),
            &enc,
            Some(&mut cache),
            false,
        ));
        let first = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        for _ in 1..new_tokens {
            t = next(model.decode(&token(t), &enc, Some(&mut cache), false));
        }
        (first, t1.elapsed().as_secs_f64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole experiment at toy size, in process: every configuration is measured, the
    /// int8 files are smaller than the f32 ones, and the CSV and table hold every row.
    /// (Speed is not asserted: the machine's load decides it.)
    #[test]
    fn the_tiny_experiment_runs_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = EdgeOptions {
            input_lengths: vec![12],
            threads: vec![1],
            new_tokens: 3,
            repeats: 1,
            ..default_options("tiny")
        };
        let exports = prepare_exports("tiny", 0, tmp.path()).unwrap();
        assert_eq!(exports.len(), 4);
        let rows = run(&opts, &exports, measure, |_| {}).unwrap();
        assert_eq!(rows.len(), 6, "3 runtimes x 2 models");
        for r in &rows {
            assert!(
                r.m.first_token_ms > 0.0 && r.m.decode_tokens_per_s > 0.0,
                "{r:?}"
            );
        }
        let bytes = |a, rt| find(&rows, a, rt, 1, 12).unwrap().model_bytes;
        for a in [Arch::Student, Arch::Twin] {
            let (f32, int8) = (
                bytes(a, EdgeRuntime::OrtF32),
                bytes(a, EdgeRuntime::OrtInt8),
            );
            assert!(int8 * 3 < f32, "{a:?}: int8 {int8} vs f32 {f32} bytes");
        }
        let csv = tmp.path().join("edge.csv");
        write_csv(&csv, &rows).unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 7);
        let t = table(&rows);
        assert!(
            t.contains("student f32/torch") && t.lines().count() > 8,
            "{t}"
        );
    }
}
