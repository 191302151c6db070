//! Human-readable views of a dataset folder for `edkd data inspect`.

use std::fmt::Write;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::manifest::{LengthStats, Manifest};
use crate::tokenizer::Tokenizer;

/// Width of the longest histogram bar, in characters.
const BAR_WIDTH: usize = 40;
/// Characters of decoded text shown per field.
const PREVIEW_CHARS: usize = 240;

/// Manifest summary: tokenizer, settings, and per split rows, shards, tasks and lengths.
pub fn summary(m: &Manifest) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "format {}  edkd {}", m.format, m.edkd_version);
    let _ = writeln!(s, "command: {}", m.command.join(" "));
    let t = &m.tokenizer;
    let _ = writeln!(
        s,
        "tokenizer sha256 {}  vocab {}  bos {} eos {} pad {} unk {}",
        t.sha256,
        t.vocab_size,
        t.special_ids.bos,
        t.special_ids.eos,
        t.special_ids.pad,
        t.special_ids.unk.map_or("-".into(), |u| u.to_string())
    );
    let p = &m.settings;
    let limit = |l: Option<usize>| l.map_or("none".into(), |l| l.to_string());
    let _ = writeln!(
        s,
        "input {} (max {}, {})  target {} (max {}, {})",
        p.input,
        limit(p.max_input_tokens),
        p.input_truncation,
        p.target,
        limit(p.max_target_tokens),
        p.target_truncation
    );
    if let Some(images) = &m.images {
        let _ = writeln!(
            s,
            "images: column `{}` from field {}, placeholder {} = token {}",
            images.column,
            p.image_field.as_deref().unwrap_or("-"),
            images.placeholder,
            images
                .image_token_id
                .map_or("- (ordinary text)".into(), |id| id.to_string())
        );
    }
    for (name, split) in &m.splits {
        let _ = writeln!(
            s,
            "\n[{name}] {} rows in {} shards; truncated inputs {}, targets {}; dropped {}",
            split.rows,
            split.shards.len(),
            split.truncated_inputs,
            split.truncated_targets,
            split.dropped
        );
        let tasks: Vec<String> = split
            .tasks
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect();
        let _ = writeln!(s, "tasks: {}", tasks.join(" "));
        if let Some(i) = &split.images {
            let _ = writeln!(
                s,
                "images: {} ({} PNG, {} JPEG), {} bytes, up to {}x{} px",
                i.count, i.png, i.jpeg, i.bytes, i.max_width, i.max_height
            );
        }
        for (label, stats) in [
            ("input", &split.input_tokens),
            ("target", &split.target_tokens),
        ] {
            let _ = writeln!(
                s,
                "{label} tokens: total {} min {} mean {:.1} p50 {} p90 {} p99 {} max {}",
                stats.total, stats.min, stats.mean, stats.p50, stats.p90, stats.p99, stats.max
            );
            s.push_str(&histogram(stats));
        }
    }
    s
}

/// Text bars of a power-of-two length histogram.
pub fn histogram(stats: &LengthStats) -> String {
    let top = stats
        .histogram
        .iter()
        .map(|b| b[2])
        .max()
        .unwrap_or(0)
        .max(1);
    let mut s = String::new();
    for &[lo, hi, count] in &stats.histogram {
        let bar = "#".repeat((count as usize * BAR_WIDTH).div_ceil(top as usize));
        let _ = writeln!(s, "  {:>6}-{:<6} {:>9} {bar}", lo, hi, count);
    }
    s
}

/// The first `n` examples of `ds`, decoded with `tokenizer`.
pub fn decode_examples(ds: &Dataset, tokenizer: &Tokenizer, n: usize) -> Result<String> {
    let mut s = String::new();
    for i in 0..(n as u64).min(ds.len()) {
        let e = ds.example(i);
        let input = tokenizer.decode(e.input_ids)?;
        let target = tokenizer.decode(e.target_ids)?;
        let _ = writeln!(
            s,
            "--- #{i} id={} task={} ({} + {} tokens)\ninput:  {}\ntarget: {}",
            e.id,
            e.task,
            e.input_ids.len(),
            e.target_ids.len(),
            preview(&input),
            preview(&target)
        );
        if let Some(bytes) = e.image {
            let image = crate::images::decode_rgb8(bytes, e.id)?;
            let _ = writeln!(
                s,
                "image:  {}x{} px, {} bytes",
                image.width(),
                image.height(),
                bytes.len()
            );
        }
    }
    Ok(s)
}

fn preview(text: &str) -> String {
    let flat = text.replace('\n', "⏎");
    match flat.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
