//! `efficiency.md`, `efficiency.json` and the figures of `edkd experiment efficiency`:
//! the paper's claims next to ours, a table per setting, and where the time goes (each
//! component's time, its FLOP rate or bandwidth, and what FLOPs and bytes predict).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edkd_plot::{Axis, Corner, Figure, PALETTE, Panel, Series};

use super::experiment::{EfficiencyReport, Setting};
use super::report::{STUDENT_COLOUR, TWIN_COLOUR};
use super::{Part, Row};
use crate::error::{Error, Result};

/// The paper's figures for Mu against its decoder-only counterpart (Elfeki et al. 2025).
pub const PAPER_FIRST_TOKEN_REDUCTION: f64 = 0.47;
pub const PAPER_DECODE_SPEEDUP: f64 = 4.7;
pub const PAPER_MEMORY_REDUCTION: (f64, f64) = (0.11, 0.16);
pub const PAPER_FLOP_REDUCTION: f64 = 0.22;

pub use crate::report_files::COMMENTARY;

const MIB: f64 = (1u64 << 20) as f64;

/// The files [`write`] made.
pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub figures: Vec<PathBuf>,
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn all_rows(r: &EfficiencyReport) -> impl Iterator<Item = (&Setting, &Row)> {
    r.settings
        .iter()
        .flat_map(|s| s.rows.iter().map(move |row| (s, row)))
}

fn memory_reduction(row: &Row) -> f64 {
    1.0 - row.student.peak_rss_bytes as f64 / row.twin.peak_rss_bytes as f64
}

fn flop_reduction(row: &Row) -> f64 {
    1.0 - row.student.cost.total_flops() / row.twin.cost.total_flops()
}

/// A claim's name, the paper's figure, ours per row, and whether it is a percentage.
type Claim<'a> = (&'a str, String, &'a dyn Fn(&Row) -> f64, bool);

/// The headline table: each claim of the paper, ours over every setting measured and at
/// the paper's size (mu-330m) alone.
fn headline(r: &EfficiencyReport) -> String {
    let mut out = String::from(
        "| claim (student vs decoder-only twin, equal parameters) | paper | ours, all settings | ours, mu-330m |\n|---|---|---|---|\n",
    );
    let claims: [Claim<'_>; 4] = [
        (
            "first-token latency lower by",
            format!("{:.0}%", PAPER_FIRST_TOKEN_REDUCTION * 100.0),
            &|row: &Row| 1.0 - row.first_token_ratio(),
            true,
        ),
        (
            "decode throughput higher by a factor",
            format!("{PAPER_DECODE_SPEEDUP}x"),
            &|row: &Row| row.decode_ratio(),
            false,
        ),
        (
            "peak memory lower by",
            format!(
                "{:.0}-{:.0}%",
                PAPER_MEMORY_REDUCTION.0 * 100.0,
                PAPER_MEMORY_REDUCTION.1 * 100.0
            ),
            &memory_reduction,
            true,
        ),
        (
            "FLOPs per generated sequence lower by",
            format!("{:.0}%", PAPER_FLOP_REDUCTION * 100.0),
            &flop_reduction,
            true,
        ),
    ];
    for (name, paper, f, percent) in claims {
        let fmt = |(lo, hi): (f64, f64)| {
            if !lo.is_finite() {
                "n/a".to_string()
            } else if percent {
                format!("{:.0}% .. {:.0}%", lo * 100.0, hi * 100.0)
            } else {
                format!("{lo:.2}x .. {hi:.2}x")
            }
        };
        if name.starts_with("peak memory") && r.options.device != "cpu" {
            let _ = writeln!(
                out,
                "| {name} | {paper} | not measured on {}: the figure would be host RSS, and \
                 libtorch's CUDA allocator statistics are not reachable through tch | - |",
                r.options.device
            );
            continue;
        }
        let all = range(all_rows(r).map(|(_, row)| f(row)));
        let mu = range(
            all_rows(r)
                .filter(|(s, _)| s.preset == "mu-330m")
                .map(|(_, row)| f(row)),
        );
        let _ = writeln!(out, "| {name} | {paper} | {} | {} |", fmt(all), fmt(mu));
    }
    out
}

/// One setting's table: latency, throughput, memory, cache and FLOPs, student / twin.
fn setting_table(s: &Setting) -> String {
    let mut out = String::from(
        "| input | first token ms (s / t) | ratio | decode tok/s (s / t) | ratio | peak RSS MiB (s / t) | KV cache MiB (s / t) | GFLOP per sequence (s / t) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in &s.rows {
        let (a, b) = (&row.student, &row.twin);
        let _ = writeln!(
            out,
            "| {} | {:.1} / {:.1} | {:.2} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} | {:.2} / {:.2} | {:.1} / {:.1} |",
            row.input_length,
            a.first_token_ms,
            b.first_token_ms,
            row.first_token_ratio(),
            a.decode_tokens_per_s,
            b.decode_tokens_per_s,
            row.decode_ratio(),
            a.peak_rss_bytes as f64 / MIB,
            b.peak_rss_bytes as f64 / MIB,
            a.kv_cache_bytes as f64 / MIB,
            b.kv_cache_bytes as f64 / MIB,
            a.cost.total_flops() / 1e9,
            b.cost.total_flops() / 1e9,
        );
    }
    out
}

/// Where the first token's time goes, and the FLOP rate of the input-side work: if the
/// student's encoder and the twin's prefill ran at the same rate, the latency ratio would
/// be the FLOP ratio.
fn first_token_breakdown(s: &Setting) -> String {
    let vision = s
        .rows
        .iter()
        .any(|r| r.student.first_parts_ms.get(Part::Tower) > 0.0);
    let mut out = String::from(if vision {
        "| input | tower / projector ms (s / t) | student: encoder / cross K/V / decoder / LM head ms | twin: layers / LM head ms | encoder GFLOP/s | twin prefill GFLOP/s | first-token ratio: by FLOPs | measured |\n|---|---|---|---|---|---|---|---|\n"
    } else {
        "| input | student: encoder / cross K/V / decoder / LM head ms | twin: layers / LM head ms | encoder GFLOP/s | twin prefill GFLOP/s | first-token ratio: by FLOPs | measured |\n|---|---|---|---|---|---|---|\n"
    });
    for row in &s.rows {
        let (a, b) = (&row.student.first_parts_ms, &row.twin.first_parts_ms);
        let enc_rate = row.student.cost.input_flops
            / ((a.get(Part::Encoder) + a.get(Part::CrossKv)) * 1e-3)
            / 1e9;
        let twin_rate = row.twin.cost.input_flops / (b.get(Part::Layers) * 1e-3) / 1e9;
        let images = if vision {
            format!(
                " {:.1} / {:.1} + {:.1} / {:.1} |",
                a.get(Part::Tower),
                b.get(Part::Tower),
                a.get(Part::Projector),
                b.get(Part::Projector)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} |{images} {:.1} / {:.1} / {:.2} / {:.2} | {:.1} / {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
            row.input_length,
            a.get(Part::Encoder),
            a.get(Part::CrossKv),
            a.get(Part::Decoder),
            a.get(Part::LmHead),
            b.get(Part::Layers),
            b.get(Part::LmHead),
            enc_rate,
            twin_rate,
            row.student.cost.first_flops / row.twin.cost.first_flops,
            row.first_token_ratio(),
        );
    }
    out
}

/// Where a decode step's time goes, and the bandwidth it reaches: a batch-1 step reads
/// every weight it uses once, so bytes read predict the throughput ratio.
fn decode_breakdown(s: &Setting) -> String {
    let mut out = String::from(
        "| input | student step: decoder / LM head ms | twin step: layers / LM head ms | student MB read / step | twin MB read / step | student GB/s | twin GB/s | decode ratio: by bytes | measured |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &s.rows {
        let (a, b) = (&row.student.step_parts_ms, &row.twin.step_parts_ms);
        let (sb, tb) = (row.student.cost.step_bytes(), row.twin.cost.step_bytes());
        let _ = writeln!(
            out,
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
            row.input_length,
            a.get(Part::Decoder),
            a.get(Part::LmHead),
            b.get(Part::Layers),
            b.get(Part::LmHead),
            sb / 1e6,
            tb / 1e6,
            sb / (a.total() * 1e-3) / 1e9,
            tb / (b.total() * 1e-3) / 1e9,
            tb / sb,
            row.decode_ratio(),
        );
    }
    out
}

fn markdown(r: &EfficiencyReport, figures: &[PathBuf]) -> String {
    let o = &r.options;
    let mut md = String::from(
        "# Efficiency at the paper's size: encoder-decoder students against their decoder-only twins\n\n",
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", r.command);
    let conditions = if r.measured_now == 0 {
        "Every measurement came from the journal of an earlier invocation (this one only \
         redrew the report); the conditions they ran under are in the commentary."
            .to_string()
    } else {
        format!(
            "Load average {:.2} at the start and {:.2} at the end; other builds running \
             (rustc processes): {} at the start, {} at the end.",
            r.load.0, r.load.1, r.compilers.0, r.compilers.1
        )
    };
    let _ = writeln!(
        md,
        "Machine: {}. Started {}; wall time {:.0} s ({} measurements taken by this run; the \
         report's {} measurements took {:.0} s, {} of them with no recorded time). {conditions} \
         Device `{}`; batch 1; greedy decoding of {} tokens; random weights (seed {}), since \
         speed does not depend on their values; each measurement in a fresh process, one \
         warm-up run, then the best of {} timed runs ({} for mu-330m).\n",
        r.machine,
        r.started,
        r.wall_s,
        r.measured_now,
        r.settings.iter().map(|s| 2 * s.rows.len()).sum::<usize>(),
        r.measure_s,
        r.untimed,
        o.device,
        o.new_tokens,
        o.seed,
        o.repeats.0,
        o.repeats.1,
    );
    if o.image_tokens > 0 {
        let _ = writeln!(
            md,
            "Every input is {} image tokens (tiles of a randomly initialised `{}` tower, \
             layer -2 patch tokens, `mlp2x_gelu` projector: the same tower and projector on \
             both sides) followed by the text; the `input` column is the text's length. The \
             tower and projector times are in the breakdown; decoding and resizing the images \
             are left out (the same work on both sides).\n",
            o.image_tokens, o.tower
        );
    }
    md += "## The paper's claims and ours\n\n";
    md += &headline(r);
    md += "\nRatios are student / twin at equal parameter count (the twin is Llama-shaped with as \
           many layers as the student has in all, its FFN width solved to match the \
           parameters within 2%). Peak memory is the peak RSS of the measuring process \
           (libtorch, weights, activations, caches). FLOPs are counted from the shapes \
           (`experiments/src/efficiency/flops.rs`).\n\n";
    for f in figures {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let _ = writeln!(md, "![{name}]({name})\n");
    }
    md += "## Every setting\n\n";
    for s in &r.settings {
        let first = s.rows.first();
        let _ = writeln!(
            md,
            "### {} ({:.1}M student, {:.1}M twin), {}, {} thread(s)\n",
            s.preset,
            first.map_or(0.0, |x| x.student.params as f64 / 1e6),
            first.map_or(0.0, |x| x.twin.params as f64 / 1e6),
            s.dtype,
            s.threads
        );
        md += &setting_table(s);
        md += "\n";
    }
    md += "## Where the time goes\n\n";
    md += "First token: each component timed on its own (the parts add up to the latency \
           above). The input-side FLOP rate is FLOPs of the encoder and cross K/V (student) \
           or of the prefill (twin) over their time.\n\n";
    for s in &r.settings {
        let _ = writeln!(md, "### {}\n", s.name());
        md += &first_token_breakdown(s);
        md += "\n";
        md += &decode_breakdown(s);
        md += "\n";
    }
    md
}

/// The ratio figure: first-token latency ratio and decode throughput ratio against input
/// length, a line per setting, the paper's figure as a flat line.
fn ratio_figure(r: &EfficiencyReport) -> Figure {
    let lengths = range(all_rows(r).map(|(_, row)| row.input_length as f64));
    let paper = |name: &str, y: f64| Series::line(name, vec![(lengths.0, y), (lengths.1, y)]);
    let mut latency = Panel::new(
        Axis::log2("input length (tokens)"),
        Axis::linear("first-token latency, student / twin"),
    )
    .titled("first-token latency ratio (lower: student sooner)")
    .legend_at(Corner::Best);
    let mut decode = Panel::new(
        Axis::log2("input length (tokens)"),
        Axis::linear("decode tokens/s, student / twin"),
    )
    .titled("decode throughput ratio (higher: student faster)")
    .legend_at(Corner::Best);
    for s in &r.settings {
        let pts = |f: &dyn Fn(&Row) -> f64| {
            s.rows
                .iter()
                .map(|row| (row.input_length as f64, f(row)))
                .collect::<Vec<_>>()
        };
        latency = latency.with(Series::line_markers(s.name(), pts(&Row::first_token_ratio)));
        decode = decode.with(Series::line_markers(s.name(), pts(&Row::decode_ratio)));
    }
    latency = latency.with(paper("paper (Mu)", 1.0 - PAPER_FIRST_TOKEN_REDUCTION));
    decode = decode.with(paper("paper (Mu)", PAPER_DECODE_SPEEDUP));
    Figure::new(
        "encoder-decoder student / decoder-only twin, batch 1",
        1400,
        560,
    )
    .with(latency)
    .with(decode)
}

/// The paper-size figure: first-token latency split into components and decode
/// throughput, student and twin, for one setting.
fn parts_figure(s: &Setting) -> Figure {
    let pts = |f: &dyn Fn(&Row) -> f64| {
        s.rows
            .iter()
            .map(|row| (row.input_length as f64, f(row)))
            .collect::<Vec<_>>()
    };
    let x = || Axis::log2("input length (tokens)");
    let latency = Panel::new(x(), Axis::linear("time to first token (ms)"))
        .titled("first token, by component")
        .with(
            Series::line_markers("twin: total", pts(&|r| r.twin.first_token_ms))
                .with_colour(TWIN_COLOUR),
        )
        .with(
            Series::line_markers("student: total", pts(&|r| r.student.first_token_ms))
                .with_colour(STUDENT_COLOUR),
        )
        .with(
            Series::line(
                "student: encoder",
                pts(&|r| r.student.first_parts_ms.get(Part::Encoder)),
            )
            .with_colour(PALETTE[2]),
        )
        .with(
            Series::line(
                "student: cross K/V",
                pts(&|r| r.student.first_parts_ms.get(Part::CrossKv)),
            )
            .with_colour(PALETTE[1]),
        )
        .legend_at(Corner::UpperLeft);
    let decode = Panel::new(x(), Axis::linear("decode throughput (tokens/s)"))
        .titled("decode throughput")
        .with(
            Series::line_markers("twin", pts(&|r| r.twin.decode_tokens_per_s))
                .with_colour(TWIN_COLOUR),
        )
        .with(
            Series::line_markers("student", pts(&|r| r.student.decode_tokens_per_s))
                .with_colour(STUDENT_COLOUR),
        )
        .legend_at(Corner::Best);
    Figure::new(format!("{}, batch 1", s.name()), 1400, 560)
        .with(latency)
        .with(decode)
}

/// The default report name: `efficiency.md`, `.json`, `.png`.
pub const DEFAULT_NAME: &str = "efficiency";

/// Writes `<name>.md`, `<name>.json`, `<name>.png` (ratios) and one
/// `<name>-<preset>-<dtype>-<threads>t.png` per setting of the largest preset.
pub fn write(r: &EfficiencyReport, dir: &Path, name: &str) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut figures = Vec::new();
    if !r.settings.is_empty() {
        let png = dir.join(format!("{name}.png"));
        ratio_figure(r).save_png(&png)?;
        figures.push(png);
    }
    let largest = r
        .settings
        .iter()
        .max_by_key(|s| s.rows.first().map_or(0, |row| row.student.params))
        .map(|s| s.preset.clone());
    for s in r
        .settings
        .iter()
        .filter(|s| Some(&s.preset) == largest.as_ref())
    {
        let png = dir.join(format!(
            "{name}-{}-{}-{}t.png",
            s.preset, s.dtype, s.threads
        ));
        parts_figure(s).save_png(&png)?;
        figures.push(png);
    }
    let markdown_path = dir.join(format!("{name}.md"));
    crate::report_files::write_markdown(&markdown_path, markdown(r, &figures))?;
    let json = dir.join(format!("{name}.json"));
    crate::report_files::write_json(&json, r)?;
    Ok(Written {
        markdown: markdown_path,
        json,
        figures,
    })
}
