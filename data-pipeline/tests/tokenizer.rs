//! Byte-level BPE training: fixed special ids, determinism, round trips.

use edkd_data::synth::{self, Split};
use edkd_data::tokenizer::{SPECIALS, Tokenizer, train_bpe};

fn texts() -> Vec<String> {
    synth::generate("mix", Split::Train, 5, 40)
        .unwrap()
        .into_iter()
        .flat_map(|e| [e.input, e.target])
        .collect()
}

#[test]
fn training_is_deterministic_with_fixed_specials() {
    let a = train_bpe(texts().into_iter(), 500, 2).unwrap();
    let b = train_bpe(texts().into_iter(), 500, 2).unwrap();
    assert_eq!(a, b);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, &a).unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    for (i, s) in SPECIALS.iter().enumerate() {
        assert_eq!(tok.inner.token_to_id(s), Some(i as u32));
    }
    assert_eq!(tok.inner.get_vocab_size(true), 500);
    let text = "Record:\namber-falcon = 417\nQuestion: what is ünïcode? 🙂";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.iter().all(|&id| id > 3),
        "no specials or unk in byte-level output"
    );
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let sample = &texts()[0];
    let n = tok.encode(sample).unwrap().len();
    assert!(
        n < sample.len() / 2,
        "merges should compress: {n} ids for {} bytes",
        sample.len()
    );
}

#[test]
fn too_small_vocab_is_refused() {
    let err = train_bpe(texts().into_iter(), 100, 2).unwrap_err();
    assert!(err.to_string().contains("--vocab-size 100"), "{err}");
}
