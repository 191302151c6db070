//! Bad input gets a clear error naming the file, line or field, and leaves nothing partial.

mod common;

use std::path::Path;

use edkd_data::manifest::{TRAIN, Verify};
use edkd_data::prepare::prepare;
use edkd_data::{Dataset, Error, OpenOptions};

/// Runs prepare on `input` (file name and contents) and returns the error text, after
/// checking that the output folder's parent holds exactly what it held before.
fn prepare_error(name: &str, contents: &[u8]) -> (Error, String) {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let input = tmp.path().join(name);
    std::fs::write(&input, contents).unwrap();
    let parent = tmp.path().join("datasets");
    std::fs::create_dir(&parent).unwrap();
    let before = common::listing(&parent);
    let out = parent.join("ds");
    let err = prepare(&common::config(&[&input], &tok, &out)).unwrap_err();
    assert_eq!(
        common::listing(&parent),
        before,
        "partial output left behind"
    );
    let text = err.to_string();
    (err, text)
}

const GOOD: &str = r#"{"id": "a", "input": "item 1: red box", "target": "1"}"#;

#[test]
fn malformed_jsonl_names_file_and_line() {
    let contents = format!("{GOOD}\n\n{{\"id\": \"b\", \"input\": \"x\",\n");
    let (err, text) = prepare_error("bad.jsonl", contents.as_bytes());
    assert!(
        matches!(err, Error::MalformedJson { line: 3, .. }),
        "{text}"
    );
    assert!(text.contains("bad.jsonl:3: malformed JSON"), "{text}");
}

#[test]
fn missing_field_is_named() {
    let contents = format!("{GOOD}\n{{\"id\": \"b\", \"input\": \"x\"}}\n");
    let (err, text) = prepare_error("m.jsonl", contents.as_bytes());
    assert!(matches!(err, Error::MissingField { line: 2, .. }), "{text}");
    assert!(text.contains("m.jsonl:2: missing field `target`"), "{text}");
}

#[test]
fn empty_target_is_refused() {
    let contents = format!("{GOOD}\n{{\"id\": \"b\", \"input\": \"x\", \"target\": \"\"}}\n");
    let (err, text) = prepare_error("e.jsonl", contents.as_bytes());
    assert!(
        matches!(
            err,
            Error::EmptyText {
                line: 2,
                what: "target",
                ..
            }
        ),
        "{text}"
    );
}

#[test]
fn unreadable_parquet_is_named() {
    let (err, text) = prepare_error("broken.parquet", b"PAR1 this is not parquet at all PAR1");
    assert!(matches!(err, Error::Parquet { .. }), "{text}");
    assert!(
        text.contains("broken.parquet: unreadable Parquet file"),
        "{text}"
    );
}

#[test]
fn duplicate_ids_are_refused() {
    let contents = format!("{GOOD}\n{GOOD}\n");
    let (err, text) = prepare_error("d.jsonl", contents.as_bytes());
    assert!(matches!(err, Error::DuplicateId { line: 2, .. }), "{text}");
}

#[test]
fn existing_output_is_not_replaced_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 20, 1);
    let out = tmp.path().join("ds");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let mut cfg = common::config(&[&input], &tok, &out);
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(common::listing(&out), vec!["keep.txt"]);
    cfg.overwrite = true;
    prepare(&cfg).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(
        common::listing(tmp.path())
            .iter()
            .all(|n| !n.starts_with('.'))
    );
}

fn prepared(dir: &Path) -> std::path::PathBuf {
    let tok = common::tokenizer(dir);
    let input = common::synth_jsonl(&dir.join("a.jsonl"), 150, 1);
    let out = dir.join("ds");
    prepare(&common::config(&[&input], &tok, &out)).unwrap();
    out
}

#[test]
fn changed_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let shard = out.join("train/shard-00001.arrow");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let err = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ShardChecksum { .. }), "{text}");
    assert!(text.contains("train/shard-00001.arrow"), "{text}");
    // Cheap verification only checks presence and row counts.
    let mut options = OpenOptions::new(TRAIN);
    options.verify = Verify::RowCounts;
    Dataset::open(&out, &options).unwrap();
}

#[test]
fn other_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let mut options = OpenOptions::new(TRAIN);
    options.expect_tokenizer_sha256 = Some("ab".repeat(32));
    let err = Dataset::open(&out, &options).unwrap_err();
    assert!(matches!(err, Error::TokenizerMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&"ab".repeat(32)));
    let sha = edkd_data::Manifest::load(&out).unwrap().tokenizer.sha256;
    let tok_sha = edkd_data::tokenizer::Tokenizer::load(&tmp.path().join("tokenizer.json"))
        .unwrap()
        .sha256;
    assert_eq!(sha, tok_sha);
    options.expect_tokenizer_sha256 = Some(sha);
    Dataset::open(&out, &options).unwrap();
}

#[test]
fn unknown_split_lists_the_available_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let err = Dataset::open(&out, &OpenOptions::new("validation")).unwrap_err();
    assert!(err.to_string().contains("have: train"), "{err}");
}

#[test]
fn record_over_the_byte_limit_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let long = "x".repeat(5_000);
    for (name, contents) in [
        (
            "long.jsonl",
            format!("{GOOD}\n{{\"id\": \"b\", \"input\": \"{long}\", \"target\": \"1\"}}\n"),
        ),
        (
            "long.csv",
            format!("id,input,target\na,red box,1\nb,{long},2\n"),
        ),
    ] {
        let input = tmp.path().join(name);
        std::fs::write(&input, contents).unwrap();
        let out = tmp.path().join(format!("ds-{name}"));
        let cfg = edkd_data::prepare::PrepareConfig {
            max_record_bytes: 1_000,
            ..common::config(&[&input], &tok, &out)
        };
        let err = prepare(&cfg).unwrap_err();
        let text = err.to_string();
        let line = if name.ends_with("csv") { 3 } else { 2 };
        assert!(
            matches!(err, Error::RecordTooLarge { line: l, limit: 1_000, .. } if l == line),
            "{name}: {text}"
        );
        assert!(text.contains(&format!(
            "{name}:{line}: record is over the limit of 1000 bytes"
        )));
        assert!(text.contains("--max-record-bytes"), "{text}");
        // Under the default limit the same file is fine.
        prepare(&common::config(&[&input], &tok, &out)).unwrap();
    }
}

#[test]
fn invalid_utf8_names_the_line() {
    let mut contents = format!("{GOOD}\n{{\"id\": \"b\", \"input\": \"bad ").into_bytes();
    contents.extend_from_slice(&[0xff, 0xfe]);
    contents.extend_from_slice(b"\", \"target\": \"1\"}\n");
    let (err, text) = prepare_error("u.jsonl", &contents);
    assert!(matches!(err, Error::InvalidUtf8 { line: 2, .. }), "{text}");
    assert!(text.contains("u.jsonl:2: invalid UTF-8"), "{text}");
    let mut csv = b"id,input,target\na,fine,1\nb,also fine,2\nc,bad ".to_vec();
    csv.extend_from_slice(&[0xc3, 0x28]);
    csv.extend_from_slice(b",3\n");
    let (err, text) = prepare_error("u.csv", &csv);
    assert!(matches!(err, Error::InvalidUtf8 { line: 4, .. }), "{text}");
    assert!(text.contains("u.csv:4: invalid UTF-8 (field 2"), "{text}");
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let bom = "\u{feff}";
    let jsonl = tmp.path().join("bom.jsonl");
    std::fs::write(&jsonl, format!("{bom}{GOOD}\n")).unwrap();
    let csv = tmp.path().join("bom.csv");
    std::fs::write(&csv, format!("{bom}id,input,target\nc,red box,2\n")).unwrap();
    let out = tmp.path().join("ds");
    prepare(&common::config(&[&jsonl, &csv], &tok, &out)).unwrap();
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    let ids: Vec<&str> = (0..ds.len()).map(|i| ds.example(i).id).collect();
    // The CSV's first column is `id`, not `\u{feff}id` (which would give "bom.csv:2").
    assert_eq!(ids, ["a", "c"]);
}

#[test]
fn temporaries_of_stopped_processes_are_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 20, 1);
    // A process that has exited, and one that still runs.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let mut alive = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let name = |tag: &str, pid: u32| tmp.path().join(format!(".ds.{tag}-{pid}"));
    let stale = [name("partial", dead.id()), name("tmp", dead.id())];
    std::fs::create_dir(&stale[0]).unwrap();
    std::fs::write(stale[0].join("shard-00000.arrow"), b"half").unwrap();
    std::fs::write(&stale[1], b"half").unwrap();
    let running = name("partial", alive.id());
    std::fs::create_dir(&running).unwrap();
    let other = tmp.path().join(format!(".other.partial-{}", dead.id()));
    std::fs::create_dir(&other).unwrap();
    prepare(&common::config(&[&input], &tok, &tmp.path().join("ds"))).unwrap();
    alive.kill().unwrap();
    alive.wait().unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(running.exists(), "a running process's folder was removed");
    assert!(other.exists(), "another output's folder was removed");
}
