//! A dataset whose shards do not match their manifest is refused at open (sha256), and a
//! token id beyond the vocabulary is an error naming shard, row and value when its batch is
//! built (for data opened with row counts only), never a panic.

mod common;

use std::path::{Path, PathBuf};

use edkd_data::manifest::{TRAIN, Verify};
use edkd_data::prepare::prepare;
use edkd_data::{Dataset, Error, Manifest, OpenOptions, Reader, ReaderConfig};

fn prepared(dir: &Path) -> PathBuf {
    let tok = common::tokenizer(dir);
    let input = common::synth_jsonl(&dir.join("a.jsonl"), 150, 1);
    let out = dir.join("ds");
    prepare(&common::config(&[&input], &tok, &out)).unwrap();
    out
}

fn open(dir: &Path, verify: Verify) -> edkd_data::Result<Dataset> {
    let mut options = OpenOptions::new(TRAIN);
    options.verify = verify;
    Dataset::open(dir, &options)
}

/// Every batch of one epoch, or the first error.
fn read_epoch(ds: Dataset) -> edkd_data::Result<usize> {
    let cfg = ReaderConfig {
        max_tokens: 4096,
        bucket_window: 64,
        ..ReaderConfig::default()
    };
    let mut reader = Reader::new(ds, cfg, None)?;
    let mut rows = 0;
    while let Some(batch) = reader.try_next_batch()? {
        rows += batch.rows;
    }
    Ok(rows)
}

#[test]
fn a_wrong_manifest_sha256_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let mut manifest = Manifest::load(&out).unwrap();
    let shard = &mut manifest.splits.get_mut(TRAIN).unwrap().shards[1];
    let wrong = "0".repeat(64);
    let right = std::mem::replace(&mut shard.sha256, wrong.clone());
    std::fs::write(Manifest::path(&out), manifest.to_json()).unwrap();
    let err = open(&out, Verify::Full).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ShardChecksum { .. }), "{text}");
    assert!(text.contains("train/shard-00001.arrow"), "{text}");
    assert!(text.contains(&wrong) && text.contains(&right), "{text}");
}

/// Sets the highest byte of the first input token of global row `global_row` (found in the
/// file by its ids) to 0x7f: one flipped byte that makes the id far larger than any vocabulary.
fn flip_token_byte(ds: &Dataset, shard_file: &Path, global_row: u64) -> u32 {
    let ids = ds.example(global_row).input_ids;
    let needle: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let mut bytes = std::fs::read(shard_file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("row ids in the file");
    assert_eq!(
        bytes[at + 1..]
            .windows(needle.len())
            .filter(|w| *w == needle.as_slice())
            .count(),
        0,
        "the ids must be unique in the file"
    );
    bytes[at + 3] = 0x7f;
    std::fs::write(shard_file, &bytes).unwrap();
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn one_flipped_byte_is_caught_at_open_or_when_its_batch_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let clean = read_epoch(open(&out, Verify::Full).unwrap()).unwrap();
    assert_eq!(clean, 150);
    // Shard 1 holds global rows 64..128 (64 rows per shard); take its row 5.
    let ds = open(&out, Verify::Full).unwrap();
    let file = out.join("train/shard-00001.arrow");
    let value = flip_token_byte(&ds, &file, 64 + 5);
    drop(ds);
    let err = open(&out, Verify::Full).unwrap_err();
    assert!(matches!(err, Error::ShardChecksum { .. }), "{err}");
    // Without hashing, the bad id surfaces as the batch holding it is built.
    let err = read_epoch(open(&out, Verify::RowCounts).unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                row: 5,
                column: "input_ids",
                position: 0,
                vocab: common::TEST_VOCAB,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("train/shard-00001.arrow row 5"), "{text}");
    assert!(text.contains(&format!("input_ids[0] = {value}")), "{text}");
}

#[test]
fn a_smaller_vocabulary_limit_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let mut options = OpenOptions::new(TRAIN);
    // The special ids (0..4) fit under 10; the data's ids do not.
    options.vocab_limit = Some(10);
    let err = read_epoch(Dataset::open(&out, &options).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { vocab: 10, .. }),
        "{err}"
    );
    options.vocab_limit = Some(2);
    let err = Dataset::open(&out, &options).unwrap_err().to_string();
    assert!(
        err.contains("special_ids.eos = 2 is not below the vocabulary size 2"),
        "{err}"
    );
}
