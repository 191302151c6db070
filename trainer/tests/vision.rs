//! Vision-language training end to end (issue 14): a VL student learns a synthetic image
//! task above chance, frozen groups stay bit-identical and out of the optimizer, a VL twin
//! teacher scores images in process at the positions that predict the targets, a VL KD run
//! resumes exactly, and mismatches between model, teacher and data are refused naming the
//! field.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use edkd_models::multimodal::{VisionStudentModel, VisionTwinModel};
use edkd_models::teacher::LoadOptions;
use edkd_trainer::config::{EvalSection, TrainConfig};
use edkd_trainer::dist::Single;
use edkd_trainer::eval::predict_folder;
use edkd_trainer::model::{Net, vision};
use edkd_trainer::source::{InProcess, TeacherOut, TeacherSource};
use edkd_trainer::{RunOptions, checkpoint, train};
use tch::{Device, Tensor};

mod common;
use common::images::{clip_dir, prepare_images, run, vl_config};
use common::{serial, vocab_of};

/// Patches per image of `common::images::TOWER`: how far the twin's text moves.
const TOWER_PATCHES: i64 = 9;
/// Logits of the in-process teacher and of a direct forward agree to this (same ops).
const LOGIT_TOL: f64 = 1e-5;

/// How often always answering the training set's most common answer is right on `val`.
fn majority_rate(train: &[String], val: &[String]) -> f64 {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in train {
        *counts.entry(a).or_default() += 1;
    }
    let (best, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    val.iter().filter(|a| a.as_str() == *best).count() as f64 / val.len() as f64
}

/// "What colour is the circle?" needs the pixels: the question has three forms and six
/// answers. A tiny student with a tower trained from scratch beats always giving the
/// commonest answer by a wide margin (0.36-0.48 EM against 0.13 over seeds 0-3), and its
/// saved folder predicts exactly what the run evaluated.
#[test]
fn a_vl_student_learns_an_image_task_above_chance() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = prepare_images(tmp.path(), "image-colour", (1000, 200), true);
    let chance = majority_rate(&d.train_answers, &d.val_answers);
    let cfg = vl_config(
        &d,
        &[
            "optim.steps=800",
            "optim.schedule=wsd",
            "model.vision.train_tower=true",
        ],
    );
    let out = tmp.path().join("run");
    let report = run(&cfg, &out).final_eval.expect("evaluated at the end");
    let em = report.overall.as_ref().expect("generation scores").em;
    eprintln!("held-out EM {em:.3}, chance {chance:.3}");
    assert!(
        em > chance + 0.15,
        "EM {em:.3} is not above the majority answer's rate {chance:.3} by 0.15"
    );
    let eval = EvalSection {
        max_examples: 0,
        ..cfg.eval.clone()
    };
    let preds = predict_folder(
        &out.join("final"),
        &d.data,
        "validation",
        &eval,
        Device::Cpu,
    )
    .expect("the final folder is a loadable VL student");
    let em_folder = preds.iter().map(|p| p.metrics.exact_match).sum::<f64>() / preds.len() as f64;
    assert!((em_folder - em).abs() < 1e-12, "{em_folder} vs {em}");
}

/// Variables of a VL student folder by name.
fn student_vars(dir: &Path) -> HashMap<String, Tensor> {
    let m = VisionStudentModel::load(dir, LoadOptions::default()).unwrap();
    m.vs.variables()
}

/// Which variables of `before` (by group: tower, projector, text) equal those of `after`
/// bit for bit: `(unchanged, total)` per group.
fn unchanged_by_group(
    before: &HashMap<String, Tensor>,
    after: &HashMap<String, Tensor>,
) -> BTreeMap<&'static str, (usize, usize)> {
    let mut groups = BTreeMap::new();
    for (name, b) in before {
        let group = if name.starts_with("vision_tower.") {
            "tower"
        } else if name.starts_with("mm_projector.") {
            "projector"
        } else {
            "text"
        };
        let e = groups.entry(group).or_insert((0, 0));
        e.0 += usize::from(b.equal(&after[name]));
        e.1 += 1;
    }
    groups
}

/// Optimizer moments in a checkpoint, by group.
fn optimizer_groups(ckpt: &Path) -> BTreeMap<&'static str, usize> {
    let named = Tensor::read_safetensors(ckpt.join(checkpoint::OPTIMIZER_FILE)).unwrap();
    let mut groups = BTreeMap::new();
    for (name, _) in named {
        let Some(var) = name.strip_prefix("m.") else {
            continue;
        };
        let group = if var.starts_with("vision_tower.") {
            "tower"
        } else if var.starts_with("mm_projector.") {
            "projector"
        } else {
            "text"
        };
        *groups.entry(group).or_insert(0) += 1;
    }
    groups
}

/// `train_tower = false` (a CLIP folder's tower) and `train_text = false` (a fresh tower):
/// the frozen group is bit-identical after training and has no optimizer state (so it is
/// neither updated nor decayed), while the projector and the trained group moved.
#[test]
fn frozen_groups_stay_bit_identical() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = prepare_images(tmp.path(), "image-mix", (96, 16), true);
    let quick = [
        "optim.steps=4",
        "optim.warmup_steps=0",
        "eval.generate=false",
        "eval.max_examples=8",
    ];
    let clip = format!("model.vision.tower=\"{}\"", clip_dir().display());
    let cases: [(&str, Vec<String>, &str); 2] = [
        (
            "frozen tower",
            vec![clip, "model.vision.train_tower=false".into()],
            "tower",
        ),
        (
            "frozen text",
            vec![
                "model.vision.train_tower=true".into(),
                "model.vision.train_text=false".into(),
            ],
            "text",
        ),
    ];
    for (label, sets, frozen) in cases {
        let mut o: Vec<&str> = quick.to_vec();
        o.extend(sets.iter().map(String::as_str));
        let mut cfg = vl_config(&d, &o);
        if label == "frozen tower" {
            // A CLIP folder instead of the inline shape.
            cfg.model.vision.as_mut().unwrap().tower_config = None;
            cfg.validate().unwrap();
        }
        let net = Net::build(&cfg.model, vocab_of(&d.data), Device::Cpu, cfg.seed).unwrap();
        let init = tmp.path().join(format!("{label} init"));
        net.save(&init, None).unwrap();
        drop(net);
        let out = tmp.path().join(label);
        run(&cfg, &out);
        let groups = unchanged_by_group(&student_vars(&init), &student_vars(&out.join("final")));
        // Trained groups move, except variables the step does not reach (the tower's
        // blocks after the feature layer and its post-layernorm get zero gradients, and
        // norms are not decayed).
        for (group, (same, total)) in &groups {
            match *group {
                g if g == frozen => assert_eq!(same, total, "{label}: {g} changed: {groups:?}"),
                "projector" => assert_eq!(*same, 0, "{label}: {groups:?}"),
                g => assert!(2 * same < *total, "{label}: {g} barely moved: {groups:?}"),
            }
        }
        let (dir, _) = checkpoint::latest_valid(&out.join("checkpoints"), |_| {}).unwrap();
        let moments = optimizer_groups(&dir);
        assert!(!moments.contains_key(frozen), "{label}: {moments:?}");
        assert_eq!(moments.len(), 2, "{label}: {moments:?}");
    }
    // The frozen tower is the CLIP folder's, as loaded.
    let tower = Tensor::read_safetensors(clip_dir().join("model.safetensors")).unwrap();
    let after = student_vars(&tmp.path().join("frozen tower/final"));
    let mut checked = 0;
    for (key, t) in tower.iter().filter(|(k, _)| !k.ends_with("position_ids")) {
        let key = key.strip_prefix("vision_model.").unwrap_or(key);
        assert!(
            t.equal(&after[&format!("vision_tower.vision_model.{key}")]),
            "{key}"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        after
            .keys()
            .filter(|k| k.starts_with("vision_tower."))
            .count()
    );
}

/// The first validation batch of `data` (with its images), as the trainer's reader makes it.
fn first_batch(data: &Path, rows: usize) -> edkd_data::Batch {
    let mut open = OpenOptions::new("validation");
    open.verify = edkd_data::Verify::RowCounts;
    let ds = Dataset::open(data, &open).unwrap();
    let cfg = ReaderConfig {
        max_rows: rows,
        shuffle: false,
        bucket_by_length: false,
        teacher: true,
        ..ReaderConfig::default()
    };
    let mut reader = Reader::new(ds, cfg, None).unwrap();
    reader.try_next_batch().unwrap().unwrap()
}

/// A decoder-only VL twin trained here for a few steps becomes an in-process teacher: its
/// answer for a batch with images equals a direct forward of the saved twin at
/// `Merged::text_position` of each target token (the placeholder's patches move the target
/// by `patches - 1`), and a text teacher refuses the batch. Then it teaches a VL student by
/// KD (the tower trains too; some steps on the student's own samples, which keep their
/// images) with dropout and accumulation: a run stopped at step 6 and resumed from its
/// step-4 checkpoint ends with exactly the weights of an uninterrupted one.
#[test]
fn a_vl_twin_teaches_in_process_and_the_kd_run_resumes_exactly() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = prepare_images(tmp.path(), "image-mix", (128, 16), true);

    // The teacher: a decoder-only VL run (fresh tower, trained) and its final folder.
    let twin_cfg = vl_config(
        &d,
        &[
            "model.architecture=decoder-only",
            "model.vision.train_tower=true",
            "optim.steps=6",
            "eval.max_examples=8",
        ],
    );
    let twin_run = tmp.path().join("twin");
    let summary = run(&twin_cfg, &twin_run);
    assert!(
        summary.final_eval.unwrap().overall.is_some(),
        "the twin generates with images"
    );
    let teacher_dir = twin_run.join("final");

    // In-process scores = a direct forward at the merged positions.
    let batch = first_batch(&d.data, 6);
    assert!(batch.images.as_ref().unwrap().iter().all(Option::is_some));
    let mut source = InProcess::load(&teacher_dir, Device::Cpu).unwrap();
    let TeacherOut::Full(scored) = source.score(&batch).unwrap() else {
        panic!("an in-process teacher gives full logits");
    };
    let twin = VisionTwinModel::load(&teacher_dir, LoadOptions::default()).unwrap();
    let images = batch.decode_images().unwrap();
    let px = vision::pixels(&twin.processor, &images, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&batch.teacher_ids).reshape([batch.rows as i64, -1]);
    let valid = Tensor::from_slice(&batch.teacher_mask).reshape([batch.rows as i64, -1]);
    let (logits, merged) =
        tch::no_grad(|| twin.model.forward(&ids, &valid, px.as_ref(), false)).unwrap();
    let mut compared = 0;
    for r in 0..batch.rows {
        for t in 0..batch.dec_len {
            if !batch.decoder_mask[r * batch.dec_len + t] {
                continue;
            }
            let text = batch.target_start[r] - 1 + t as i64;
            let p = merged.text_position(r, text);
            // The placeholder opens the input, so every target token follows the image.
            assert_eq!(p - text, TOWER_PATCHES - 1, "row {r} token {t}");
            let want = logits.get(r as i64).get(p);
            let got = scored.get(r as i64).get(t as i64);
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < LOGIT_TOL, "row {r} token {t}: {diff}");
            compared += 1;
        }
    }
    assert!(compared >= batch.rows * 2, "{compared} positions compared");
    let text_teacher = common::teacher_dir();
    let err = InProcess::load(&text_teacher, Device::Cpu)
        .unwrap()
        .score(&batch)
        .err()
        .expect("a text teacher refuses images")
        .to_string();
    assert!(err.contains("cannot read images"), "{err}");

    // KD into the VL student from the twin, stopped and resumed.
    let teacher = format!("teacher.model=\"{}\"", teacher_dir.display());
    let cfg = vl_config(
        &d,
        &[
            "teacher.kind=model",
            &teacher,
            "loss.alpha=0.7",
            "loss.on_policy_fraction=0.3",
            "model.vision.train_tower=true",
            "model.overrides.dropout=0.1",
            "optim.steps=10",
            "optim.accumulation=2",
            "batch.max_rows=16",
            "checkpoint.every=4",
            "eval.every=4",
            "eval.generate=false",
            "eval.max_examples=8",
        ],
    );
    let straight = tmp.path().join("straight");
    run(&cfg, &straight);
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let mut on_policy = 0;
    for line in metrics.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let kd = m["kd"].as_f64().unwrap();
        assert!(kd.is_finite() && kd > 0.0, "{m}");
        assert!(m["top1_agree"].as_f64().is_some(), "{m}");
        on_policy += usize::from(m["on_policy"].as_bool().unwrap());
    }
    assert!(
        (1..10).contains(&on_policy),
        "{on_policy} on-policy steps of 10"
    );
    let resumed = tmp.path().join("resumed");
    let halt = RunOptions {
        out: resumed.clone(),
        halt_after: Some(6),
        ..Default::default()
    };
    assert!(train(&cfg, &halt, &mut Single).unwrap().interrupted);
    let again = RunOptions {
        out: resumed.clone(),
        resume: true,
        ..Default::default()
    };
    assert_eq!(train(&cfg, &again, &mut Single).unwrap().steps, 10);
    let a = std::fs::read(straight.join("final/model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("final/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed VL weights differ from the uninterrupted run's"
    );
}

fn train_error(cfg: &TrainConfig, out: &Path) -> String {
    let opts = RunOptions {
        out: out.to_owned(),
        ..Default::default()
    };
    match train(cfg, &opts, &mut Single) {
        Ok(_) => panic!("the run should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// Model, teacher and data that cannot work together are refused before training, naming
/// the field at fault.
#[test]
fn mismatched_models_and_data_are_refused_naming_the_field() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let quick = ["optim.steps=1", "eval.generate=false"];
    // Images, but a tokenizer without `<image>`: the manifest has no image token id.
    let d = prepare_images(&tmp.path().join("no-token"), "image-count", (16, 4), false);
    let e = train_error(&vl_config(&d, &quick), &tmp.path().join("a"));
    assert!(
        e.contains("images.image_token_id") && e.contains("--special"),
        "{e}"
    );

    let d = prepare_images(&tmp.path().join("images"), "image-count", (16, 4), true);
    // A text model on images.
    let mut text = vl_config(&d, &quick);
    text.model.vision = None;
    let e = train_error(&text, &tmp.path().join("b"));
    assert!(
        e.contains("`model.vision`") && e.contains("has images"),
        "{e}"
    );
    // A text in-process teacher on images.
    let teacher = format!("teacher.model=\"{}\"", common::teacher_dir().display());
    let mut o = quick.to_vec();
    o.extend(["teacher.kind=model", teacher.as_str()]);
    let e = train_error(&vl_config(&d, &o), &tmp.path().join("c"));
    assert!(
        e.contains("`teacher.model`") && e.contains("text model"),
        "{e}"
    );

    // A VL model on text data.
    let text_data = common::prepare(&tmp.path().join("text"), 16, 4);
    let mut cfg = common::config(&text_data, &quick);
    cfg.model.vision = vl_config(&d, &[]).model.vision;
    let e = train_error(&cfg, &tmp.path().join("d"));
    assert!(
        e.contains("`model.vision`") && e.contains("no images"),
        "{e}"
    );
}
