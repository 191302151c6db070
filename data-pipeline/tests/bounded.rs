//! Windowed tokenisation of long texts gives exactly the whole-text ids, truncated from
//! either end, for the byte-level BPE tokenizer edkd trains, for a Metaspace BPE (the
//! fixture teachers' Llama-style tokenizer), and for a Llama-2-style one whose normalizer
//! prepends `▁` and whose post-processor trims offsets.

mod common;

use std::path::{Path, PathBuf};

use edkd_data::bounded::{Keep, MARGIN_BYTES, WINDOW_BYTES, encode_bounded};
use edkd_data::tokenizer::Tokenizer;

/// ~300 KB mixing what can change tokens near a window cut: sentences, newlines, a
/// 100 KB word without spaces, long whitespace runs, CJK, emoji and digits.
fn long_text() -> String {
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 90_000 {
        text.push_str(&format!(
            "Record {i}: amber-falcon = {}, question: what is x{}?\n",
            i * 7919 % 1000,
            i % 13
        ));
        i += 1;
    }
    text.push_str(&"abcdefghij".repeat(10_000));
    text.push_str(&" ".repeat(9_000));
    text.push_str("\n\n\t ");
    while text.len() < 240_000 {
        text.push_str("漢字とかなの文章🙂です。");
    }
    text.push_str(&"1234567890".repeat(3_000));
    while text.len() < 300_000 {
        text.push_str(&format!("the {i} cats sat on {} mats. ", i % 97));
        i += 1;
    }
    text
}

fn check(tokenizer: &Tokenizer, what: &str) {
    let text = long_text();
    assert!(text.len() > 4 * WINDOW_BYTES && 9_000 > 2 * MARGIN_BYTES);
    let whole = tokenizer.encode(&text).unwrap();
    let all = encode_bounded(tokenizer, &text, None, Keep::Start).unwrap();
    assert_eq!(all.ids.len(), whole.len(), "{what}: token count");
    assert!(
        all.ids == whole,
        "{what}: windowed ids differ from whole-text ids"
    );
    assert!(!all.truncated);
    // Memory follows the window, not the text (a cut inside the 100 KB word may widen one).
    assert!(
        all.widest_bytes <= 4 * WINDOW_BYTES + 8 * MARGIN_BYTES,
        "{what}: a window of {} bytes",
        all.widest_bytes
    );
    let back = encode_bounded(tokenizer, &text, None, Keep::End).unwrap();
    assert!(back.ids == whole, "{what}: backward windows differ");
    assert!(back.widest_bytes <= 4 * WINDOW_BYTES + 8 * MARGIN_BYTES);
    let short = encode_bounded(tokenizer, &text, Some(40), Keep::Start).unwrap();
    assert!(
        short.widest_bytes <= WINDOW_BYTES + MARGIN_BYTES,
        "{what}: {}",
        short.widest_bytes
    );
    for limit in [1, 40, 5_000, whole.len() - 1, whole.len()] {
        let start = encode_bounded(tokenizer, &text, Some(limit), Keep::Start).unwrap();
        let n = limit.min(whole.len());
        assert_eq!(start.ids, whole[..n], "{what}: first {limit}");
        assert_eq!(start.truncated, limit < whole.len(), "{what}: {limit}");
        assert!(start.counted > limit || !start.truncated);
        let end = encode_bounded(tokenizer, &text, Some(limit), Keep::End).unwrap();
        assert_eq!(end.ids, whole[whole.len() - n..], "{what}: last {limit}");
        assert_eq!(end.truncated, limit < whole.len(), "{what}: {limit}");
    }
}

fn fixture_tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/teachers/llama_linear/tokenizer.json")
}

#[test]
fn windows_equal_whole_text_for_byte_level_bpe() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = Tokenizer::load(&common::tokenizer(tmp.path())).unwrap();
    check(&tok, "byte-level BPE");
}

#[test]
fn windows_equal_whole_text_for_metaspace_bpe() {
    check(
        &Tokenizer::load(&fixture_tokenizer()).unwrap(),
        "Metaspace BPE",
    );
}

#[test]
fn windows_equal_whole_text_with_a_prepending_normalizer_and_trimmed_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let path = common::tokenizer(tmp.path());
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["normalizer"] = serde_json::json!({
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "_"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "_"}
        ]
    });
    json["post_processor"] = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    std::fs::write(&path, json.to_string()).unwrap();
    check(
        &Tokenizer::load(&path).unwrap(),
        "prepend + trimmed offsets",
    );
}
