use super::*;
use crate::rng::Rng;

const VOCAB: usize = 49152;

/// Teacher-like rows: a Zipf-shaped softmax over `vocab`, its top k sorted descending,
/// the tail from the rest; the last position of each row has k beyond the support
/// (log-probs of -inf), as a teacher with a tiny vocabulary would send.
fn rows(positions: usize, k: usize, vocab: usize, seed: u64) -> Targets {
    let mut rng = Rng::new(seed);
    let mut t = Targets {
        k,
        ..Targets::default()
    };
    for p in 0..positions {
        let ids = rng.sample(vocab, k);
        let scale = 0.5 + (rng.below(100) as f32) / 40.0;
        let mut lps: Vec<f32> = (0..k)
            .map(|j| -scale * ((j + 1) as f32).ln() - 0.1 * rng.below(10) as f32)
            .collect();
        lps.sort_by(|a, b| b.total_cmp(a));
        let norm = (lps.iter().map(|v| v.exp()).sum::<f32>() / 0.9).ln();
        lps.iter_mut().for_each(|v| *v -= norm);
        if p == positions - 1 {
            lps[k.div_ceil(2)..]
                .iter_mut()
                .for_each(|v| *v = f32::NEG_INFINITY);
        }
        t.topk_ids.extend(ids.iter().map(|&i| i as u32));
        t.topk_logprobs.extend(lps);
        t.tail_logmass.push(if p == 0 {
            f32::NEG_INFINITY
        } else {
            0.1f32.ln()
        });
        t.gold_logprob.push(-1e6 + p as f32);
    }
    t
}

/// The order of `t`'s own ids (what a cache calibrated on these rows would hold).
fn order_of(t: &Targets, vocab: usize) -> IdOrder {
    IdOrder::from_rows(vocab, t.topk_ids.chunks(t.k)).unwrap()
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Checks a decoded row against the original within the packing's bounds.
fn assert_within_bounds(orig: &Targets, back: &Targets, packing: Packing) {
    let k = orig.k;
    assert_eq!(back.positions(), orig.positions());
    let bound = packing.r_error_bound() + 1e-6;
    for p in 0..orig.positions() {
        let ids = &orig.topk_ids[p * k..(p + 1) * k];
        let lps = &orig.topk_logprobs[p * k..(p + 1) * k];
        let got_ids = &back.topk_ids[p * k..(p + 1) * k];
        let got = &back.topk_logprobs[p * k..(p + 1) * k];
        match packing.ids {
            IdCoding::Bits => assert_eq!(got_ids, ids, "{packing:?}: rank order kept"),
            IdCoding::Delta | IdCoding::Freq => {
                let (mut a, mut b) = (ids.to_vec(), got_ids.to_vec());
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "{packing:?}: same id set");
            }
        }
        assert!(
            got.windows(2).all(|w| w[0] >= w[1]),
            "{packing:?}: sorted descending"
        );
        let top = f16_round(lps[0]);
        assert_eq!(got[0], top, "{packing:?}: top is its f16");
        for (j, &id) in got_ids.iter().enumerate() {
            let i = ids.iter().position(|&x| x == id).expect("id present");
            assert!(got[j].is_finite());
            let r_true = ((lps[i] - top).min(0.0) / VALUE_ROOT).exp();
            let r_got = ((got[j] - top) / VALUE_ROOT).exp();
            assert!(
                (r_true - r_got).abs() <= bound,
                "{packing:?} p {p} id {id}: r {r_true} decoded {r_got}, bound {bound}"
            );
        }
        let tail = f16_round(orig.tail_logmass[p]);
        assert_eq!(back.tail_logmass[p], tail, "tail is its f16 (-inf kept)");
        assert_eq!(back.gold_logprob[p], f16::MIN.to_f32(), "gold floored");
    }
}

#[test]
fn every_packing_round_trips_within_its_quantisation_step() {
    for packing in PACKINGS {
        for (k, vocab) in [(1, 2), (16, VOCAB), (64, VOCAB), (128, VOCAB), (7, 300_000)] {
            let t = rows(5, k, vocab, k as u64);
            // Calibrated on other rows: most of these ids are outside its leading part.
            let order = order_of(&rows(3, k, vocab, 99), vocab);
            let o = Some(&order);
            let bytes = pack(&t.as_ref(), packing, vocab, o).unwrap();
            assert!(bytes.len() <= packing.max_bytes(5, k, vocab));
            if packing.ids == IdCoding::Bits && !packing.rice_codes {
                assert_eq!(bytes.len(), packing.max_bytes(5, k, vocab), "{packing:?}");
            }
            let back = unpack(&bytes, packing, vocab, k, o).unwrap();
            assert_within_bounds(&t, &back, packing);
            // Packing what was decoded changes nothing: the codes are fixed points.
            let again = pack(&back.as_ref(), packing, vocab, o).unwrap();
            assert_eq!(
                unpack(&again, packing, vocab, k, o).unwrap(),
                back,
                "{packing:?}"
            );
        }
    }
}

#[test]
fn sizes_per_position_match_the_design() {
    let t = rows(40, 64, VOCAB, 1);
    let per_token = |p: Packing| pack(&t.as_ref(), p, VOCAB, None).unwrap().len() as f64 / 40.0;
    let bits_q8 = per_token(Packing::new(IdCoding::Bits, 8));
    // 64 x 16-bit ids, 63 x 8-bit codes, 3 x f16, header amortised.
    assert!(
        (bits_q8 - (128.0 + 63.0 + 6.0 + 8.0 / 40.0)).abs() < 0.5,
        "{bits_q8}"
    );
    let delta_q8 = per_token(Packing::new(IdCoding::Delta, 8));
    // Random ids: gaps near 768, about log2(768) + 1.5 = 11.1 bits an id.
    assert!(delta_q8 < 64.0 * 12.0 / 8.0 + 64.0 + 7.0, "{delta_q8}");
    assert!(delta_q8 > 64.0 * 10.5 / 8.0 + 64.0, "{delta_q8}");
    // Same codes entropy-coded: Zipf-like rows put most codes near the bottom of r.
    let delta_e8 = per_token(Packing::new(IdCoding::Delta, 8).rice());
    assert!(delta_e8 < delta_q8 - 4.0, "{delta_e8} vs {delta_q8}");
}

#[test]
fn freq_ranks_are_denser_than_ids_on_a_skewed_vocabulary() {
    // Rows drawing most ids from 500 scattered popular tokens, as a domain's rows do.
    let mut rng = Rng::new(5);
    let popular: Vec<u32> = rng.sample(VOCAB, 500).iter().map(|&i| i as u32).collect();
    let mut t = rows(60, 64, VOCAB, 5);
    for row in t.topk_ids.chunks_mut(64) {
        let picks = rng.sample(popular.len(), 56);
        for (slot, &j) in row.iter_mut().zip(&picks) {
            *slot = popular[j];
        }
        let mut seen = std::collections::HashSet::new();
        for slot in row.iter_mut() {
            while !seen.insert(*slot) {
                *slot = rng.below(VOCAB) as u32;
            }
        }
    }
    let (calib, rest) = t.topk_ids.split_at(20 * 64);
    let order = IdOrder::from_rows(VOCAB, calib.chunks(64)).unwrap();
    let test = Targets {
        k: 64,
        topk_ids: rest.to_vec(),
        topk_logprobs: t.topk_logprobs[20 * 64..].to_vec(),
        tail_logmass: t.tail_logmass[20..].to_vec(),
        gold_logprob: t.gold_logprob[20..].to_vec(),
    };
    let freq8 = Packing::new(IdCoding::Freq, 8);
    let size = |p: Packing| pack(&test.as_ref(), p, VOCAB, Some(&order)).unwrap().len();
    let (delta, freq) = (size(Packing::new(IdCoding::Delta, 8)), size(freq8));
    // 56 of 64 ids among 500 ranks: gaps near 9 instead of 768 (the other 8 escape).
    assert!(
        (freq as f64) < delta as f64 * 0.85,
        "freq {freq} B vs delta {delta} B"
    );
    let bytes = pack(&test.as_ref(), freq8, VOCAB, Some(&order)).unwrap();
    let back = unpack(&bytes, freq8, VOCAB, 64, Some(&order)).unwrap();
    assert_within_bounds(&test, &back, freq8);
}

#[test]
fn freq_rows_need_the_order_they_were_packed_with() {
    let t = rows(4, 16, VOCAB, 7);
    let p = Packing::new(IdCoding::Freq, 6).rice();
    let e = pack(&t.as_ref(), p, VOCAB, None).unwrap_err();
    assert_eq!(e.field, "id_order");
    assert!(e.message.contains("freq-e6 rows need an id order"), "{e}");
    let order = order_of(&t, VOCAB);
    let bytes = pack(&t.as_ref(), p, VOCAB, Some(&order)).unwrap();
    let small = order_of(&rows(2, 16, 1000, 7), 1000);
    let e = unpack(&bytes, p, VOCAB, 16, Some(&small)).unwrap_err();
    assert!(
        e.message
            .contains("orders 1000 ids, but the vocabulary size is 49152"),
        "{e}"
    );
    // A different order reads other ids: the stored order must travel with the rows.
    let other = order_of(&rows(4, 16, VOCAB, 8), VOCAB);
    let right = unpack(&bytes, p, VOCAB, 16, Some(&order)).unwrap();
    let wrong = unpack(&bytes, p, VOCAB, 16, Some(&other)).unwrap();
    assert_ne!(wrong.topk_ids, right.topk_ids);
    // The stored part alone rebuilds the order.
    assert_eq!(
        IdOrder::from_leading(VOCAB, order.leading()).unwrap(),
        order
    );
    let mut distinct = t.topk_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(order.leading().len(), distinct.len());
    let e = IdOrder::from_leading(VOCAB, &[3, 9, 3]).unwrap_err();
    assert_eq!(e.field, "id_order[2]");
    assert!(e.message.contains("repeats id 3"), "{e}");
    let e = IdOrder::from_leading(100, &[3, 100]).unwrap_err();
    assert!(
        e.message
            .contains("100 is not below the vocabulary size 100"),
        "{e}"
    );
}

#[test]
fn names_and_numbers_are_stable() {
    let names: Vec<String> = PACKINGS.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "bits-q8", "bits-q4", "delta-q8", "delta-q4", "bits-q6", "delta-q6", "delta-q5",
            "delta-e8", "delta-e6", "delta-e5", "freq-q8", "freq-q6", "freq-q4", "freq-e8",
            "freq-e6", "freq-e5"
        ]
    );
    for (i, p) in PACKINGS.iter().enumerate() {
        assert_eq!(p.code() as usize, i + 1);
        assert_eq!(Packing::from_code(i as i32 + 1), Some(*p));
        assert_eq!(Packing::from_name(&p.name()).unwrap(), *p);
    }
    assert_eq!(Packing::from_code(0), None);
    assert_eq!(Packing::from_code(17), None);
    let e = Packing::from_name("zip-q2").unwrap_err();
    assert!(e.to_string().contains("unknown `zip-q2`"), "{e}");
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let p = Packing::new(IdCoding::Bits, 8);
    let mut t = rows(3, 4, 1000, 2);
    t.topk_ids[5] = 1000;
    let e = pack(&t.as_ref(), p, 1000, None).unwrap_err();
    assert_eq!(e.field, "topk_ids[1][1]");
    assert!(
        e.message
            .contains("1000 is not below the vocabulary size 1000 (10 id bits)"),
        "{e}"
    );
    let mut t = rows(3, 4, 1000, 2);
    t.topk_logprobs[2] = f32::NAN;
    assert_eq!(
        pack(&t.as_ref(), p, 1000, None).unwrap_err().field,
        "topk_logprobs[0][2]"
    );
    let mut t = rows(3, 4, 1000, 2);
    t.topk_logprobs.swap(0, 1);
    let e = pack(&t.as_ref(), p, 1000, None).unwrap_err();
    assert!(e.message.contains("not sorted"), "{e}");
    let mut t = rows(3, 4, 1000, 2);
    t.gold_logprob.pop();
    assert_eq!(
        pack(&t.as_ref(), p, 1000, None).unwrap_err().field,
        "gold_logprob"
    );
    let mut t = rows(3, 4, 1000, 2);
    t.topk_ids[1] = t.topk_ids[0];
    let d = Packing::new(IdCoding::Delta, 4);
    let e = pack(&t.as_ref(), d, 1000, None).unwrap_err();
    assert!(e.message.contains("twice"), "{e}");
}

#[test]
fn corrupt_rows_are_errors_not_garbage() {
    for packing in PACKINGS {
        let t = rows(4, 16, VOCAB, 3);
        let order = order_of(&t, VOCAB);
        let bytes = pack(&t.as_ref(), packing, VOCAB, Some(&order)).unwrap();
        let small = order_of(&rows(1, 16, 1000, 3), 1000);
        let msg = |b: &[u8], vocab: usize, k: usize| {
            let o = if vocab == VOCAB { &order } else { &small };
            unpack(b, packing, vocab, k, Some(o))
                .unwrap_err()
                .to_string()
        };
        assert!(msg(&bytes[..bytes.len() - 1], VOCAB, 16).contains("corrupt row"));
        let mut long = bytes.clone();
        long.push(0);
        assert!(msg(&long, VOCAB, 16).contains("corrupt row"), "{packing:?}");
        assert!(msg(&bytes[..5], VOCAB, 16).contains("shorter than the 8-byte header"));
        assert!(
            msg(&bytes, 1000, 16)
                .contains("ids take 16 bits, but the vocabulary size 1000 needs 10"),
            "{packing:?}"
        );
        assert!(msg(&bytes, VOCAB, 32).contains("row has k 16, expected 32"));
        let mut newer = bytes.clone();
        newer[0] = 200;
        assert!(msg(&newer, VOCAB, 16).contains("unknown packing number 200"));
        let other = PACKINGS[(packing.code() as usize) % PACKINGS.len()];
        let e = unpack(&bytes, other, VOCAB, 16, Some(&order))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("packed as {}", packing.name())), "{e}");
    }
}

#[test]
fn out_of_vocabulary_ids_in_a_row_are_caught() {
    // A 10-bit row claiming a vocabulary of 600: id 900 fits the width, not the vocabulary.
    let p = Packing::new(IdCoding::Bits, 8);
    let t = Targets {
        k: 2,
        topk_ids: vec![900, 3],
        topk_logprobs: vec![-0.5, -1.5],
        tail_logmass: vec![-2.0],
        gold_logprob: vec![-0.5],
    };
    let bytes = pack(&t.as_ref(), p, 1000, None).unwrap();
    let e = unpack(&bytes, p, 600, 2, None).unwrap_err().to_string();
    assert!(
        e.contains("id 900 at position 0 is not below the vocabulary size 600"),
        "{e}"
    );
}
