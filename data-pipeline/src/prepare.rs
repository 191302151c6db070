//! `edkd data prepare`: input files -> tokenized Arrow shards + `manifest.json`.
//!
//! Output is deterministic: records keep file order (parallel tokenization preserves it),
//! the validation split is chosen by a hash of the example id, and no file holds a timestamp.
//! Everything is written into a hidden folder next to `--out` and renamed into place at the
//! end, so a failure leaves nothing partial behind.
//!
//! Memory follows the largest record: a record is at most `max_record_bytes` (checked as it
//! is read), chunks are handed on after 16 MiB of text, and texts are tokenised in bounded
//! windows, only as far as a token limit keeps them ([`crate::bounded`]). Above a small run,
//! the peak stays within 4x the largest record with a token limit and 10x without (its ids
//! are kept and copied into the shard), plus up to four chunks of ordinary records
//! (measured in `cli/tests/prepare_memory.rs`).
//!
//! With an image field ([`FieldMap::image_field`]) each image is read and checked to decode
//! in the same parallel step as tokenization ([`crate::images::source`]), its size counts
//! towards the chunk, and a shard is written early once it holds [`SHARD_IMAGE_BYTES`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::bounded::{Keep, encode_bounded};
use crate::error::{Error, Result};
use crate::fsutil::TempDir;
use crate::images::source::CheckedImage;
use crate::images::{IMAGE_COLUMN, IMAGE_PLACEHOLDER, MAX_IMAGE_SIDE};
use crate::ingest::{self, FieldMap, RawRecord};
use crate::manifest::{
    ImagesInfo, MANIFEST_FORMAT, Manifest, PrepareSettings, TRAIN, TokenizerInfo, VALIDATION,
};
use crate::shard::Example;
use crate::split_writer::{SplitWriter, Tokenized};
use crate::tokenizer::Tokenizer;

/// Records tokenized together in one parallel step.
const TOKENIZE_CHUNK: usize = 8192;
/// Text bytes after which a chunk is handed on early, so memory follows the largest record
/// rather than 8192 times it.
const TOKENIZE_CHUNK_BYTES: usize = 16 << 20;
/// Parsed chunks buffered ahead of tokenization.
const READ_AHEAD_CHUNKS: usize = 2;
/// Resolution of the hash-based validation split.
const SPLIT_HASH_BUCKETS: u64 = 1 << 32;
pub use crate::split_writer::SHARD_IMAGE_BYTES;

/// What to do with a text longer than its token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the first tokens (cut the end).
    KeepStart,
    /// Keep the last tokens (cut the beginning).
    KeepEnd,
    /// Skip the example (counted in the manifest as `dropped`).
    Drop,
    /// Stop with an error naming the file and line.
    Error,
}

impl FromStr for Truncation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "keep-start" => Ok(Self::KeepStart),
            "keep-end" => Ok(Self::KeepEnd),
            "drop" => Ok(Self::Drop),
            "error" => Ok(Self::Error),
            _ => Err(format!(
                "unknown truncation `{s}` (keep-start, keep-end, drop, error)"
            )),
        }
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KeepStart => "keep-start",
            Self::KeepEnd => "keep-end",
            Self::Drop => "drop",
            Self::Error => "error",
        })
    }
}

/// Everything `prepare` needs.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// Files or glob patterns (.jsonl, .parquet, .csv).
    pub inputs: Vec<String>,
    /// Optional separate validation files; otherwise `val_fraction` splits the inputs.
    pub validation_inputs: Vec<String>,
    pub fields: FieldMap,
    pub tokenizer: PathBuf,
    pub max_input_tokens: Option<usize>,
    pub max_target_tokens: Option<usize>,
    pub input_truncation: Truncation,
    pub target_truncation: Truncation,
    pub val_fraction: Option<f64>,
    pub shard_rows: usize,
    pub keep_text: bool,
    /// Largest accepted record in bytes (see [`ingest::read_file`]).
    pub max_record_bytes: usize,
    pub out: PathBuf,
    pub overwrite: bool,
    /// Recorded verbatim in the manifest.
    pub command: Vec<String>,
    pub progress: bool,
}

impl PrepareConfig {
    /// `edkd data prepare`'s defaults for `inputs` (no separate validation files, default
    /// field names, no length limits, both sides truncated at the end, 65,536 rows per
    /// shard, no text kept, records up to 64 MiB, no progress bar); set the other fields
    /// with struct update syntax.
    pub fn new(inputs: &[&Path], tokenizer: &Path, out: &Path) -> Self {
        Self {
            inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            validation_inputs: vec![],
            fields: FieldMap::default(),
            tokenizer: tokenizer.to_owned(),
            max_input_tokens: None,
            max_target_tokens: None,
            input_truncation: Truncation::KeepStart,
            target_truncation: Truncation::KeepStart,
            val_fraction: None,
            shard_rows: 65536,
            keep_text: false,
            max_record_bytes: ingest::DEFAULT_MAX_RECORD_BYTES,
            out: out.to_owned(),
            overwrite: false,
            command: vec![],
            progress: false,
        }
    }
}

/// What `prepare` did, for the closing summary.
#[derive(Debug)]
pub struct PrepareSummary {
    pub manifest: Manifest,
    pub elapsed: Duration,
    /// Tokens produced (inputs + targets, after truncation).
    pub tokens: u64,
}

/// Runs the whole preparation; see the module docs.
pub fn prepare(cfg: &PrepareConfig) -> Result<PrepareSummary> {
    let start = Instant::now();
    if cfg.shard_rows == 0 {
        return Err(Error::Config {
            message: "--shard-rows must be positive".into(),
        });
    }
    if let Some(f) = cfg.val_fraction
        && !(0.0..1.0).contains(&f)
    {
        return Err(Error::Config {
            message: format!("--val-fraction {f} must be in [0, 1)"),
        });
    }
    if cfg.val_fraction.is_some() && !cfg.validation_inputs.is_empty() {
        return Err(Error::Config {
            message: "give either --val-fraction or --validation-input, not both".into(),
        });
    }
    check_image_field(&cfg.fields)?;
    let tokenizer = Tokenizer::load(&cfg.tokenizer)?;
    let train_files = ingest::expand_inputs(&cfg.inputs)?;
    let val_files = ingest::expand_inputs(&cfg.validation_inputs)?;
    let with_validation = cfg.val_fraction.is_some() || !val_files.is_empty();

    let tmp = TempDir::next_to(&cfg.out)?;
    let mut splits = vec![SplitWriter::new(tmp.path(), TRAIN, cfg)?];
    if with_validation {
        splits.push(SplitWriter::new(tmp.path(), VALIDATION, cfg)?);
    }
    let progress = progress_bar(cfg.progress);
    let mut state = State {
        cfg,
        tokenizer: &tokenizer,
        seen_ids: HashSet::new(),
        splits: &mut splits,
        progress: &progress,
    };
    // A reader thread parses files into chunks while this thread tokenizes the previous
    // chunk on the rayon pool and writes shards, so parsing overlaps tokenization.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(READ_AHEAD_CHUNKS);
        let fields = &cfg.fields;
        let (train_files, val_files) = (&train_files, &val_files);
        scope.spawn(move || {
            let mut chunk = Vec::with_capacity(TOKENIZE_CHUNK);
            let mut chunk_bytes = 0;
            let result = (|| -> Result<()> {
                for (files, forced) in [(train_files, None), (val_files, Some(1))] {
                    for file in files {
                        ingest::read_file(file, fields, cfg.max_record_bytes, &mut |record| {
                            chunk_bytes += record.input.len() + record.target.len();
                            // Images are read later, in parallel; their size counts now.
                            chunk_bytes += record
                                .image
                                .as_ref()
                                .map_or(0, |s| s.size().unwrap_or(0) as usize);
                            chunk.push((record, forced));
                            if chunk.len() == TOKENIZE_CHUNK || chunk_bytes >= TOKENIZE_CHUNK_BYTES
                            {
                                chunk_bytes = 0;
                                let full = std::mem::replace(
                                    &mut chunk,
                                    Vec::with_capacity(TOKENIZE_CHUNK),
                                );
                                // A closed channel means the consumer failed; stop quietly.
                                if tx.send(Ok(full)).is_err() {
                                    return Err(Error::Config {
                                        message: "stopped".into(),
                                    });
                                }
                            }
                            Ok(())
                        })?;
                    }
                }
                Ok(())
            })();
            let last = result.map(|()| std::mem::take(&mut chunk));
            let _ = tx.send(last);
        });
        for chunk in rx {
            state.tokenize_chunk(chunk?)?;
        }
        Ok(())
    })?;
    progress.finish_and_clear();

    let mut infos = BTreeMap::new();
    let mut tokens = 0;
    for split in splits {
        let (name, info) = split.finish()?;
        tokens += info.input_tokens.total + info.target_tokens.total;
        infos.insert(name, info);
    }
    if let Some(field) = &cfg.fields.image_field {
        let images: u64 = infos
            .values()
            .filter_map(|s| s.images.as_ref())
            .map(|i| i.count)
            .sum();
        if images == 0 {
            return Err(Error::Config {
                message: format!(
                    "--image-field `{field}`: no example has an image (is the field name right?)"
                ),
            });
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        edkd_version: env!("CARGO_PKG_VERSION").into(),
        command: cfg.command.clone(),
        tokenizer: TokenizerInfo {
            sha256: tokenizer.sha256.clone(),
            vocab_size: tokenizer.inner.get_vocab_size(true),
            special_ids: tokenizer.specials,
        },
        settings: PrepareSettings {
            input: describe(&cfg.fields.input),
            target: describe(&cfg.fields.target),
            max_input_tokens: cfg.max_input_tokens,
            max_target_tokens: cfg.max_target_tokens,
            input_truncation: cfg.input_truncation.to_string(),
            target_truncation: cfg.target_truncation.to_string(),
            val_fraction: cfg.val_fraction,
            shard_rows: cfg.shard_rows,
            keep_text: cfg.keep_text,
            image_field: cfg.fields.image_field.clone(),
        },
        splits: infos,
        images: cfg.fields.image_field.as_ref().map(|_| ImagesInfo {
            column: IMAGE_COLUMN.into(),
            placeholder: IMAGE_PLACEHOLDER.into(),
            image_token_id: tokenizer.added_token_id(IMAGE_PLACEHOLDER),
            max_side: MAX_IMAGE_SIDE,
        }),
    };
    crate::fsutil::write_atomic(&Manifest::path(tmp.path()), manifest.to_json().as_bytes())?;
    tmp.commit(&cfg.out, cfg.overwrite)?;
    Ok(PrepareSummary {
        manifest,
        elapsed: start.elapsed(),
        tokens,
    })
}

/// The image field must not also be a text, id or task field (its value is not text).
fn check_image_field(fields: &FieldMap) -> Result<()> {
    let Some(image) = &fields.image_field else {
        return Ok(());
    };
    let texts = fields
        .input
        .fields()
        .into_iter()
        .chain(fields.target.fields());
    let mut names = texts.chain([fields.id_field.as_str(), fields.task_field.as_str()]);
    if names.any(|n| n == image) {
        return Err(Error::Config {
            message: format!(
                "--image-field `{image}` is also a text, id or task field; it must hold only images"
            ),
        });
    }
    Ok(())
}

fn describe(spec: &ingest::TextSpec) -> String {
    match spec {
        ingest::TextSpec::Field(f) => format!("field:{f}"),
        ingest::TextSpec::Template(parts) => {
            let mut s = String::from("template:");
            for p in parts {
                match p {
                    ingest::TemplatePart::Literal(l) => {
                        s.push_str(&l.replace('{', "{{").replace('}', "}}"))
                    }
                    ingest::TemplatePart::Field(f) => s.push_str(&format!("{{{f}}}")),
                }
            }
            s
        }
    }
}

fn progress_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {pos} examples ({per_sec}) {msg}")
            .expect("valid template"),
    );
    bar
}

/// Records to tokenize together, each with a forced split index (validation files).
type Chunk = Vec<(RawRecord, Option<usize>)>;

struct State<'a> {
    cfg: &'a PrepareConfig,
    tokenizer: &'a Tokenizer,
    seen_ids: HashSet<String>,
    splits: &'a mut Vec<SplitWriter>,
    progress: &'a ProgressBar,
}

impl State<'_> {
    fn tokenize_chunk(&mut self, chunk: Chunk) -> Result<()> {
        let results: Vec<Result<Tokenized>> = chunk
            .par_iter()
            .map(|(r, _)| tokenize(r, self.tokenizer, self.cfg))
            .collect();
        for ((record, forced), result) in chunk.into_iter().zip(results) {
            let tokenized = result?;
            if !self.seen_ids.insert(record.id.clone()) {
                return Err(Error::DuplicateId {
                    id: record.id,
                    path: record.file.to_path_buf(),
                    line: record.line,
                });
            }
            let split = forced.unwrap_or_else(|| match self.cfg.val_fraction {
                Some(f) if in_validation(&record.id, f) => 1,
                _ => 0,
            });
            self.splits[split].push(tokenized)?;
            self.progress.inc(1);
        }
        Ok(())
    }
}

/// Stable split by id: the same id lands in the same split whatever the file order.
fn in_validation(id: &str, fraction: f64) -> bool {
    let bucket = crate::rng::hash_str(id) % SPLIT_HASH_BUCKETS;
    (bucket as f64) < fraction * SPLIT_HASH_BUCKETS as f64
}

fn tokenize(record: &RawRecord, tokenizer: &Tokenizer, cfg: &PrepareConfig) -> Result<Tokenized> {
    let (input, truncated_input) = encode(
        tokenizer,
        &record.input,
        cfg.max_input_tokens,
        cfg.input_truncation,
        record,
        "input",
    )?;
    let (target, truncated_target) = encode(
        tokenizer,
        &record.target,
        cfg.max_target_tokens,
        cfg.target_truncation,
        record,
        "target",
    )?;
    let image = match &record.image {
        Some(source) => {
            Some(
                source
                    .clone()
                    .load_checked()
                    .map_err(|problem| Error::ImageField {
                        path: record.file.to_path_buf(),
                        line: record.line,
                        id: record.id.clone(),
                        field: cfg.fields.image_field.clone().unwrap_or_default(),
                        problem: Box::new(problem),
                    })?,
            )
        }
        None => None,
    };
    let meta = image.as_ref().map(|i| (i.format, i.width, i.height));
    let example = match (input, target) {
        (Some(input_ids), Some(target_ids)) => Some(Example {
            id: record.id.clone(),
            task: record.task.clone(),
            input_ids,
            target_ids,
            text: cfg
                .keep_text
                .then(|| (record.input.clone(), record.target.clone())),
            image: image.map(|i: CheckedImage| i.bytes),
        }),
        _ => None,
    };
    Ok(Tokenized {
        example,
        truncated_input,
        truncated_target,
        image: meta,
    })
}

/// Tokenises `text` under `limit` and `policy` (only the part that can survive the limit
/// is tokenised); `None` means the example is dropped.
fn encode(
    tokenizer: &Tokenizer,
    text: &str,
    limit: Option<usize>,
    policy: Truncation,
    record: &RawRecord,
    what: &'static str,
) -> Result<(Option<Vec<u32>>, bool)> {
    let keep = match policy {
        Truncation::KeepEnd => Keep::End,
        Truncation::KeepStart | Truncation::Drop | Truncation::Error => Keep::Start,
    };
    let encoded = encode_bounded(tokenizer, text, limit, keep)?;
    if encoded.counted == 0 {
        return Err(Error::EmptyText {
            path: record.file.to_path_buf(),
            line: record.line,
            what,
        });
    }
    if !encoded.truncated {
        return Ok((Some(encoded.ids), false));
    }
    match policy {
        Truncation::KeepStart | Truncation::KeepEnd => Ok((Some(encoded.ids), true)),
        Truncation::Drop => Ok((None, true)),
        Truncation::Error => Err(Error::TooLong {
            path: record.file.to_path_buf(),
            line: record.line,
            what,
            tokens: encoded.counted,
            limit: limit.unwrap_or_default(),
        }),
    }
}
