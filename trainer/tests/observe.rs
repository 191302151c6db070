//! Event files read back by TensorBoard's own loader (project venv, `tensorboard` from
//! scripts/setup.sh), and the training figures decoded as PNG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use edkd_trainer::observe::{
    EventWriter, PALETTE, PLOT_HEIGHT, PLOT_WIDTH, plot_losses, plot_runs, plot_training,
};
use serde_json::Value;

/// Reads every event of `argv[2]` and the scalars TensorBoard finds in directory `argv[1]`
/// (values as f32 bit patterns, so the comparison is exact).
const READ_EVENTS_PY: &str = r#"
import json, struct, sys
from tensorboard.backend.event_processing import event_accumulator, event_file_loader
log_dir, path = sys.argv[1], sys.argv[2]
f32_bits = lambda v: struct.unpack("<I", struct.pack("<f", v))[0]
events = list(event_file_loader.EventFileLoader(path).Load())
acc = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
print(json.dumps({
    "file_version": events[0].file_version,
    "n_events": len(events),
    "wall_times": [e.wall_time for e in events],
    "scalars": {t: [[s.step, f32_bits(s.value)] for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]},
}))
"#;

fn python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh to create the project venv (tensorboard)",
        path.display()
    );
    path
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn tensorboard_reads_back_scalars() {
    let dir = fresh_dir("events");
    let before = unix_now();
    let mut expected: BTreeMap<String, Vec<(i64, u32)>> = BTreeMap::new();
    let mut record = |tag: &str, step: i64, value: f64| {
        // TensorBoard stores f32.
        let stored = (value as f32).to_bits();
        expected
            .entry(tag.to_owned())
            .or_default()
            .push((step, stored));
    };
    let mut writer = EventWriter::create(&dir).unwrap();
    let mut n_writes = 0;
    for step in 0..40i64 {
        let loss = 3.0 / (1.0 + step as f64);
        writer.add_scalar("train/loss", step, loss).unwrap();
        record("train/loss", step, loss);
        n_writes += 1;
        if step % 10 == 0 {
            let pairs = [
                ("eval/rouge_l", 0.1 + step as f64 / 100.0),
                ("lr", -2.5e-4 * step as f64),
            ];
            writer.add_scalars(step * 1000, &pairs).unwrap();
            for (tag, v) in pairs {
                record(tag, step * 1000, v);
            }
            n_writes += 1;
        }
    }
    writer
        .add_scalar("big", 7_000_000_000, 123_456.789)
        .unwrap();
    record("big", 7_000_000_000, 123_456.789);
    n_writes += 1;
    writer.flush().unwrap();
    let path = writer.path().to_owned();
    drop(writer);

    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files, std::slice::from_ref(&path), "exactly one event file");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("events.out.tfevents.") && name.ends_with(".edkd"),
        "{name}"
    );

    let out = Command::new(python())
        .arg("-c")
        .arg(READ_EVENTS_PY)
        .arg(&dir)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading events with tensorboard failed (scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();

    assert_eq!(got["file_version"], "brain.Event:2");
    assert_eq!(got["n_events"], 1 + n_writes);
    let walls: Vec<f64> = got["wall_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        walls.windows(2).all(|w| w[0] <= w[1]),
        "wall times go back: {walls:?}"
    );
    assert!(walls[0] >= before.floor() && *walls.last().unwrap() <= unix_now() + 1.0);

    let scalars: BTreeMap<String, Vec<(i64, u32)>> = got["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, rows)| {
            let rows = rows.as_array().unwrap().iter();
            let rows = rows.map(|r| (r[0].as_i64().unwrap(), r[1].as_u64().unwrap() as u32));
            (tag.clone(), rows.collect())
        })
        .collect();
    assert_eq!(scalars, expected);
}

#[test]
fn writers_in_one_directory_get_distinct_files() {
    let dir = fresh_dir("events-twice");
    let a = EventWriter::create(&dir).unwrap();
    let b = EventWriter::create(&dir).unwrap();
    assert_ne!(a.path(), b.path());
    assert!(a.path().starts_with(&dir) && b.path().exists());
}

/// Decoded RGB8 pixels of a PNG, with its size.
fn read_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px = buf[..info.buffer_size()]
        .chunks(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

/// Mean row of the pixels of `colour` in the column band [from, to) of the image.
fn mean_row(px: &[[u8; 3]], colour: [u8; 3], from: u32, to: u32) -> f64 {
    let hits: Vec<f64> = px
        .iter()
        .enumerate()
        .filter(|(i, p)| **p == colour && (from..to).contains(&(*i as u32 % PLOT_WIDTH)))
        .map(|(i, _)| (i as u32 / PLOT_WIDTH) as f64)
        .collect();
    assert!(
        !hits.is_empty(),
        "no {colour:?} pixels in columns {from}..{to}"
    );
    hits.iter().sum::<f64>() / hits.len() as f64
}

#[test]
fn loss_plot_is_a_png_with_one_coloured_line_per_series() {
    let dir = fresh_dir("plot");
    let path = dir.join("losses.png");
    let falling: Vec<(f64, f64)> = (0..200)
        .map(|s| (s as f64, 4.0 / (1.0 + 0.05 * s as f64)))
        .collect();
    let rising: Vec<(f64, f64)> = (0..200)
        .map(|s| (s as f64, 0.5 + 0.01 * s as f64))
        .collect();
    let mut gappy: Vec<(f64, f64)> = (0..200).map(|s| (s as f64, 1.5)).collect();
    gappy[100].1 = f64::NAN;
    let series = [("train", falling), ("eval", rising), ("flat", gappy)];
    plot_losses(&path, &series, "KD loss", "step", "loss").unwrap();

    let (w, h, px) = read_png(&path);
    assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT));
    for (i, (name, _)) in series.iter().enumerate() {
        let n = px.iter().filter(|p| **p == PALETTE[i]).count();
        assert!(
            n > 500,
            "series {name}: only {n} pixels of {:?}",
            PALETTE[i]
        );
    }
    // Rows grow downwards: a falling curve sits higher (smaller row) on the left.
    let (left, middle) = ((0, w / 3), (w / 3, 2 * w / 3));
    assert!(
        mean_row(&px, PALETTE[0], left.0, left.1) < mean_row(&px, PALETTE[0], middle.0, middle.1)
    );
    assert!(
        mean_row(&px, PALETTE[1], left.0, left.1) > mean_row(&px, PALETTE[1], middle.0, middle.1)
    );
    // Title and labels are drawn in dark ink.
    let dark = |p: &&[u8; 3]| p.iter().all(|&c| c < 0x40);
    assert!(
        px[..(30 * w) as usize].iter().filter(dark).count() > 50,
        "no title text"
    );
}

#[test]
fn plot_without_data_still_draws_axes() {
    let dir = fresh_dir("plot-empty");
    let path = dir.join("empty.png");
    plot_losses(&path, &[("nothing", vec![])], "empty", "x", "y").unwrap();
    let (w, h, px) = read_png(&path);
    assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT));
    assert!(px.iter().any(|p| *p == PALETTE[0]), "legend swatch missing");
    assert!(
        px.iter().filter(|p| p.iter().all(|&c| c < 0x40)).count() > 1000,
        "no axes"
    );
}

/// Rows spanned by the pixels of `colour` (0 when there are none).
fn row_span(px: &[[u8; 3]], width: u32, colour: [u8; 3]) -> u32 {
    let rows: Vec<u32> = px
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == colour)
        .map(|(i, _)| i as u32 / width)
        .collect();
    match (rows.iter().min(), rows.iter().max()) {
        (Some(lo), Some(hi)) => hi - lo,
        _ => 0,
    }
}

#[test]
fn training_figure_puts_validation_on_its_own_axis() {
    let dir = fresh_dir("plot-training");
    let path = dir.join("loss.png");
    // A KD loss of ~10 falling to 2 and a validation CE between 0.50 and 0.45: on one axis
    // the validation line would be flat; on its own it spans much of the height.
    let train: Vec<(f64, f64)> = (1..=300)
        .map(|s| {
            (
                s as f64,
                2.0 + 8.0 / (1.0 + 0.05 * s as f64) + 0.3 * ((s % 7) as f64 - 3.0) / 3.0,
            )
        })
        .collect();
    let val: Vec<(f64, f64)> = (1..=6)
        .map(|i| (50.0 * i as f64, 0.5 - 0.01 * i as f64))
        .collect();
    plot_training(&path, &train, &val, "a short run").unwrap();
    let (w, h, px) = read_png(&path);
    assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT));
    let (train_rows, val_rows) = (row_span(&px, w, PALETTE[0]), row_span(&px, w, PALETTE[1]));
    assert!(train_rows > h / 3, "train loss spans {train_rows} rows");
    assert!(val_rows > h / 3, "validation spans {val_rows} rows");

    // Without evaluations there is no validation series (and no right axis).
    let path = dir.join("loss-no-eval.png");
    plot_training(&path, &train, &[], "no eval").unwrap();
    let (_, _, px) = read_png(&path);
    assert!(
        !px.contains(&PALETTE[1]),
        "a validation series without evaluations"
    );
}

#[test]
fn runs_figure_reads_metrics_and_evals_of_each_run() {
    let dir = fresh_dir("plot-runs");
    let write = |run: &str, file: &str, lines: &[String]| {
        let d = dir.join(run);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), lines.join("\n") + "\n").unwrap();
    };
    let metrics = |scale: f64| -> Vec<String> {
        (1..=120)
            .map(|s| {
                format!(
                    r#"{{"step":{s},"ce":{},"loss":9.0}}"#,
                    scale / (1.0 + 0.05 * s as f64)
                )
            })
            .collect()
    };
    let evals: Vec<String> = (1..=4)
        .map(|i| {
            format!(
                r#"{{"step":{},"val_loss":{}}}"#,
                30 * i,
                3.0 - 0.2 * i as f64
            )
        })
        .collect();
    write("a", "metrics.jsonl", &metrics(4.0));
    write("a", "eval.jsonl", &evals);
    write("b", "metrics.jsonl", &metrics(6.0));
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let runs = [
        ("run a", dir.join("a")),
        ("run b", dir.join("b")),
        ("no files", dir.join("empty")),
    ];
    let runs: Vec<(&str, &Path)> = runs.iter().map(|(n, d)| (*n, d.as_path())).collect();
    let path = dir.join("runs.png");
    plot_runs(&path, &runs, "ce", "three runs").unwrap();
    let (w, _, px) = read_png(&path);
    let in_half = |colour: [u8; 3], left: bool| {
        px.iter()
            .enumerate()
            .filter(|(i, p)| **p == colour && ((*i as u32 % w) < w / 2) == left)
            .count()
    };
    // Run a: training curve on the left, evaluations on the right; run b: training only
    // (its colour on the right is its legend entry alone); the empty run: legend entries.
    assert!(in_half(PALETTE[0], true) > 300 && in_half(PALETTE[0], false) > 150);
    assert!(in_half(PALETTE[1], true) > 300);
    assert!(in_half(PALETTE[1], false) < 100, "run b has no evaluations");
    assert!(in_half(PALETTE[2], true) > 0 && in_half(PALETTE[2], true) < 100);

    // A corrupt line is an error naming the file and line.
    write("a", "eval.jsonl", &["{not json".to_string()]);
    let err = plot_runs(&path, &runs, "ce", "t").unwrap_err().to_string();
    assert!(err.contains("eval.jsonl line 1"), "{err}");
}
