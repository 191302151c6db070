//! `edkd data prepare` memory on one huge record, measured as the peak resident set of the
//! child process. The stated bound (data-pipeline/src/prepare.rs): with a token limit, the
//! extra peak is at most 4x the largest record (its line, its parsed text and the record;
//! only what survives truncation is tokenised); with no limit, at most 10x (the ids are
//! kept, and copied once into the shard). Before the fix a 50 MB line cut to 40 tokens
//! peaked at 9.5 GB, ~190x.

mod common;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Measured, run_measured};

const MIB: u64 = 1 << 20;
/// The one huge record's input, in bytes.
const HUGE_BYTES: usize = 50 << 20;
/// Extra peak allowed with a token limit, as a multiple of the largest record.
const LIMITED_MULTIPLE: u64 = 4;
/// A 10 MB record tokenised in full (no limit), and the multiple allowed then.
const FULL_BYTES: usize = 10 << 20;
const FULL_MULTIPLE: u64 = 10;
/// Never let a regression take more than this above the small run (the machine is shared).
const CAP_ABOVE_BASELINE: u64 = 1536 * MIB;
const LIMIT: Duration = Duration::from_secs(600);

fn edkd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edkd"));
    // No backtrace: symbolising one for the expected error takes ~70 MB of its own.
    cmd.env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0");
    cmd
}

fn tokenizer(dir: &Path) -> PathBuf {
    let texts: Vec<String> =
        edkd_data::synth::generate("mix", edkd_data::synth::Split::Train, 9, 80)
            .unwrap()
            .into_iter()
            .flat_map(|e| [e.input, e.target])
            .collect();
    let path = dir.join("tokenizer.json");
    edkd_data::tokenizer::train_bpe_to_file(texts, 400, 2, &path).unwrap();
    path
}

/// 200 ordinary examples, then (if `huge` > 0) one whose input has `huge` bytes.
fn jsonl(path: &Path, huge: usize) -> PathBuf {
    let examples =
        edkd_data::synth::generate("mix", edkd_data::synth::Split::Train, 3, 200).unwrap();
    edkd_data::synth::write_jsonl(path, &examples).unwrap();
    if huge > 0 {
        let mut f = BufWriter::new(std::fs::OpenOptions::new().append(true).open(path).unwrap());
        f.write_all(br#"{"id": "huge", "target": "42", "input": ""#)
            .unwrap();
        let words = b"amber falcon 417 reads the record; ";
        for _ in 0..huge / words.len() {
            f.write_all(words).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
    }
    path.to_owned()
}

fn prepare(input: &Path, tok: &Path, out: &Path, extra: &[&str], cap_kib: u64) -> Measured {
    let mut cmd = edkd();
    cmd.args(["data", "prepare", "--input"])
        .arg(input)
        .arg("--tokenizer")
        .arg(tok)
        .arg("--out")
        .arg(out)
        .args(extra);
    run_measured(cmd, cap_kib, LIMIT)
}

/// Peak resident set and peak anonymous memory of `run` above those of `base`, bytes.
fn extra(run: &Measured, base: &Measured) -> (u64, u64) {
    (
        run.peak_kib.saturating_sub(base.peak_kib) * 1024,
        run.peak_anon_kib.saturating_sub(base.peak_anon_kib) * 1024,
    )
}

fn report(what: &str, run: &Measured, base: &Measured, record: u64) -> (u64, u64) {
    let (rss, anon) = extra(run, base);
    eprintln!(
        "{what}: peak RSS {} MiB ({} MiB above the 200-example run, {:.2}x the record), peak \
         anonymous {} MiB ({} MiB above, {:.2}x)",
        run.peak_kib / 1024,
        rss / MIB,
        rss as f64 / record as f64,
        run.peak_anon_kib / 1024,
        anon / MIB,
        anon as f64 / record as f64
    );
    (rss, anon)
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn one_huge_record_stays_within_a_multiple_of_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path());
    let small = prepare(
        &jsonl(&tmp.path().join("small.jsonl"), 0),
        &tok,
        &tmp.path().join("small"),
        &["--max-input-tokens", "40"],
        u64::MAX,
    );
    assert_eq!(small.code, Some(0), "{}", small.stderr);
    let cap = small.peak_kib + CAP_ABOVE_BASELINE / 1024;

    let big = jsonl(&tmp.path().join("big.jsonl"), HUGE_BYTES);
    let line = std::fs::metadata(&big).unwrap().len()
        - std::fs::metadata(tmp.path().join("small.jsonl"))
            .unwrap()
            .len();
    let out = tmp.path().join("big");
    let cut = prepare(&big, &tok, &out, &["--max-input-tokens", "40"], cap);
    let (rss, anon) = report("50 MB record cut to 40 tokens", &cut, &small, line);
    assert!(
        !cut.killed,
        "killed past {} MiB: peak {} KiB",
        cap / 1024,
        cut.peak_kib
    );
    assert_eq!(cut.code, Some(0), "{}", cut.stderr);
    let train = &manifest(&out)["splits"]["train"];
    assert_eq!(train["rows"], 201);
    assert_eq!(train["input_tokens"]["max"], 40);
    for (what, bytes) in [("resident", rss), ("anonymous", anon)] {
        assert!(
            bytes <= LIMITED_MULTIPLE * line,
            "{what} peak {} MiB above baseline for a {} MiB record (bound {LIMITED_MULTIPLE}x)",
            bytes / MIB,
            line / MIB
        );
    }
    // The record's own bytes do show: the line and its parsed text.
    assert!(
        anon >= line,
        "only {} MiB for a {} MiB line?",
        anon / MIB,
        line / MIB
    );

    // Over the byte limit: a clear error naming file and line, before the line is held.
    let refused = prepare(
        &big,
        &tok,
        &tmp.path().join("refused"),
        &["--max-record-bytes", "1000000"],
        cap,
    );
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("big.jsonl:201: record is over the limit of 1000000 bytes"),
        "{}",
        refused.stderr
    );
    let (_, anon) = report(
        "50 MB record over --max-record-bytes",
        &refused,
        &small,
        line,
    );
    assert!(anon <= 32 * MIB, "refusing took {} MiB", anon / MIB);
}

#[test]
fn a_record_tokenised_in_full_is_streamed_in_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path());
    let small = prepare(
        &jsonl(&tmp.path().join("small.jsonl"), 0),
        &tok,
        &tmp.path().join("small"),
        &[],
        u64::MAX,
    );
    assert_eq!(small.code, Some(0), "{}", small.stderr);
    let big = jsonl(&tmp.path().join("big.jsonl"), FULL_BYTES);
    let line = std::fs::metadata(&big).unwrap().len()
        - std::fs::metadata(tmp.path().join("small.jsonl"))
            .unwrap()
            .len();
    let out = tmp.path().join("big");
    let full = prepare(
        &big,
        &tok,
        &out,
        &[],
        small.peak_kib + CAP_ABOVE_BASELINE / 1024,
    );
    let (rss, anon) = report("10 MB record, no limit", &full, &small, line);
    assert!(!full.killed && full.code == Some(0), "{}", full.stderr);
    let tokens = manifest(&out)["splits"]["train"]["input_tokens"]["max"]
        .as_u64()
        .unwrap();
    assert!(tokens > (FULL_BYTES / 16) as u64, "only {tokens} tokens");
    for (what, bytes) in [("resident", rss), ("anonymous", anon)] {
        assert!(
            bytes <= FULL_MULTIPLE * line,
            "{what} peak {} MiB above baseline for a {} MiB record (bound {FULL_MULTIPLE}x)",
            bytes / MIB,
            line / MIB
        );
    }
}
