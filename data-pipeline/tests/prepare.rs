//! `prepare` end to end: byte-identical reruns, truncation policies, CSV and templates,
//! the validation split.

mod common;

use std::path::Path;

use edkd_data::ingest::TextSpec;
use edkd_data::manifest::{TRAIN, VALIDATION, Verify};
use edkd_data::prepare::{Truncation, prepare};
use edkd_data::tokenizer::Tokenizer;
use edkd_data::{Dataset, Manifest, OpenOptions};

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap().display().to_string();
        out.push((rel, std::fs::read(&entry).unwrap()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[test]
fn two_runs_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 300, 1);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&input], &tok, &out);
    cfg.val_fraction = Some(0.2);
    cfg.keep_text = true;
    prepare(&cfg).unwrap();
    let first = files_of(&out);
    std::fs::rename(&out, tmp.path().join("first")).unwrap();
    prepare(&cfg).unwrap();
    let second = files_of(&out);
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.0, b.0);
        assert!(a.1 == b.1, "{} differs between runs", a.0);
    }
    // 300 rows, shards of 64, two splits: several shards per split, all listed.
    let m = Manifest::load(&out).unwrap();
    let train = m.split(TRAIN).unwrap();
    let val = m.split(VALIDATION).unwrap();
    assert_eq!(train.rows + val.rows, 300);
    assert!(
        val.rows > 30 && val.rows < 90,
        "validation rows {}",
        val.rows
    );
    assert_eq!(train.shards.len() as u64, train.rows.div_ceil(64));
    assert_eq!(first.len(), 1 + train.shards.len() + val.shards.len());
    assert_eq!(m.tokenizer.special_ids.bos, 1);
    assert_eq!(m.tokenizer.special_ids.eos, 2);
    assert_eq!(m.tokenizer.special_ids.pad, 0);
    assert_eq!(m.tokenizer.special_ids.unk, Some(3));
    assert_eq!(m.splits[TRAIN].tasks.len(), 3);
}

#[test]
fn token_ids_match_the_tokenizer_and_order_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = common::tokenizer(tmp.path());
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 50, 2);
    let out = tmp.path().join("ds");
    prepare(&common::config(&[&input], &tok_path, &out)).unwrap();
    let tok = Tokenizer::load(&tok_path).unwrap();
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    let examples =
        edkd_data::synth::generate("mix", edkd_data::synth::Split::Train, 2, 50).unwrap();
    assert_eq!(ds.len(), 50);
    for (i, e) in examples.iter().enumerate() {
        let got = ds.example(i as u64);
        assert_eq!(got.id, e.id);
        assert_eq!(got.task, e.task);
        assert_eq!(got.input_ids, tok.encode(&e.input).unwrap().as_slice());
        assert_eq!(got.target_ids, tok.encode(&e.target).unwrap().as_slice());
    }
}

#[test]
fn truncation_policies_are_respected() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = common::tokenizer(tmp.path());
    let tok = Tokenizer::load(&tok_path).unwrap();
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 40, 3);
    let examples =
        edkd_data::synth::generate("mix", edkd_data::synth::Split::Train, 3, 40).unwrap();
    let full: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| tok.encode(&e.input).unwrap())
        .collect();
    let limit = 50;
    assert!(
        full.iter().all(|f| f.len() > limit),
        "inputs should be long"
    );

    for (policy, name) in [
        (Truncation::KeepStart, "start"),
        (Truncation::KeepEnd, "end"),
    ] {
        let out = tmp.path().join(name);
        let mut cfg = common::config(&[&input], &tok_path, &out);
        cfg.max_input_tokens = Some(limit);
        cfg.input_truncation = policy;
        let summary = prepare(&cfg).unwrap();
        assert_eq!(summary.manifest.splits[TRAIN].truncated_inputs, 40);
        let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
        for (i, f) in full.iter().enumerate() {
            let want = match policy {
                Truncation::KeepStart => &f[..limit],
                _ => &f[f.len() - limit..],
            };
            assert_eq!(ds.example(i as u64).input_ids, want);
        }
    }

    // drop: targets over 1 token are skipped and counted.
    let out = tmp.path().join("drop");
    let mut cfg = common::config(&[&input], &tok_path, &out);
    cfg.max_target_tokens = Some(1);
    cfg.target_truncation = Truncation::Drop;
    let summary = prepare(&cfg).unwrap();
    let kept = examples
        .iter()
        .filter(|e| tok.encode(&e.target).unwrap().len() <= 1)
        .count() as u64;
    let split = &summary.manifest.splits[TRAIN];
    assert_eq!(split.rows, kept);
    assert_eq!(split.dropped, 40 - kept);
    assert!(split.dropped > 0 && kept > 0);
    assert!(
        Dataset::open(&out, &OpenOptions::new(TRAIN))
            .map(|ds| (0..ds.len()).all(|i| ds.example(i).target_ids.len() <= 1))
            .unwrap()
    );

    // error: names the file and line.
    let out = tmp.path().join("error");
    let mut cfg = common::config(&[&input], &tok_path, &out);
    cfg.max_input_tokens = Some(limit);
    cfg.input_truncation = Truncation::Error;
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("a.jsonl:1:") && err.contains("limit of 50"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn csv_with_templates_and_separate_validation_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let csv = tmp.path().join("qa.csv");
    std::fs::write(
        &csv,
        "question,context,answer\n\"where is the cat?\",\"The cat, a red one, is in Oslo.\",Oslo\nwho?,Alice is here.,Alice\n",
    )
    .unwrap();
    let val = common::synth_jsonl(&tmp.path().join("val.jsonl"), 5, 4);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&csv], &tok, &out);
    cfg.fields.input = TextSpec::template("Q: {question}\nC: {context}").unwrap();
    cfg.fields.target = TextSpec::Field("answer".into());
    cfg.fields.default_task = "csvqa".into();
    cfg.validation_inputs = vec![val.display().to_string()];
    cfg.fields.input = TextSpec::template("Q: {question}\nC: {context}").unwrap();
    // The validation JSONL has other fields: use a template both files can satisfy.
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("val.jsonl:1: missing field `question`"),
        "{err}"
    );

    cfg.validation_inputs.clear();
    cfg.keep_text = true;
    prepare(&cfg).unwrap();
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.splits[TRAIN].rows, 2);
    assert_eq!(m.splits[TRAIN].tasks["csvqa"], 2);
    assert_eq!(m.settings.input, "template:Q: {question}\nC: {context}");
    let t = Tokenizer::load(&tok).unwrap();
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    assert_eq!(
        t.decode(ds.example(0).input_ids).unwrap(),
        "Q: where is the cat?\nC: The cat, a red one, is in Oslo."
    );
    assert_eq!(ds.example(1).id, "qa.csv:3");
    m.verify_split(&out, TRAIN, Verify::Full).unwrap();
}
