//! Loading a Hugging Face `tokenizer.json` (with its sha256 and special ids) and training a
//! small byte-level BPE one, so demos need no downloaded tokenizer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, TokenizerBuilder};

use crate::error::{Error, Result};

/// Special tokens of tokenizers trained here, in id order: pad=0, bos=1, eos=2, unk=3.
pub const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// Files beside `tokenizer.json` in which Hugging Face checkpoints declare their special
/// tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
pub const DECLARING_FILES: [&str; 2] = ["special_tokens_map.json", "tokenizer_config.json"];

/// Names under which common tokenizer families spell each special token, tried in order
/// when no file declares the role.
const BOS_NAMES: &[&str] = &[
    "<s>",
    "<|begin_of_text|>",
    "<bos>",
    "[CLS]",
    "<|endoftext|>",
];
const EOS_NAMES: &[&str] = &[
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<eos>",
    "[SEP]",
    "<|im_end|>",
];
const PAD_NAMES: &[&str] = &["<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"];
const UNK_NAMES: &[&str] = &["<unk>", "[UNK]"];

/// Lowercase hex sha256 of bytes (the models crate hashes `tokenizer.json` the same way).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The special-token ids a dataset needs. `pad` falls back to `eos` when the tokenizer
/// has no pad token (Llama-style); `unk` is optional (byte-level models never need it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk: Option<u32>,
}

/// A token's byte range in its text: `start..end`.
pub type Span = (usize, usize);

/// A tokenizer plus the sha256 of the file it came from.
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub sha256: String,
    pub specials: SpecialIds,
    pub path: PathBuf,
    /// `inner` without its post-processor, made on first use: post-processors never change
    /// ids without special tokens, but some trim whitespace off the byte offsets that
    /// windowed encoding ([`crate::bounded`]) compares.
    untrimmed: OnceLock<tokenizers::Tokenizer>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and resolves its special tokens: the ones declared in
    /// [`DECLARING_FILES`] beside it (Phi-3.5's eos is `<|endoftext|>`, 32000, not
    /// `</s>`), else the first known name the vocabulary has.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let declared = Declared::read(path.parent().unwrap_or(Path::new(".")))?;
        let resolve = |field: &str, names: &[&str]| -> Result<Option<u32>> {
            match declared.token(field)? {
                Some((token, file)) => {
                    inner
                        .token_to_id(&token)
                        .map(Some)
                        .ok_or_else(|| Error::Tokenizer {
                            path: file,
                            message: format!("`{field}` {token:?} is not in {}", path.display()),
                        })
                }
                None => Ok(names.iter().find_map(|n| inner.token_to_id(n))),
            }
        };
        let bos = resolve("bos_token", BOS_NAMES)?.ok_or_else(|| Error::MissingSpecial {
            token: BOS_NAMES.join(" | "),
            role: "bos",
        })?;
        let eos = resolve("eos_token", EOS_NAMES)?.ok_or_else(|| Error::MissingSpecial {
            token: EOS_NAMES.join(" | "),
            role: "eos",
        })?;
        let specials = SpecialIds {
            bos,
            eos,
            pad: resolve("pad_token", PAD_NAMES)?.unwrap_or(eos),
            unk: resolve("unk_token", UNK_NAMES)?,
        };
        Ok(Self {
            inner,
            sha256: sha256_hex(&bytes),
            specials,
            path: path.to_owned(),
            untrimmed: OnceLock::new(),
        })
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Token ids of `text` and each token's byte range in `text`, without special tokens.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        let raw = self.untrimmed.get_or_init(|| {
            let mut t = self.inner.clone();
            t.with_post_processor(None::<tokenizers::processors::PostProcessorWrapper>);
            t
        });
        raw.encode(text, false)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// The id of `content` when the tokenizer has it as an added token (so it is always one
    /// token, wherever it appears in a text).
    pub fn added_token_id(&self, content: &str) -> Option<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.content == content)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.first().copied()
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

/// The special tokens that [`DECLARING_FILES`] in one folder name.
struct Declared {
    files: Vec<(PathBuf, serde_json::Value)>,
}

impl Declared {
    fn read(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        for name in DECLARING_FILES {
            let path = dir.join(name);
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            let value = serde_json::from_slice(&text).map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
            files.push((path, value));
        }
        Ok(Self { files })
    }

    /// The token text declared for `field` (a string, or an AddedToken object with
    /// `content`) and the file that declares it; files that disagree are an error.
    fn token(&self, field: &str) -> Result<Option<(String, PathBuf)>> {
        let mut found: Option<(String, PathBuf)> = None;
        for (path, value) in &self.files {
            let text = match value.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            match &found {
                Some((prev, prev_path)) if *prev != text => {
                    return Err(Error::Tokenizer {
                        path: path.clone(),
                        message: format!(
                            "`{field}` is {text:?} here but {prev:?} in {}",
                            prev_path.display()
                        ),
                    });
                }
                Some(_) => {}
                None => found = Some((text, path.clone())),
            }
        }
        Ok(found)
    }
}

/// Trains a byte-level BPE tokenizer on the lines of `texts` and returns its JSON.
/// Specials get ids 0..4 in [`SPECIALS`] order. Output is deterministic for the same input.
pub fn train_bpe<I, S>(texts: I, vocab_size: usize, min_frequency: u64) -> Result<String>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    train_bpe_with_specials(texts, vocab_size, min_frequency, &[])
}

/// [`train_bpe`] with `extra` special tokens after [`SPECIALS`] (ids 4, 5, ...), e.g.
/// [`crate::images::IMAGE_PLACEHOLDER`]: each is one token wherever it appears in a text.
pub fn train_bpe_with_specials<I, S>(
    texts: I,
    vocab_size: usize,
    min_frequency: u64,
    extra: &[&str],
) -> Result<String>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let bad = |message: String| Error::Tokenizer {
        path: PathBuf::from("<training>"),
        message,
    };
    let alphabet_len = ByteLevel::alphabet().len() + SPECIALS.len() + extra.len();
    if vocab_size < alphabet_len {
        return Err(Error::Config {
            message: format!(
                "--vocab-size {vocab_size} is below the byte alphabet plus specials ({alphabet_len})"
            ),
        });
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(
            SPECIALS
                .iter()
                .chain(extra)
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let bpe = BPE::builder()
        .unk_token(SPECIALS[3].to_string())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(bpe)
            .with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(|e| bad(e.to_string()))?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.to_string(false).map_err(|e| bad(e.to_string()))
}

/// Texts to train a tokenizer on: for .jsonl/.parquet/.csv files the values of
/// `input_field` and `target_field` of every row, for any other file its lines.
pub fn training_texts(
    files: &[PathBuf],
    input_field: &str,
    target_field: &str,
) -> Result<Vec<String>> {
    let fields = crate::ingest::FieldMap {
        input: crate::ingest::TextSpec::Field(input_field.to_owned()),
        target: crate::ingest::TextSpec::Field(target_field.to_owned()),
        id_field: "id".into(),
        task_field: "task".into(),
        default_task: String::new(),
        image_field: None,
    };
    let mut texts = Vec::new();
    for file in files {
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl" | "json" | "ndjson" | "parquet" | "pq" | "csv") => {
                crate::ingest::read_file(
                    file,
                    &fields,
                    crate::ingest::DEFAULT_MAX_RECORD_BYTES,
                    &mut |r| {
                        texts.push(r.input);
                        texts.push(r.target);
                        Ok(())
                    },
                )?;
            }
            _ => {
                let text = std::fs::read_to_string(file).map_err(Error::io(file))?;
                texts.extend(text.lines().map(str::to_owned));
            }
        }
    }
    Ok(texts)
}

/// Trains on `texts` and writes `out` atomically; returns the file's sha256.
pub fn train_bpe_to_file(
    texts: Vec<String>,
    vocab_size: usize,
    min_frequency: u64,
    out: &Path,
) -> Result<String> {
    train_bpe_with_specials_to_file(texts, vocab_size, min_frequency, &[], out)
}

/// [`train_bpe_to_file`] with extra special tokens (see [`train_bpe_with_specials`]).
pub fn train_bpe_with_specials_to_file(
    texts: Vec<String>,
    vocab_size: usize,
    min_frequency: u64,
    extra: &[&str],
    out: &Path,
) -> Result<String> {
    let json = train_bpe_with_specials(texts.into_iter(), vocab_size, min_frequency, extra)?;
    crate::fsutil::write_atomic(out, json.as_bytes())?;
    Ok(sha256_hex(json.as_bytes()))
}
