//! What a careless or hostile run must not do: train to NaN and call it success, restart
//! silently over corrupt checkpoints and then prune its own progress, go on after its logs
//! stopped being written, leave checkpoint temporaries behind, or log resumed steps twice.

use std::path::Path;

use edkd_trainer::checkpoint;
use edkd_trainer::dist::Single;
use edkd_trainer::model::Net;
use edkd_trainer::{RunOptions, train};
use tch::Device;

mod common;
use common::{config, prepare, serial, teacher_dir, vocab_of};

fn run_opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_owned(),
        ..Default::default()
    }
}

fn metrics_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["step"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn non_finite_steps_are_skipped_then_the_run_stops_without_saving() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 48, 8);
    // A student folder with one poisoned weight: every step's loss is NaN.
    let init = tmp.path().join("poisoned");
    let base = config(&data, &[]);
    let net = Net::build(&base.model, vocab_of(&data), Device::Cpu, 0).unwrap();
    let (name, w) = net.vs().variables().into_iter().next().unwrap();
    tch::no_grad(|| {
        let _ = w.get(0).fill_(f64::NAN);
    });
    net.save(&init, Some(&teacher_dir().join("tokenizer.json")))
        .unwrap();

    let out = tmp.path().join("run");
    let cfg = config(
        &data,
        &[
            &format!("model.init=\"{}\"", init.display()),
            "optim.steps=20",
            "optim.max_nonfinite_steps=3",
            "checkpoint.every=0",
            "eval.every=0",
        ],
    );
    let err = train(&cfg, &run_opts(&out), &mut Single)
        .unwrap_err()
        .to_string();
    assert!(err.contains("step 4"), "{err}");
    assert!(err.contains("optim.max_nonfinite_steps = 3"), "{err}");
    // Three skipped steps were logged as such; nothing non-finite was saved.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(
        lines.lines().all(|l| l.contains("\"skipped\":true")),
        "{lines}"
    );
    assert!(checkpoint::list(&out.join("checkpoints")).is_empty());
    assert!(!out.join("final").exists());
    assert!(!name.is_empty());
}

#[test]
fn a_poisoned_model_is_never_written_as_a_checkpoint() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 16, 4);
    let base = config(&data, &[]);
    let net = Net::build(&base.model, vocab_of(&data), Device::Cpu, 0).unwrap();
    let opt = edkd_trainer::optim::AdamW::new(net.vs(), base.optim.adamw());
    for (_, mut v) in net.vs().variables() {
        tch::no_grad(|| {
            let _ = v.fill_(f64::INFINITY);
        });
    }
    let root = tmp.path().join("checkpoints");
    let state: checkpoint::TrainerState = serde_json::from_value(serde_json::json!({
        "step": 7, "total_steps": 9, "seed": 0,
        "cursor": {"epoch": 0, "window": 0, "batch": 0, "examples_done": 0, "layout": ""},
        "world": 1, "tokens": 0, "elapsed_s": 0.0, "best": null, "last_eval": null
    }))
    .unwrap();
    let err = checkpoint::save(&root, &net, &opt, &state, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step 7") && err.contains("NaN or infinity"),
        "{err}"
    );
    assert!(checkpoint::list(&root).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(&root).into_iter().flatten().collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

/// Makes a checkpoint fail verification by flipping a byte of its weights.
fn corrupt(dir: &Path) {
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let i = bytes.len() - 5;
    bytes[i] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn resume_over_only_corrupt_checkpoints_fails_unless_told_to_move_them_aside() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 48, 8);
    let out = tmp.path().join("run");
    let cfg = config(
        &data,
        &[
            "optim.steps=6",
            "checkpoint.every=2",
            "checkpoint.keep_last=5",
        ],
    );
    let halted = RunOptions {
        halt_after: Some(6),
        ..run_opts(&out)
    };
    train(&cfg, &halted, &mut Single).unwrap();
    let root = out.join("checkpoints");
    let before = checkpoint::list(&root);
    assert_eq!(
        before.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [2, 4, 6]
    );
    for (_, d) in &before {
        corrupt(d);
    }
    let resume = RunOptions {
        resume: true,
        ..run_opts(&out)
    };
    let err = train(&cfg, &resume, &mut Single).unwrap_err().to_string();
    assert!(err.contains("none of the 3 checkpoints verifies"), "{err}");
    assert!(err.contains("--discard-corrupt-checkpoints"), "{err}");
    assert_eq!(checkpoint::list(&root).len(), 3, "nothing is touched");

    let discard = RunOptions {
        discard_corrupt: true,
        ..resume
    };
    let summary = train(&cfg, &discard, &mut Single).unwrap();
    assert_eq!(summary.steps, 6);
    let aside = std::fs::read_dir(root.join(checkpoint::CORRUPT_DIR))
        .unwrap()
        .count();
    assert_eq!(
        aside, 3,
        "the corrupt checkpoints are kept aside, not deleted"
    );
    for (_, d) in checkpoint::list(&root) {
        checkpoint::verify(&d).unwrap();
    }
}

#[test]
fn corrupt_newer_checkpoints_never_outlive_the_resumed_runs_checkpoints() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 48, 8);
    let out = tmp.path().join("run");
    let cfg = config(
        &data,
        &[
            "optim.steps=12",
            "checkpoint.every=2",
            "checkpoint.keep_last=2",
        ],
    );
    let halted = RunOptions {
        halt_after: Some(8),
        ..run_opts(&out)
    };
    train(&cfg, &halted, &mut Single).unwrap();
    let root = out.join("checkpoints");
    // keep_last 2: steps 6 and 8 remain; 8 goes bad.
    assert_eq!(
        checkpoint::list(&root)
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        [6, 8]
    );
    corrupt(&checkpoint::step_dir(&root, 8));
    // A stale temporary of a dead process, and one of a live process (pid 1).
    let dead = root.join(".tmp-step-00000010-999999999");
    let live = root.join(".tmp-step-00000010-1");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::create_dir_all(&live).unwrap();

    let resume = RunOptions {
        resume: true,
        ..run_opts(&out)
    };
    let summary = train(&cfg, &resume, &mut Single).unwrap();
    assert_eq!(summary.steps, 12);
    let left: Vec<u64> = checkpoint::list(&root).iter().map(|(s, _)| *s).collect();
    assert_eq!(left, [10, 12], "the newest verified checkpoints are kept");
    for (_, d) in checkpoint::list(&root) {
        checkpoint::verify(&d).unwrap();
    }
    assert!(!dead.exists(), "a dead process's temporary is removed");
    assert!(live.exists(), "a live process's temporary is left alone");
    // Steps 7 and 8 ran twice (before and after the resume) but are logged once.
    assert_eq!(metrics_steps(&out), (1..=12).collect::<Vec<_>>());
    assert!(summary.tokens_per_s.is_finite() && summary.tokens_per_s > 0.0);
}

#[test]
fn a_log_that_cannot_be_written_stops_the_run_naming_the_file() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 32, 8);
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // /dev/full answers every write with ENOSPC, like a full disk.
    std::os::unix::fs::symlink("/dev/full", out.join("metrics.jsonl")).unwrap();
    let cfg = config(&data, &["optim.steps=4", "checkpoint.every=2"]);
    let err = train(&cfg, &run_opts(&out), &mut Single)
        .unwrap_err()
        .to_string();
    assert!(err.contains("metrics.jsonl"), "{err}");
    assert!(err.to_lowercase().contains("no space"), "{err}");
    assert!(!out.join("final").exists());
}

/// Sets the high byte of example 0's first input id in its shard (found by its bytes).
fn poison_first_input_id(data: &Path) -> std::path::PathBuf {
    let ds = edkd_data::Dataset::open(data, &edkd_data::OpenOptions::new("train")).unwrap();
    let ids: Vec<u32> = ds.example(0).input_ids.to_vec();
    let needle: Vec<u8> = ids[..4].iter().flat_map(|i| i.to_le_bytes()).collect();
    let shard = data.join("train/shard-00000.arrow");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the ids are in the shard");
    bytes[at + 3] = 0x7f;
    std::fs::write(&shard, bytes).unwrap();
    shard
}

#[test]
fn a_corrupt_shard_fails_the_run_naming_it_never_a_panic() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 32, 8);
    let shard = poison_first_input_id(&data);
    // By default every shard's sha256 is checked when the run opens its data.
    let cfg = config(&data, &["optim.steps=2"]);
    let err = train(&cfg, &run_opts(&tmp.path().join("a")), &mut Single)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard-00000.arrow"), "{err}");
    // Checking row counts only, the bad id is found when its batch is built.
    let cfg = config(&data, &["optim.steps=40", "data.verify=\"rows\""]);
    let err = train(&cfg, &run_opts(&tmp.path().join("b")), &mut Single)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard-00000.arrow"), "{err}");
    assert!(err.contains("vocabulary"), "{err}");
    assert!(shard.exists());
}
