//! The training loop end to end on a tiny prepared dataset and the fixture teachers:
//! learning, exact resume, corrupt checkpoints, the three teacher sources agreeing, and the
//! tokenizer check, on-policy KD, and bf16 training.

use std::path::Path;
use std::time::Duration;

use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use edkd_trainer::checkpoint;
use edkd_trainer::config::EvalSection;
use edkd_trainer::dist::Single;
use edkd_trainer::eval::evaluate;
use edkd_trainer::model::{BatchTensors, Net};
use edkd_trainer::source::{self, TeacherSource};
use edkd_trainer::{RunOptions, train};
use tch::Device;

mod common;
use common::{config, prepare, serial, teacher_dir, vocab_of};

#[test]
fn a_tiny_run_learns() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 96, 24);
    let cfg = config(
        &data,
        &[
            "optim.steps=60",
            "eval.every=0",
            "checkpoint.every=0",
            "eval.generate=false",
        ],
    );
    // Validation CE of the same initialisation before training.
    let net = Net::build(&cfg.model, vocab_of(&data), Device::Cpu, cfg.seed).unwrap();
    let mut open = OpenOptions::new("validation");
    open.verify = edkd_data::Verify::RowCounts;
    let val = Dataset::open(&data, &open).unwrap();
    let eval_cfg = EvalSection {
        generate: false,
        ..cfg.eval.clone()
    };
    let before = evaluate(
        &net,
        &val,
        None,
        &cfg.loss.kd(),
        &eval_cfg,
        None,
        Device::Cpu,
        0,
    )
    .unwrap()
    .val_loss;
    drop(net);

    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: out.clone(),
        ..Default::default()
    };
    let summary = train(&cfg, &opts, &mut Single).unwrap();
    let after = summary.final_eval.expect("evaluated at the end").val_loss;
    eprintln!("validation CE {before:.3} -> {after:.3}");
    assert!(
        after < before * 0.6,
        "validation CE should fall by at least 40%: {before:.3} -> {after:.3}"
    );
    // Outputs a user relies on.
    for f in [
        "metrics.jsonl",
        "eval.jsonl",
        "config.resolved.toml",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 60);
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    for k in ["loss", "ce", "lr", "grad_norm", "tokens_per_s"] {
        assert!(
            last[k].as_f64().is_some(),
            "metrics.jsonl lacks {k}: {last}"
        );
    }
    assert!(out.join("final/model.safetensors").is_file());
    assert!(out.join("final/tokenizer.json").is_file());
    let (_, state) = checkpoint::latest_valid(&out.join("checkpoints"), |_| {}).unwrap();
    assert_eq!(state.step, 60);
}

/// KD from the in-process teacher with dropout, gradient accumulation and a cosine
/// schedule: a run stopped after step 10 and resumed from its step-8 checkpoint ends with
/// exactly the weights of an uninterrupted run.
#[test]
fn resume_is_exact_and_corrupt_checkpoints_are_skipped() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 64, 8);
    let cfg = config(
        &data,
        &[
            "optim.steps=16",
            "optim.accumulation=2",
            "checkpoint.every=4",
            "checkpoint.keep_last=3",
            "eval.every=8",
            "eval.generate=false",
            "model.overrides.dropout=0.1",
            "teacher.kind=model",
            &format!("teacher.model=\"{}\"", teacher_dir().display()),
            "loss.alpha=0.7",
            "loss.temperature=2.0",
        ],
    );
    let straight = tmp.path().join("straight");
    train(
        &cfg,
        &RunOptions {
            out: straight.clone(),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap();

    let resumed = tmp.path().join("resumed");
    let first = train(
        &cfg,
        &RunOptions {
            out: resumed.clone(),
            halt_after: Some(10),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.steps, 10);
    // Without --resume the run refuses to overwrite the checkpoints.
    let err = train(
        &cfg,
        &RunOptions {
            out: resumed.clone(),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let second = train(
        &cfg,
        &RunOptions {
            out: resumed.clone(),
            resume: true,
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap();
    assert_eq!(second.steps, 16);
    let a = std::fs::read(straight.join("final/model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("final/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );

    // Keep-last-3: steps 8, 12, 16 remain.
    let root = resumed.join("checkpoints");
    let steps: Vec<u64> = checkpoint::list(&root).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![8, 12, 16]);

    // Corrupt the newest checkpoint's weights: reported, and the previous one is used.
    let newest = checkpoint::step_dir(&root, 16);
    let weights = newest.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    let err = checkpoint::verify(&newest).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt"),
        "{err}"
    );
    let mut warnings = Vec::new();
    let (dir, state) = checkpoint::latest_valid(&root, |e| warnings.push(e.to_string())).unwrap();
    assert_eq!(state.step, 12);
    assert_eq!(dir, checkpoint::step_dir(&root, 12));
    assert_eq!(warnings.len(), 1);
    // A truncated optimizer file is caught too.
    let opt = dir.join("optimizer.safetensors");
    let len = std::fs::metadata(&opt).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&opt)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(
        checkpoint::verify(&dir)
            .unwrap_err()
            .to_string()
            .contains("optimizer.safetensors")
    );
}

/// The same batch gives the same loss whether the teacher is in-process (full logits),
/// behind the gRPC service, or in the cache (both top-k = |V|, f32 on the wire).
#[test]
fn remote_cache_and_in_process_teachers_give_the_same_loss() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 24, 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let teacher = edkd_models::Teacher::load(&teacher_dir(), Default::default()).unwrap();
    let vocab = teacher.model.config.vocab_size as usize;
    let server = rt
        .block_on(edkd_teacher::start(
            teacher,
            edkd_teacher::ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            },
        ))
        .unwrap();
    let addr = server.addr.to_string();
    let temperature = 2.0f32;
    let cache_dir = tmp.path().join("cache");
    rt.block_on(async {
        let client =
            edkd_teacher::Client::connect(edkd_teacher::ClientConfig::new(addr.clone())).unwrap();
        let cfg = edkd_teacher::AnnotateConfig {
            data: data.clone(),
            split: "train".into(),
            out: cache_dir.clone(),
            top_k: vocab,
            temperature,
            sequences_per_request: 8,
            in_flight: 2,
            shard_rows: 16,
            limit: None,
            progress: false,
            view: std::sync::Arc::new(edkd_models::chat::TeacherView::raw()),
            packing: None,
            zstd_level: None,
            calibration_examples: edkd_teacher::annotate::CALIBRATION_EXAMPLES,
        };
        edkd_teacher::annotate(&client, &cfg).await.unwrap();
    });

    let ds = Dataset::open(&data, &OpenOptions::new("train")).unwrap();
    let mut reader = Reader::new(
        ds,
        ReaderConfig {
            max_tokens: 600,
            max_rows: 8,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let batch = reader.next_batch().unwrap();
    assert!(batch.rows > 1);

    let cfg = config(&data, &["loss.alpha=1.0", "loss.temperature=2.0"]);
    let net = Net::build(&cfg.model, vocab_of(&data), Device::Cpu, 7).unwrap();
    let t = BatchTensors::new(&batch, Device::Cpu);
    let logits = tch::no_grad(|| net.logits(&t, false)).unwrap();
    let loss = cfg.loss.kd();
    // The service, unpacked or asked for a packing by name.
    let remote = |packing: Option<&str>| {
        source::Remote::connect(source::RemoteConfig {
            addr: addr.clone(),
            top_k: vocab,
            temperature,
            auth_token: None,
            timeout: Duration::from_secs(30),
            retry_for: Duration::ZERO,
            packing: packing.map(|n| edkd_data::packing::Packing::from_name(n).unwrap()),
        })
    };
    let mut sources: Vec<(&str, Box<dyn TeacherSource>)> = vec![
        (
            "in-process",
            Box::new(source::InProcess::load(&teacher_dir(), Device::Cpu).unwrap()),
        ),
        (
            "cache",
            Box::new(source::Cache::open(&cache_dir, vocab as i64).unwrap()),
        ),
        ("remote", Box::new(remote(None).unwrap())),
    ];
    // The same service asked for packed answers (8-bit codes, entropy-coded): the KD term
    // moves by the codes' rounding only.
    let mut packed = remote(Some("delta-e8")).unwrap();
    // A cache-only packing is refused when connecting, naming what the service sends.
    let e = remote(Some("freq-e5")).err().unwrap().to_string();
    assert!(
        e.contains("teacher.packing = freq-e5") && e.contains("delta-e8"),
        "{e}"
    );
    let mut values = Vec::new();
    for (name, src) in sources.iter_mut() {
        let out = src.score(&batch).unwrap();
        let (targets, _) = out.targets(&t.decoder_mask, Device::Cpu);
        let parts = loss.total(
            &logits,
            &t.labels,
            &t.decoder_mask,
            Some((&targets, src.info().vocab_size)),
        );
        eprintln!("{name}: kd {:.6}", parts.kd);
        values.push((name.to_string(), parts.kd));
    }
    for (name, v) in &values[1..] {
        assert!(
            (v - values[0].1).abs() <= 1e-4,
            "{name} KD {v} differs from in-process {}",
            values[0].1
        );
    }
    let out = packed.score(&batch).unwrap();
    let (targets, _) = out.targets(&t.decoder_mask, Device::Cpu);
    let kd = loss
        .total(
            &logits,
            &t.labels,
            &t.decoder_mask,
            Some((&targets, packed.info().vocab_size)),
        )
        .kd;
    let exact = values[0].1;
    assert!(
        (kd - exact).abs() <= 5e-3 * exact.abs() && kd != exact,
        "packed KD {kd} vs in-process {exact}"
    );
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn a_teacher_with_another_tokenizer_is_refused() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 8, 2);
    // The same teacher, but its tokenizer.json differs by one byte.
    let other = tmp.path().join("teacher");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(teacher_dir().join(f), other.join(f)).unwrap();
    }
    let mut tok = std::fs::read(other.join("tokenizer.json")).unwrap();
    tok.push(b'\n');
    std::fs::write(other.join("tokenizer.json"), tok).unwrap();
    let cfg = config(
        &data,
        &[
            "teacher.kind=model",
            &format!("teacher.model=\"{}\"", other.display()),
            "optim.steps=1",
        ],
    );
    let err = train(
        &cfg,
        &RunOptions {
            out: tmp.path().join("run"),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokenizer"), "{err}");
    assert!(!tmp.path().join("run/checkpoints").exists());
}

/// The metrics of every step of a finished run.
fn step_metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// On-policy KD: every step the student samples its own answers, the in-process teacher
/// scores `prompt ++ sample`, and the KD term trains on the sample.
#[test]
fn on_policy_steps_score_the_students_samples() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 32, 8);
    let cfg = config(
        &data,
        &[
            "optim.steps=6",
            "eval.every=0",
            "checkpoint.every=0",
            "eval.generate=false",
            "teacher.kind=model",
            &format!("teacher.model=\"{}\"", teacher_dir().display()),
            "loss.on_policy_fraction=1.0",
            "loss.sample_temperature=1.0",
            "loss.sample_top_k=20",
        ],
    );
    let out = tmp.path().join("run");
    train(
        &cfg,
        &RunOptions {
            out: out.clone(),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap();
    let steps = step_metrics(&out);
    assert_eq!(steps.len(), 6);
    for m in &steps {
        assert_eq!(m["on_policy"], true, "{m}");
        let kd = m["kd"].as_f64().unwrap();
        assert!(kd.is_finite() && kd > 0.0, "{m}");
        let mass = m["topk_mass"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-6, "{m}");
    }
    assert!(out.join("final/model.safetensors").is_file());
}

/// bf16 weights and compute with fp32 master weights: the run learns and saves a model
/// that loads back.
#[test]
fn a_bf16_run_learns_and_saves_a_loadable_model() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 64, 8);
    let cfg = config(
        &data,
        &[
            "optim.steps=30",
            "eval.every=0",
            "checkpoint.every=0",
            "eval.generate=false",
            "model.precision=\"bf16\"",
        ],
    );
    let out = tmp.path().join("run");
    let summary = train(
        &cfg,
        &RunOptions {
            out: out.clone(),
            ..Default::default()
        },
        &mut Single,
    )
    .unwrap();
    let losses: Vec<f64> = step_metrics(&out)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 30);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    assert!(last < first * 0.8, "bf16 loss {first:.3} -> {last:.3}");
    let val = summary.final_eval.expect("evaluated at the end").val_loss;
    assert!(val.is_finite(), "{val}");
    let section = edkd_trainer::config::ModelSection {
        init: Some(out.join("final")),
        ..Default::default()
    };
    Net::build(&section, vocab_of(&data), Device::Cpu, 0).expect("the saved model loads");
}

/// `teacher.prefetch = 0` (the teacher is asked only when the step needs a batch) trains
/// on the same batches with the same teacher answers as the default read-ahead, across an
/// epoch boundary: every step's loss is equal.
#[test]
fn prefetch_zero_asks_on_demand_and_trains_the_same_steps() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 16, 4);
    let mut losses = Vec::new();
    for prefetch in [2, 0] {
        let cfg = config(
            &data,
            &[
                "optim.steps=12",
                "eval.every=0",
                "checkpoint.every=0",
                "eval.generate=false",
                "teacher.kind=model",
                &format!("teacher.model=\"{}\"", teacher_dir().display()),
                &format!("teacher.prefetch={prefetch}"),
            ],
        );
        let out = tmp.path().join(format!("run-{prefetch}"));
        train(
            &cfg,
            &RunOptions {
                out: out.clone(),
                ..Default::default()
            },
            &mut Single,
        )
        .unwrap();
        let steps = step_metrics(&out);
        assert_eq!(steps.len(), 12, "prefetch {prefetch}");
        losses.push(
            steps
                .iter()
                .map(|m| (m["loss"].as_f64().unwrap(), m["kd"].as_f64().unwrap()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(losses[0], losses[1]);
}
