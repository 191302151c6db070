//! The figures of training runs, drawn by edkd-plot: the loss smoothed over its faint raw
//! values, evaluations against an axis of their own.

use std::io;
use std::path::Path;

use edkd_plot::{Axis, Figure, Panel, Series};

/// Size of a one-panel training figure, in pixels.
pub const PLOT_WIDTH: u32 = 960;
pub const PLOT_HEIGHT: u32 = 560;
/// Size of the two-panel figure of several runs.
const RUNS_WIDTH: u32 = 1320;
const RUNS_HEIGHT: u32 = 520;

const STEP_AXIS: &str = "step (optimizer steps)";
const VALIDATION_AXIS: &str = "validation CE (nats/token)";

fn save(fig: &Figure, path: &Path) -> io::Result<()> {
    fig.save_png(path).map_err(|e| match e {
        edkd_plot::Error::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })
}

/// Writes `series` (name, (x, y) points) to `path` as a [`PLOT_WIDTH`] x [`PLOT_HEIGHT`]
/// PNG, each smoothed over its faint raw values, all against one y axis. Non-finite points
/// are skipped and break the line.
pub fn plot_losses(
    path: impl AsRef<Path>,
    series: &[(&str, Vec<(f64, f64)>)],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> io::Result<()> {
    let panel = series.iter().fold(
        Panel::new(Axis::linear(x_label), Axis::linear(y_label)),
        |p, (name, points)| p.with(Series::smoothed(*name, points.clone())),
    );
    save(
        &Figure::new(title, PLOT_WIDTH, PLOT_HEIGHT).with(panel),
        path.as_ref(),
    )
}

/// A run's figure: the training loss per step (smoothed over the raw values) against the
/// left axis and, when there were evaluations, the validation CE against the right one.
pub fn plot_training(
    path: impl AsRef<Path>,
    train: &[(f64, f64)],
    validation: &[(f64, f64)],
    title: &str,
) -> io::Result<()> {
    let mut panel = Panel::new(
        Axis::linear(STEP_AXIS),
        Axis::linear("train loss (nats/token)"),
    )
    .with(Series::smoothed("train loss", train.to_vec()));
    if !validation.is_empty() {
        panel = panel
            .right_axis(Axis::linear(VALIDATION_AXIS))
            .with(Series::line_markers("validation CE", validation.to_vec()).on_right());
    }
    save(
        &Figure::new(title, PLOT_WIDTH, PLOT_HEIGHT).with(panel),
        path.as_ref(),
    )
}

/// Several runs side by side, read from their output folders: `metric` of
/// `metrics.jsonl` per step (e.g. `ce`, comparable between KD and CE-only runs) in the
/// left panel, each run's validation CE from `eval.jsonl` in the right one, a run in the
/// same colour in both. A folder without these files contributes an empty series.
pub fn plot_runs(
    path: impl AsRef<Path>,
    runs: &[(&str, &Path)],
    metric: &str,
    title: &str,
) -> io::Result<()> {
    let name = if metric == "ce" { "CE" } else { metric };
    let mut train = Panel::new(
        Axis::linear(STEP_AXIS),
        Axis::linear(format!("train {name} (nats/token)")),
    )
    .titled(format!(
        "training {name} (smoothed over the faint raw values)"
    ));
    let mut validation =
        Panel::new(Axis::linear(STEP_AXIS), Axis::linear(VALIDATION_AXIS)).titled("validation");
    for (name, dir) in runs {
        let steps = read_points(&dir.join("metrics.jsonl"), metric)?;
        let evals = read_points(&dir.join("eval.jsonl"), "val_loss")?;
        train = train.with(Series::smoothed(*name, steps));
        validation = validation.with(Series::line_markers(*name, evals));
    }
    let fig = Figure::new(title, RUNS_WIDTH, RUNS_HEIGHT)
        .with(train)
        .with(validation);
    save(&fig, path.as_ref())
}

/// (`step`, `key`) of every JSON line of `path` that has both; nothing if the file is absent.
fn read_points(path: &Path, key: &str) -> io::Result<Vec<(f64, f64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut points = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} line {}: {e}", path.display(), i + 1),
            )
        })?;
        if let (Some(step), Some(y)) = (v["step"].as_f64(), v[key].as_f64()) {
            points.push((step, y));
        }
    }
    Ok(points)
}
