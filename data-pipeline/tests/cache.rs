//! Teacher-logit cache: write, crash and resume, look up by id, align with a batch.

mod common;

use edkd_data::cache::{CacheEntry, CacheMeta, CacheReader, CacheWriter};
use edkd_data::{Batch, Error};

const K: usize = 4;

use common::fake_teacher as fake;

fn push(w: &mut CacheWriter, i: usize, positions: usize) {
    let (id, ids, lps, tail, gold) = fake(i, positions, K);
    w.push(&CacheEntry {
        id: &id,
        topk_ids: &ids,
        topk_logprobs: &lps,
        tail_logmass: &tail,
        gold_logprob: &gold,
    })
    .unwrap();
}

fn meta() -> CacheMeta {
    CacheMeta::new("test/teacher-1", &"c".repeat(64), K, 2.0)
}

#[test]
fn write_resume_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let mut w = CacheWriter::open(&dir, meta(), 5).unwrap();
    for i in 0..12 {
        push(&mut w, i, 1 + i % 4);
    }
    // Simulate a crash: two full shards are final, the 2 pending rows are lost.
    drop(w);
    std::fs::write(dir.join(".cache-00002.arrow.tmp"), b"half written").unwrap();
    let mut w = CacheWriter::open(&dir, meta(), 5).unwrap();
    assert_eq!(w.done_ids().len(), 10);
    assert!(w.is_done("ex-9") && !w.is_done("ex-10"));
    let err = CacheWriter::open(&dir, CacheMeta::new("other", &"c".repeat(64), K, 2.0), 5)
        .err()
        .unwrap();
    assert!(err.to_string().contains("other"), "{err}");
    for i in 10..23 {
        if !w.is_done(&format!("ex-{i}")) {
            push(&mut w, i, 1 + i % 4);
        }
    }
    // Duplicate ids are refused.
    let (id, ids, lps, tail, gold) = fake(3, 4, K);
    let dup = CacheEntry {
        id: &id,
        topk_ids: &ids,
        topk_logprobs: &lps,
        tail_logmass: &tail,
        gold_logprob: &gold,
    };
    assert!(w.push(&dup).is_err());
    assert_eq!(w.finish().unwrap(), 5);
    assert!(!dir.join(".cache-00002.arrow.tmp").exists());

    let r = CacheReader::open(&dir).unwrap();
    assert_eq!(r.len(), 23);
    assert_eq!(r.meta(), &meta());
    for i in 0..23 {
        let (id, ids, lps, tail, gold) = fake(i, 1 + i % 4, K);
        let row = r.get(&id).unwrap().unwrap();
        let e = row.entry();
        assert_eq!(
            (e.id, e.topk_ids, e.topk_logprobs),
            (id.as_str(), ids.as_slice(), lps.as_slice())
        );
        assert_eq!(
            (e.tail_logmass, e.gold_logprob),
            (tail.as_slice(), gold.as_slice())
        );
    }
    assert!(r.get("ex-999").unwrap().is_none());
    r.check_tokenizer(&"c".repeat(64)).unwrap();
    assert!(matches!(
        r.check_tokenizer(&"d".repeat(64)),
        Err(Error::TokenizerMismatch { .. })
    ));
}

#[test]
fn wrong_shapes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CacheWriter::open(tmp.path(), meta(), 5).unwrap();
    let err = w
        .push(&CacheEntry {
            id: "x",
            topk_ids: &[1, 2, 3],
            topk_logprobs: &[0.0; 3],
            tail_logmass: &[0.0],
            gold_logprob: &[0.0],
        })
        .unwrap_err();
    assert!(err.to_string().contains("positions * k"), "{err}");
}

#[test]
fn collate_aligns_with_decoder_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CacheWriter::open(tmp.path(), meta(), 100).unwrap();
    push(&mut w, 0, 3);
    push(&mut w, 1, 2);
    w.finish().unwrap();
    let r = CacheReader::open(tmp.path()).unwrap();
    // Targets of 2 and 1 tokens: decoder positions 3 and 2.
    let batch = Batch {
        rows: 2,
        ids: vec!["ex-0".into(), "ex-1".into()],
        dec_len: 3,
        decoder_mask: vec![true, true, true, true, true, false],
        ..Default::default()
    };
    let t = r.collate(&batch).unwrap();
    assert_eq!((t.rows, t.dec_len, t.k), (2, 3, K));
    let (_, ids1, lps1, tail1, _) = fake(1, 2, K);
    assert_eq!(
        &t.topk_ids[3 * K..5 * K],
        ids1.iter()
            .map(|&x| x as i64)
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert_eq!(&t.topk_logprobs[3 * K..5 * K], lps1.as_slice());
    assert_eq!(&t.tail_logmass[3..5], tail1.as_slice());
    assert_eq!(t.tail_logmass[5], f32::NEG_INFINITY);
    let mut short = batch.clone();
    short.decoder_mask = vec![true, true, false, true, true, false];
    assert!(
        r.collate(&short)
            .unwrap_err()
            .to_string()
            .contains("positions")
    );
}
