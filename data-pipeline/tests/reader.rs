//! The reader: every example exactly once per epoch across ranks, exact resume (also with
//! another world size), batch layout and the token budget.

mod common;

use std::path::{Path, PathBuf};

use edkd_data::manifest::{TRAIN, Verify};
use edkd_data::prepare::prepare;
use edkd_data::{Cursor, Dataset, IGNORE_INDEX, OpenOptions, Reader, ReaderConfig};

const N: u64 = 203;

fn dataset_dir(tmp: &Path) -> PathBuf {
    dataset_dir_limited(tmp, Some(120))
}

fn dataset_dir_limited(tmp: &Path, max_input_tokens: Option<usize>) -> PathBuf {
    let tok = common::tokenizer(tmp);
    let input = common::synth_jsonl(&tmp.join("a.jsonl"), N as usize, 5);
    let out = tmp.join("ds");
    let mut cfg = common::config(&[&input], &tok, &out);
    cfg.shard_rows = 50;
    cfg.max_input_tokens = max_input_tokens;
    prepare(&cfg).unwrap();
    out
}

fn open(dir: &Path) -> Dataset {
    let mut options = OpenOptions::new(TRAIN);
    options.verify = Verify::RowCounts;
    Dataset::open(dir, &options).unwrap()
}

fn config(rank: usize, world: usize) -> ReaderConfig {
    ReaderConfig {
        rank,
        world,
        seed: 11,
        max_tokens: 1200,
        max_rows: 0,
        bucket_window: 37,
        bucket_by_length: true,
        shuffle: true,
        teacher: false,
    }
}

fn readers(dir: &Path, world: usize, cursor: Option<Cursor>) -> Vec<Reader> {
    (0..world)
        .map(|r| Reader::new(open(dir), config(r, world), cursor.clone()).unwrap())
        .collect()
}

/// Steps all ranks together until the epoch ends (or `max_steps`); returns per step the
/// indices of each rank, and checks that ranks agree on the cursor and the epoch end.
fn run(readers: &mut [Reader], max_steps: usize) -> Vec<Vec<Vec<u64>>> {
    let mut steps = Vec::new();
    while steps.len() < max_steps {
        let got: Vec<Option<Vec<u64>>> = readers.iter_mut().map(|r| r.next_indices()).collect();
        assert!(
            got.iter().all(Option::is_some) || got.iter().all(Option::is_none),
            "ranks disagree about the end of the epoch"
        );
        let cursors: Vec<&Cursor> = readers.iter().map(|r| r.cursor()).collect();
        assert!(
            cursors.windows(2).all(|w| w[0] == w[1]),
            "cursors differ across ranks"
        );
        if got[0].is_none() {
            break;
        }
        steps.push(got.into_iter().map(Option::unwrap).collect());
    }
    steps
}

fn flatten(steps: &[Vec<Vec<u64>>]) -> Vec<u64> {
    steps.iter().flatten().flatten().copied().collect()
}

fn assert_exactly_once(mut seen: Vec<u64>) {
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
}

#[test]
fn every_example_once_per_epoch_for_1_to_4_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dataset_dir(tmp.path());
    let mut reference: Option<Vec<u64>> = None;
    for world in 1..=4 {
        let mut rs = readers(&dir, world, None);
        let epoch0 = run(&mut rs, usize::MAX);
        assert!(epoch0.len() > 5, "want many steps, got {}", epoch0.len());
        // Non-final steps give every rank a batch; ranks' batches are disjoint.
        for step in &epoch0[..epoch0.len() - 1] {
            assert!(step.iter().all(|b| !b.is_empty()));
        }
        let order = flatten(&epoch0);
        assert_exactly_once(order.clone());
        // The global order does not depend on the world size.
        match &reference {
            None => reference = Some(order),
            Some(r) => assert_eq!(&order, r, "world {world} changes the global order"),
        }
        assert!(rs.iter().all(|r| r.epoch() == 1));
        let epoch1 = run(&mut rs, usize::MAX);
        let order1 = flatten(&epoch1);
        assert_exactly_once(order1.clone());
        assert_ne!(
            &order1,
            reference.as_ref().unwrap(),
            "epochs should reshuffle"
        );
    }
}

#[test]
fn resume_continues_exactly_with_same_and_other_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dataset_dir(tmp.path());
    let full = run(&mut readers(&dir, 2, None), usize::MAX);

    let mut first = readers(&dir, 2, None);
    let head = run(&mut first, 4);
    let saved = serde_json::to_string(first[0].cursor()).unwrap();
    let cursor: Cursor = serde_json::from_str(&saved).unwrap();
    assert!(cursor.examples_done > 0 && cursor.examples_done < N);
    assert_eq!(cursor.examples_done as usize, flatten(&head).len());

    // Same world size: the very same batches as the uninterrupted run.
    let tail = run(&mut readers(&dir, 2, Some(cursor.clone())), usize::MAX);
    assert_eq!([head.clone(), tail].concat(), full);

    // Other world sizes: the same global order, no gap, no repeat.
    for world in [1, 3, 4] {
        let tail = run(&mut readers(&dir, world, Some(cursor.clone())), usize::MAX);
        let order = [flatten(&head), flatten(&tail)].concat();
        assert_eq!(order, flatten(&full), "world {world}");
    }
}

#[test]
fn cursor_from_another_layout_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dataset_dir(tmp.path());
    let mut r = Reader::new(open(&dir), config(0, 1), None).unwrap();
    r.next_indices();
    let mut other = config(0, 1);
    other.seed = 12;
    let err = Reader::new(open(&dir), other, Some(r.cursor().clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cursor layout"), "{err}");
}

#[test]
fn batches_follow_the_layout_and_the_token_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dataset_dir(tmp.path());
    let ds = open(&dir);
    let specials = ds.manifest.tokenizer.special_ids;
    let mut cfg = config(0, 1);
    cfg.teacher = true;
    let mut reader = Reader::new(ds, cfg.clone(), None).unwrap();
    let mut batches = 0;
    while let Some(b) = reader.next_batch() {
        batches += 1;
        assert!(b.rows == 1 || b.rows * (b.enc_len + b.dec_len) <= cfg.max_tokens);
        for r in 0..b.rows {
            let e = reader.dataset().example(b.indices[r]);
            assert_eq!(b.ids[r], e.id);
            let (n, t) = (e.input_ids.len(), e.target_ids.len());
            let enc = &b.encoder_ids[r * b.enc_len..(r + 1) * b.enc_len];
            let enc_mask = &b.encoder_mask[r * b.enc_len..(r + 1) * b.enc_len];
            assert!(
                enc[..n]
                    .iter()
                    .zip(e.input_ids)
                    .all(|(&a, &b)| a == b as i64)
            );
            assert!(enc[n..].iter().all(|&x| x == specials.pad as i64));
            assert_eq!(enc_mask.iter().filter(|&&m| m).count(), n);
            assert!(enc_mask[..n].iter().all(|&m| m));

            let dec = &b.decoder_input_ids[r * b.dec_len..(r + 1) * b.dec_len];
            let lab = &b.labels[r * b.dec_len..(r + 1) * b.dec_len];
            assert_eq!(dec[0], specials.bos as i64);
            for i in 0..t {
                assert_eq!(dec[i + 1], e.target_ids[i] as i64);
                assert_eq!(lab[i], e.target_ids[i] as i64);
            }
            assert_eq!(lab[t], specials.eos as i64);
            assert!(lab[t + 1..].iter().all(|&x| x == IGNORE_INDEX));
            assert!(dec[t + 1..].iter().all(|&x| x == specials.pad as i64));

            let tea = &b.teacher_ids[r * b.teacher_len..(r + 1) * b.teacher_len];
            assert_eq!(b.target_start[r], n as i64);
            let joined: Vec<i64> = e
                .input_ids
                .iter()
                .chain(e.target_ids)
                .map(|&x| x as i64)
                .collect();
            assert_eq!(&tea[..n + t], joined.as_slice());
            let tmask = &b.teacher_mask[r * b.teacher_len..(r + 1) * b.teacher_len];
            assert_eq!(tmask.iter().filter(|&&m| m).count(), n + t);
        }
        assert_eq!(
            b.real_tokens(),
            (0..b.rows)
                .map(|r| {
                    let e = reader.dataset().example(b.indices[r]);
                    e.input_ids.len() + e.target_ids.len()
                })
                .sum::<usize>()
        );
    }
    assert!(batches > 5);
}

#[test]
fn bucketing_reduces_padding() {
    let tmp = tempfile::tempdir().unwrap();
    // Untruncated inputs, so lengths vary.
    let dir = dataset_dir_limited(tmp.path(), None);
    let padded = |bucket: bool| -> (usize, usize) {
        let mut cfg = config(0, 1);
        cfg.bucket_window = 64;
        cfg.bucket_by_length = bucket;
        cfg.max_tokens = 4000;
        let mut reader = Reader::new(open(&dir), cfg, None).unwrap();
        let (mut padded, mut real) = (0, 0);
        while let Some(b) = reader.next_batch() {
            padded += b.rows * (b.enc_len + b.dec_len);
            real += b.real_tokens() + b.rows;
        }
        (padded, real)
    };
    let (bucketed, real_a) = padded(true);
    let (unbucketed, real_b) = padded(false);
    assert_eq!(real_a, real_b);
    assert!(
        bucketed < unbucketed,
        "bucketed {bucketed} vs plain {unbucketed}"
    );
}

#[test]
fn unshuffled_reader_keeps_every_example_and_max_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dataset_dir(tmp.path());
    let mut cfg = config(0, 1);
    cfg.shuffle = false;
    cfg.max_rows = 3;
    cfg.max_tokens = 1_000_000;
    let mut reader = Reader::new(open(&dir), cfg, None).unwrap();
    let mut seen = Vec::new();
    while let Some(ix) = reader.next_indices() {
        assert!(ix.len() <= 3);
        seen.extend(ix);
    }
    assert_exactly_once(seen);
}
