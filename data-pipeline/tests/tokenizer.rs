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

/// A word-level tokenizer.json whose vocabulary spells the Phi-3.5 / Mu special tokens at
/// their real ids (`</s>` 2 is not the eos there; `<|endoftext|>` 32000 is).
fn phi_like_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    let vocab = serde_json::json!({
        "<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "<|endoftext|>": 32000
    });
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn declared_special_tokens_win_over_name_guesses() {
    let tmp = tempfile::tempdir().unwrap();
    let path = phi_like_tokenizer(tmp.path());
    // No declaration: the name lists pick `</s>` (2) and fall back to it for pad.
    let guessed = Tokenizer::load(&path).unwrap().specials;
    assert_eq!((guessed.bos, guessed.eos, guessed.pad), (1, 2, 2));
    // artifacts/models/mu_vision/tokenizer_config.json of the reference: eos
    // `<|endoftext|>`, pad `<unk>`; special_tokens_map.json spells eos as an object.
    let config = serde_json::json!({
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<unk>",
        "unk_token": "<unk>"
    });
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let map = serde_json::json!({"eos_token": {"content": "<|endoftext|>", "lstrip": false}});
    std::fs::write(tmp.path().join("special_tokens_map.json"), map.to_string()).unwrap();
    let s = Tokenizer::load(&path).unwrap().specials;
    assert_eq!((s.bos, s.eos, s.pad, s.unk), (1, 32000, 0, Some(0)));
    // Files that disagree, or a declared token the vocabulary lacks, are named.
    let map = serde_json::json!({"eos_token": "</s>"});
    std::fs::write(tmp.path().join("special_tokens_map.json"), map.to_string()).unwrap();
    let err = Tokenizer::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("eos_token") && err.contains("special_tokens_map.json"),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("special_tokens_map.json")).unwrap();
    let config = serde_json::json!({"eos_token": "<|end|>"});
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let err = Tokenizer::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("<|end|>") && err.contains("tokenizer_config.json"),
        "{err}"
    );
}
