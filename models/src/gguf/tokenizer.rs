//! `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF file's `tokenizer.*`
//! metadata: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, with the pre-tokenizer split
//! that `tokenizer.ggml.pre` names) and SentencePiece-style BPE (`"llama"`: byte fallback,
//! merges from the file or recovered from the scores, as transformers' GGUF converter does).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value as Json, json};

use super::reader::GgufFile;
use crate::error::{Error, Result};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
/// SentencePiece's word-boundary marker.
const SPIECE_UNDERLINE: &str = "\u{2581}";

/// llama.cpp's Llama-3 style split (`llama-bpe` and friends).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: like Llama 3's, but digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a GGUF's `tokenizer.ggml.pre` asks of the byte-level pre-tokenizer.
enum PreSplit {
    /// GPT-2's regex alone (ByteLevel with `use_regex`).
    Gpt2,
    /// Every digit on its own (`\p{N}` isolated), then GPT-2's regex: llama.cpp's
    /// smollm / starcoder / refact / command-r / codeshell / exaone / minerva.
    DigitsThenGpt2,
    /// One regex in place of GPT-2's.
    Regex(&'static str),
}

fn pre_split(pre: Option<&str>) -> PreSplit {
    match pre {
        None | Some("default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais") => PreSplit::Gpt2,
        Some(
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva",
        ) => PreSplit::DigitsThenGpt2,
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "dbrx"
            | "smaug-bpe",
        ) => PreSplit::Regex(LLAMA3_SPLIT),
        Some("qwen2" | "deepseek-r1-qwen") => PreSplit::Regex(QWEN2_SPLIT),
        Some(other) => {
            tracing::warn!(
                pre = other,
                "unknown tokenizer.ggml.pre; using GPT-2's pre-tokenizer regex"
            );
            PreSplit::Gpt2
        }
    }
}

/// The files a GGUF's tokenizer metadata becomes.
pub struct TokenizerFiles {
    /// `tokenizer.json`, serialised (its sha256 identifies the tokenizer).
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config: Json,
}

/// GPT-2's reversible byte-to-character map (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below the surrogates")
        };
    }
    map
}

/// Builds the tokenizer files, or `None` when the file carries no tokenizer.
pub fn build(file: &GgufFile) -> Result<Option<TokenizerFiles>> {
    let Some(model) = file.get_str("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let bad = |msg: String| Error::Gguf {
        path: file.path.clone(),
        msg,
    };
    let tokens = file
        .get_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.tokens`".into()))?;
    let types: Vec<i64> = match file.get_numbers("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t.into_iter().map(|v| v as i64).collect(),
        Some(t) => {
            return Err(bad(format!(
                "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                t.len(),
                tokens.len()
            )));
        }
        None => vec![1; tokens.len()],
    };
    let merges = file.get_strings("tokenizer.ggml.merges")?;
    let special = |key: &str| -> Result<Option<(i64, String)>> {
        match file.get_i64(&format!("tokenizer.ggml.{key}"))? {
            None => Ok(None),
            Some(id) => {
                let tok = usize::try_from(id)
                    .ok()
                    .and_then(|i| tokens.get(i))
                    .ok_or_else(|| {
                        bad(format!(
                            "`tokenizer.ggml.{key}` {id} is outside the {}-token vocabulary",
                            tokens.len()
                        ))
                    })?;
                Ok(Some((id, tok.to_string())))
            }
        }
    };
    let bos = special("bos_token_id")?;
    let eos = special("eos_token_id")?;
    let unk = special("unknown_token_id")?;
    let pad = special("padding_token_id")?;
    let add_bos = file
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(model == "llama");
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let mut tok = match model {
        "gpt2" => {
            let alphabet = byte_alphabet();
            let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
            let spelled: Vec<String> = tokens
                .iter()
                .map(|t| {
                    if t.chars().all(|c| in_alphabet.contains(&c)) {
                        t.to_string()
                    } else {
                        t.bytes().map(|b| alphabet[b as usize]).collect()
                    }
                })
                .collect();
            let vocab = vocab_json(&spelled);
            let merges = match &merges {
                Some(m) => split_merges(m),
                None => generate_merges(&spelled, None),
            };
            // A control token spelled outside the byte alphabet is a llama.cpp mislabel;
            // transformers skips it too, so the vocabulary keeps the model's size.
            let added = added_tokens(&spelled, &types, |t| {
                t.chars().all(|c| in_alphabet.contains(&c))
            });
            let byte_level = json!({
                "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
            });
            let pre_tokenizer = match pre_split(file.get_str("tokenizer.ggml.pre")?) {
                PreSplit::Gpt2 => byte_level,
                PreSplit::DigitsThenGpt2 => json!({
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Digits", "individual_digits": true},
                        byte_level,
                    ]
                }),
                PreSplit::Regex(re) => json!({
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                    ]
                }),
            };
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {
                    "type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab, "merges": merges,
                }
            })
        }
        "llama" => {
            let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
            let merges = match &merges {
                Some(m) => split_merges(m),
                None => {
                    let scores = file.get_numbers("tokenizer.ggml.scores")?.ok_or_else(|| {
                        bad("a sentencepiece vocabulary needs `tokenizer.ggml.merges` or `tokenizer.ggml.scores`".into())
                    })?;
                    if scores.len() != owned.len() {
                        return Err(bad(format!(
                            "`tokenizer.ggml.scores` has {} entries for {} tokens",
                            scores.len(),
                            owned.len()
                        )));
                    }
                    generate_merges(&owned, Some(&scores))
                }
            };
            let add_prefix = file
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": SPIECE_UNDERLINE}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added_tokens(&owned, &types, |_| true),
                "normalizer": null,
                "pre_tokenizer": {
                    "type": "Metaspace", "replacement": SPIECE_UNDERLINE,
                    "prepend_scheme": if add_prefix { "first" } else { "never" }, "split": false
                },
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {
                    "type": "BPE", "dropout": null,
                    "unk_token": unk.as_ref().map(|u| u.1.clone()),
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab_json(&owned), "merges": merges,
                }
            })
        }
        other => {
            return Err(bad(format!(
                "tokenizer.ggml.model {other:?} is not supported (gpt2, llama are)"
            )));
        }
    };
    tok["post_processor"] = post_processor(
        add_bos.then_some(bos.as_ref()).flatten(),
        add_eos.then_some(eos.as_ref()).flatten(),
    );

    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos.map(|t| t.1),
        "eos_token": eos.map(|t| t.1),
        "unk_token": unk.map(|t| t.1),
        "pad_token": pad.map(|t| t.1),
    });
    if let Some(template) = file.get_str("tokenizer.chat_template")? {
        config["chat_template"] = json!(template);
    }
    let tokenizer_json = serde_json::to_vec(&tok).expect("JSON values serialise");
    Ok(Some(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: config,
    }))
}

fn vocab_json(tokens: &[String]) -> Json {
    let mut map = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        // A repeated spelling keeps its last id, as a Python dict built in order would.
        map.insert(t.clone(), json!(id));
    }
    Json::Object(map)
}

/// `"a b"` merge lines as `[a, b]` pairs.
fn split_merges(lines: &[&str]) -> Json {
    Json::Array(
        lines
            .iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(' ').collect();
                json!(parts)
            })
            .collect(),
    )
}

/// Control tokens become special added tokens, user-defined ones plain added tokens, so
/// neither is cut into pieces (what llama.cpp and transformers' GGUF converter do).
fn added_tokens(tokens: &[String], types: &[i64], control_ok: impl Fn(&str) -> bool) -> Json {
    let mut out = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        let special = match ty {
            TOKEN_CONTROL if control_ok(t) => true,
            TOKEN_USER_DEFINED => false,
            _ => continue,
        };
        out.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    Json::Array(out)
}

fn post_processor(bos: Option<&(i64, String)>, eos: Option<&(i64, String)>) -> Json {
    let special =
        |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    if let Some((id, t)) = bos {
        single.push(special(t, 0));
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    single.push(seq("A", 0));
    if let Some((id, t)) = eos {
        single.push(special(t, 0));
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    pair.extend(single.iter().cloned());
    if let Some((_, t)) = bos {
        pair.push(special(t, 1));
    }
    pair.push(seq("B", 1));
    if let Some((_, t)) = eos {
        pair.push(special(t, 1));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// Merges implied by a vocabulary (transformers' `generate_merges`): every split of a token
/// into two tokens, ordered by the token's score (descending) when scores are given, else by
/// its id (ascending); ties by the lengths of the left then right piece, in the same
/// direction, and within one token by the ids of its pieces.
fn generate_merges(tokens: &[String], scores: Option<&[f64]>) -> Json {
    let vocab: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score, left, right) in the order Python's stable sorts leave them.
    let mut merges: Vec<(f64, &str, &str)> = Vec::new();
    let mut seen = HashSet::new();
    for token in tokens {
        // Python iterates a dict: each distinct token once, in first-seen order, with the
        // id and score of its last occurrence.
        if !seen.insert(token.as_str()) {
            continue;
        }
        let last = vocab[token.as_str()];
        let score = scores.map_or(last as f64, |s| s[last]);
        let mut local: Vec<(&str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&token[..i], &token[i..]))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (vocab[l], vocab[r]));
        merges.extend(local.into_iter().map(|(l, r)| (score, l, r)));
    }
    let key = |m: &(f64, &str, &str)| (m.0, m.1.chars().count(), m.2.chars().count());
    if scores.is_some() {
        // Python's `sorted(reverse=True)` is stable: equal keys keep their order.
        merges.sort_by(|a, b| key(b).partial_cmp(&key(a)).expect("scores are not NaN"));
    } else {
        merges.sort_by(|a, b| key(a).partial_cmp(&key(b)).expect("ids are finite"));
    }
    Json::Array(merges.into_iter().map(|(_, l, r)| json!([l, r])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], '\u{120}'); // "Ġ"
        assert_eq!(a[b'\n' as usize], '\u{10A}'); // "Ċ"
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_follow_scores_then_piece_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = generate_merges(&tokens, Some(&scores));
        assert_eq!(m, json!([["a", "b"], ["b", "c"], ["ab", "c"], ["a", "bc"]]));
    }
}
