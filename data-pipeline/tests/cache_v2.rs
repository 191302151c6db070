//! Cache format version 2 (packed rows, optional zstd) next to version 1: write, resume,
//! read back within the packing's bounds, collate, refuse what does not fit; and a version-1
//! shard written by pyarrow still reads.

mod common;

use std::path::Path;

use edkd_data::Batch;
use edkd_data::cache::{CacheEntry, CacheMeta, CacheReader, CacheWriter, Layout};
use std::sync::Arc;

use edkd_data::packing::{IdCoding, IdOrder, PACKINGS, Packing};

const K: usize = 4;
const VOCAB: usize = 400;

fn meta() -> CacheMeta {
    CacheMeta::new("test/teacher-2", &"c".repeat(64), K, 1.0)
}

fn push(w: &mut CacheWriter, i: usize, positions: usize) {
    let (id, ids, lps, tail, gold) = common::fake_teacher(i, positions, K);
    w.push(&CacheEntry {
        id: &id,
        topk_ids: &ids,
        topk_logprobs: &lps,
        tail_logmass: &tail,
        gold_logprob: &gold,
    })
    .unwrap();
}

fn write(dir: &Path, meta: CacheMeta, n: usize) {
    let mut w = CacheWriter::open(dir, meta, 4).unwrap();
    for i in 0..n {
        push(&mut w, i, 1 + i % 3);
    }
    w.finish().unwrap();
}

#[test]
fn packed_caches_read_back_within_the_packing_bounds() {
    for packing in PACKINGS {
        for zstd in [None, Some(3)] {
            let tmp = tempfile::tempdir().unwrap();
            let mut m = meta().packed(packing, VOCAB, zstd);
            // A freq cache's order, calibrated on its first examples.
            let order = packing.needs_order().then(|| {
                let calib: Vec<Vec<u32>> =
                    (0..4).map(|i| common::fake_teacher(i, 2, K).1).collect();
                IdOrder::from_rows(VOCAB, calib.iter().flat_map(|ids| ids.chunks(K))).unwrap()
            });
            if let Some(o) = &order {
                m = m.with_id_order(o);
            }
            write(tmp.path(), m.clone(), 10);
            let r = CacheReader::open(tmp.path()).unwrap();
            assert_eq!(r.meta(), &m);
            assert_eq!(
                r.layout(),
                &Layout::V2 {
                    packing,
                    vocab: VOCAB,
                    zstd_level: zstd,
                    order: order.map(Arc::new),
                }
            );
            assert_eq!(r.verify().unwrap(), 10);
            for i in 0..10 {
                let (id, ids, lps, tail, _) = common::fake_teacher(i, 1 + i % 3, K);
                let row = r.get(&id).unwrap().unwrap();
                let e = row.entry();
                assert_eq!(e.id, id);
                assert_eq!(e.positions(), 1 + i % 3);
                for p in 0..e.positions() {
                    let row_ids = &ids[p * K..(p + 1) * K];
                    let top = half::f16::from_f32(lps[p * K]).to_f32();
                    for j in 0..K {
                        let id = e.topk_ids[p * K + j];
                        let at = row_ids.iter().position(|&x| x == id).unwrap();
                        if packing.ids == IdCoding::Bits {
                            assert_eq!(at, j, "rank order kept");
                        }
                        // The bound of the code domain r = (p / p_top)^(1/3).
                        let r_true = ((lps[p * K + at] - top).min(0.0) / 3.0).exp();
                        let r_got = ((e.topk_logprobs[p * K + j] - top) / 3.0).exp();
                        assert!((r_true - r_got).abs() <= packing.r_error_bound() + 1e-6);
                    }
                    assert!((e.tail_logmass[p] - tail[p]).abs() <= 2e-3);
                }
            }
            let stats = r.stats().unwrap();
            assert_eq!(stats.positions, (0..10).map(|i| 1 + i % 3).sum::<usize>());
            assert!(
                stats.stored_per_position() < (K * 8 + 8) as f64,
                "{stats:?}"
            );
            let text = r.describe(2).unwrap();
            assert!(
                text.contains(&format!("packed {}", packing.name())),
                "{text}"
            );
            assert!(text.contains("format version 2"), "{text}");
        }
    }
}

#[test]
fn packed_cache_resumes_and_collates() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta().packed(Packing::new(IdCoding::Delta, 8), VOCAB, Some(1));
    let mut w = CacheWriter::open(tmp.path(), m.clone(), 2).unwrap();
    push(&mut w, 0, 3);
    push(&mut w, 1, 2);
    push(&mut w, 2, 2); // pending, lost in the "crash"
    drop(w);
    let mut w = CacheWriter::open(tmp.path(), m.clone(), 2).unwrap();
    assert!(w.is_done("ex-1") && !w.is_done("ex-2"));
    // Another packing of the same teacher is another cache.
    let other = meta().packed(Packing::new(IdCoding::Bits, 8), VOCAB, Some(1));
    let e = CacheWriter::open(tmp.path(), other, 2).err().unwrap();
    assert!(e.to_string().contains("bits-q8"), "{e}");
    push(&mut w, 2, 2);
    w.finish().unwrap();
    let r = CacheReader::open(tmp.path()).unwrap();
    let batch = Batch {
        rows: 2,
        ids: vec!["ex-0".into(), "ex-1".into()],
        dec_len: 3,
        decoder_mask: vec![true, true, true, true, true, false],
        ..Default::default()
    };
    let t = r.collate(&batch).unwrap();
    let (_, ids1, _, _, _) = common::fake_teacher(1, 2, K);
    let mut got: Vec<i64> = t.topk_ids[3 * K..4 * K].to_vec();
    got.sort_unstable();
    let mut want: Vec<i64> = ids1[..K].iter().map(|&x| x as i64).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(t.tail_logmass[5], f32::NEG_INFINITY, "padding");
}

#[test]
fn bad_packed_caches_are_refused_naming_the_problem() {
    // An id that does not fit the vocabulary the cache was opened for.
    let tmp = tempfile::tempdir().unwrap();
    let m = meta().packed(Packing::new(IdCoding::Bits, 4), 100, None);
    let mut w = CacheWriter::open(tmp.path(), m, 4).unwrap();
    let (id, ids, lps, tail, gold) = common::fake_teacher(20, 1, K);
    let e = w
        .push(&CacheEntry {
            id: &id,
            topk_ids: &ids,
            topk_logprobs: &lps,
            tail_logmass: &tail,
            gold_logprob: &gold,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("example `ex-20`: topk_ids[0][0]"), "{e}");
    assert!(
        e.contains("not below the vocabulary size 100 (7 id bits)"),
        "{e}"
    );

    // A packing this build does not know, and a newer format version.
    let mut newer = meta().packed(Packing::new(IdCoding::Bits, 8), VOCAB, None);
    newer.packing = Some("ans-q3".into());
    let e = CacheWriter::open(tmp.path(), newer, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown `ans-q3`"), "{e}");
    // A freq packing without the order its rows need.
    let orderless = meta().packed(Packing::new(IdCoding::Freq, 6).rice(), VOCAB, None);
    let e = CacheWriter::open(tmp.path(), orderless, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("packing freq-e6 without the `id_order` its rows need"),
        "{e}"
    );
    let mut newer = meta();
    newer.format_version = 3;
    let e = CacheWriter::open(tmp.path(), newer, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("format_version 3 is newer than this build reads"),
        "{e}"
    );
}

#[test]
fn a_corrupt_packed_row_names_its_example() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        meta().packed(Packing::new(IdCoding::Bits, 8), VOCAB, None),
        1,
    );
    // Flip the packing byte of the only row (the packed header's first byte follows the
    // 8-byte header check; 0xee is no packing).
    let path = tmp.path().join("cache-00000.arrow");
    let mut bytes = std::fs::read(&path).unwrap();
    let (_, ids, ..) = common::fake_teacher(0, 1, K);
    let mut header = vec![Packing::new(IdCoding::Bits, 8).code(), 9];
    header.extend_from_slice(&(K as u16).to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    let at = bytes
        .windows(header.len())
        .position(|w| w == header.as_slice())
        .expect("packed row in the file");
    bytes[at] = 0xee;
    std::fs::write(&path, bytes).unwrap();
    let r = CacheReader::open(tmp.path()).unwrap();
    let e = r.get("ex-0").unwrap_err().to_string();
    assert!(e.contains("example `ex-0`"), "{e}");
    assert!(e.contains("unknown packing number 238"), "{e}");
    assert!(!ids.is_empty());
}

#[test]
fn version_1_shards_written_by_pyarrow_still_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cache-v1");
    let r = CacheReader::open(&dir).unwrap();
    assert_eq!(r.meta().format_version, 1);
    assert_eq!(r.layout(), &Layout::V1);
    assert_eq!((r.len(), r.meta().k), (3, 3));
    for i in 0..3usize {
        let positions = i + 1;
        let ids: Vec<u32> = (0..positions * 3)
            .map(|j| ((i * 5 + j) % 50) as u32)
            .collect();
        let lps: Vec<f32> = (0..positions * 3)
            .map(|j| -((j % 3) as f32) * 0.5 - 0.1 * i as f32)
            .collect();
        let row = r.get(&format!("v1-{i}")).unwrap().unwrap();
        let e = row.entry();
        assert_eq!(e.topk_ids, ids.as_slice());
        assert_eq!(e.topk_logprobs, lps.as_slice());
        assert_eq!(e.tail_logmass[i], -2.0 - i as f32);
    }
    assert!(r.describe(1).unwrap().contains("u32 ids, f32 log-probs"));
}
