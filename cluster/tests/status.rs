//! `status::read` on run folders built here, as the trainer and supervisor would leave them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use edkd_cluster::status;

const TOTAL_STEPS: u64 = 1000;
const SECONDS_PER_STEP: f64 = 2.0;

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(path, text)?;
    Ok(())
}

/// A checkpoint folder; `complete` leaves out a file that SHA256SUMS lists when false.
fn checkpoint(run: &Path, step: u64, complete: bool) -> Result<()> {
    let dir = run.join(format!("checkpoints/step-{step:08}"));
    write(
        &dir.join("trainer_state.json"),
        &format!(r#"{{"step":{step},"total_steps":{TOTAL_STEPS},"cursor":7}}"#),
    )?;
    write(
        &dir.join("SHA256SUMS"),
        "ab12  model.safetensors\ncd34  optimizer.safetensors\n",
    )?;
    write(&dir.join("model.safetensors"), "weights")?;
    if complete {
        write(&dir.join("optimizer.safetensors"), "moments")?;
    }
    Ok(())
}

/// Steps 1..=30 at 2 s per step with loss = step, then half a line being written.
fn fixture(run: &Path) -> Result<()> {
    write(
        &run.join("run.json"),
        &format!(r#"{{"total_steps":{TOTAL_STEPS},"started":1000.0,"config":{{"lr":0.001}}}}"#),
    )?;
    let mut metrics = String::new();
    for step in 1..=30u64 {
        writeln!(
            metrics,
            r#"{{"step":{step},"loss":{loss},"ce":1.0,"kd":1.0,"lr":0.001,"grad_norm":0.5,"tokens_per_s":{tps},"time":{time}}}"#,
            loss = step as f64,
            tps = 1000 + step,
            time = 1000.0 + SECONDS_PER_STEP * step as f64,
        )?;
    }
    metrics.push_str(r#"{"step":31,"loss":3"#);
    write(&run.join("metrics.jsonl"), &metrics)?;
    write(
        &run.join("eval.jsonl"),
        concat!(
            r#"{"step":10,"val_loss":3.0,"overall":{"em":0.1,"f1":0.2,"rougeL":0.3}}"#,
            "\n",
            r#"{"step":20,"val_loss":2.5,"overall":{"em":0.25,"f1":0.5,"rougeL":0.375},"per_task":{}}"#,
            "\n"
        ),
    )?;
    checkpoint(run, 10, true)?;
    checkpoint(run, 20, true)?;
    checkpoint(run, 30, false)?;
    // A checkpoint still being written lives in a temporary folder.
    write(
        &run.join("checkpoints/step-00000040.tmp/trainer_state.json"),
        "{",
    )?;
    write(
        &run.join("restarts.json"),
        r#"{"restarts":2,"events":[{"time":1.0,"component":"trainer","reason":"exit code 1","action":"restart"},{"time":2.0,"component":"teacher0","reason":"exit code 9","action":"restart"}]}"#,
    )?;
    Ok(())
}

#[test]
fn reads_progress_of_a_running_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fixture(dir.path())?;
    let status = status::read(dir.path())?;
    assert_eq!(status.step, Some(30));
    assert_eq!(status.total_steps, Some(TOTAL_STEPS));
    // Mean of steps 11..=30.
    assert_eq!(status.loss, Some(20.5));
    assert_eq!(status.tokens_per_s, Some(1020.5));
    assert_eq!(
        status.eta,
        Some(Duration::from_secs_f64(SECONDS_PER_STEP * 970.0))
    );
    assert_eq!(status.last_update, Some(1060.0));
    let eval = status.eval.clone().expect("an eval");
    assert_eq!((eval.step, eval.val_loss), (20, Some(2.5)));
    assert_eq!(
        eval.overall.into_iter().collect::<Vec<_>>(),
        [
            ("em".to_owned(), 0.25),
            ("f1".to_owned(), 0.5),
            ("rougeL".to_owned(), 0.375)
        ]
    );
    let checkpoint = status.checkpoint.clone().expect("a checkpoint");
    assert_eq!(
        checkpoint.step, 20,
        "step 30 lacks a file its SHA256SUMS lists"
    );
    assert_eq!(
        checkpoint.path,
        dir.path().join("checkpoints/step-00000020")
    );
    assert_eq!(status.restarts, 2);

    let shown = status.to_string();
    for line in [
        "step        30 / 1000 (3.0%)",
        "loss        20.5000 (mean of last 20 steps)",
        "speed       1020 tokens/s",
        "eta         32m 20s",
        "eval        step 20: val_loss 2.5000, em 0.2500, f1 0.5000, rougeL 0.3750",
        "checkpoint  step 20 at ",
        "restarts    2",
    ] {
        assert!(shown.contains(line), "missing {line:?} in\n{shown}");
    }
    Ok(())
}

#[test]
fn a_fresh_run_folder_has_no_progress() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let status = status::read(dir.path())?;
    assert_eq!(status.step, None);
    assert_eq!((status.loss, status.eta), (None, None));
    assert!(status.checkpoint.is_none() && status.eval.is_none());
    assert_eq!(status.restarts, 0);
    let shown = status.to_string();
    assert!(
        shown.contains("not started") && shown.contains("checkpoint  none"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn total_steps_fall_back_to_the_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    checkpoint(dir.path(), 10, true)?;
    let status = status::read(dir.path())?;
    assert_eq!(status.total_steps, Some(TOTAL_STEPS));
    Ok(())
}

#[test]
fn a_corrupt_line_before_the_last_is_an_error_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write(
        &dir.path().join("metrics.jsonl"),
        "{\"step\":1,\"loss\":1.0}\nnot json\n{\"step\":2,\"loss\":1.0}\n",
    )?;
    let message = status::read(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("metrics.jsonl") && message.contains("not json"),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_missing_folder_is_an_error() {
    let message = status::read(Path::new("/nonexistent/edkd-run"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("/nonexistent/edkd-run"), "{message}");
}
