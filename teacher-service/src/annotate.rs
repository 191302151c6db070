//! Offline annotation: scores a prepared dataset split through the service and writes the
//! teacher-logit cache (edkd-data's format). Resumable: ids already in finished cache shards
//! are skipped, so an interrupted run loses at most one unfinished shard. A dataset with an
//! image column sends each example's image with it (to a vision-language teacher); the
//! cache, keyed by example id, is the same format either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edkd_data::manifest::{Manifest, Verify};
use edkd_data::packing::{IdOrder, Packing};
use edkd_data::{CacheEntry, CacheMeta, CacheWriter, Dataset, OpenOptions};
use edkd_models::chat::TeacherView;
use edkd_proto::teacher::v1::{InfoResponse, ScoreRequest, Sequence, ValueFormat};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire::decode_response;

/// What to annotate and how.
#[derive(Debug, Clone)]
pub struct AnnotateConfig {
    /// Prepared dataset folder (with `manifest.json`).
    pub data: PathBuf,
    pub split: String,
    /// Cache folder (created, or resumed).
    pub out: PathBuf,
    pub top_k: usize,
    pub temperature: f32,
    /// Most sequences per request (the server's token limit also applies).
    pub sequences_per_request: usize,
    /// Requests kept in flight on the stream.
    pub in_flight: usize,
    /// Examples per cache shard.
    pub shard_rows: usize,
    /// Stop after scoring this many examples (a partial run; resume later).
    pub limit: Option<usize>,
    pub progress: bool,
    /// How the teacher reads each input (recorded in the cache's metadata).
    pub view: Arc<TeacherView>,
    /// Write a format-version-2 cache packed this way (scores still travel as f32, so
    /// they are quantised once); `None`: version 1 (u32 ids, f32 values).
    pub packing: Option<Packing>,
    /// With `packing`: compress each row with zstd at this level.
    pub zstd_level: Option<i32>,
    /// With a `freq` packing: the first examples scored whose rows give the cache its id
    /// order (held in memory until then, and packed with it like the rest).
    pub calibration_examples: usize,
}

/// Default of [`AnnotateConfig::calibration_examples`]: enough rows that the order holds
/// a domain's frequent tokens (about 7 bits a rank at k = 64 on SmolLM2 from 50 examples).
pub const CALIBRATION_EXAMPLES: usize = 256;

/// One scored example on its way into the cache.
fn push(writer: &mut CacheWriter, s: &crate::wire::Scores) -> Result<()> {
    writer.push(&CacheEntry {
        id: &s.id,
        topk_ids: &s.topk_ids,
        topk_logprobs: &s.topk_logprobs,
        tail_logmass: &s.tail_logmass,
        gold_logprob: &s.gold_logprob,
    })?;
    Ok(())
}

/// The cache writer, or `None` for a new `freq` cache, which opens once calibrated
/// ([`open_calibrated`]); a `freq` cache with shards resumes with their order.
fn open_writer(config: &AnnotateConfig, meta: &CacheMeta) -> Result<Option<CacheWriter>> {
    let meta = match config.packing {
        Some(p) if p.needs_order() => match CacheMeta::of_folder(&config.out)? {
            Some(found) => CacheMeta {
                id_order: found.id_order,
                ..meta.clone()
            },
            None => return Ok(None),
        },
        _ => meta.clone(),
    };
    Ok(Some(CacheWriter::open(
        &config.out,
        meta,
        config.shard_rows,
    )?))
}

/// Opens the cache of a `freq` packing once its calibration rows are in: the order from
/// `held`'s rows, then `held` written with it.
fn open_calibrated(
    config: &AnnotateConfig,
    meta: &CacheMeta,
    vocab: usize,
    held: &mut Vec<crate::wire::Scores>,
) -> Result<CacheWriter> {
    let order = IdOrder::from_rows(
        vocab,
        held.iter().flat_map(|s| s.topk_ids.chunks(s.k.max(1))),
    )
    .map_err(|e| Error::Wire(format!("calibrating the id order: {e}")))?;
    tracing::info!(
        examples = held.len(),
        ids = order.leading().len(),
        "id order calibrated"
    );
    let mut writer = CacheWriter::open(
        &config.out,
        meta.clone().with_id_order(&order),
        config.shard_rows,
    )?;
    for s in held.drain(..) {
        push(&mut writer, &s)?;
    }
    Ok(writer)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotateSummary {
    pub examples: usize,
    /// Found in the cache already and skipped.
    pub skipped: usize,
    pub scored: usize,
    pub target_positions: usize,
    /// Finished shards in the cache folder.
    pub shards: usize,
    pub elapsed: Duration,
}

/// Tokens a view's re-tokenization may add beyond its template's own.
const VIEW_SLACK_TOKENS: usize = 4;

/// How requests are cut: at most `per_request` sequences and `token_limit` tokens each.
struct Plan {
    per_request: usize,
    token_limit: usize,
    /// Tokens each prompt has beyond its input (the teacher view's template).
    extra: usize,
    /// Positions an image adds beyond its placeholder.
    image_positions: usize,
}

/// Sequences per request: examples `indices` of the split.
fn plan(ds: &Dataset, todo: &[u64], p: &Plan) -> Vec<std::ops::Range<usize>> {
    let (per_request, token_limit) = (p.per_request, p.token_limit);
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &idx) in todo.iter().enumerate() {
        let (n, t) = ds.lengths(idx);
        let image = if ds.has_images() && ds.example(idx).image.is_some() {
            p.image_positions
        } else {
            0
        };
        let len = n + p.extra + t + 1 + image;
        if i > start && (i - start >= per_request || tokens + len > token_limit) {
            groups.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += len;
    }
    if start < todo.len() {
        groups.push(start..todo.len());
    }
    groups
}

/// Refuses a dataset with images for a teacher that cannot read them, or one whose image
/// placeholder is another token than the teacher's.
fn check_images(manifest: &Manifest, info: &InfoResponse, split: &str) -> Result<()> {
    let Some(images) = &manifest.images else {
        return Ok(());
    };
    if !info.accepts_images {
        return Err(Error::Config(format!(
            "teacher `{}` reads no images (its Info says accepts_images = false), but split \
             `{split}` has an image column: serve a vision-language teacher (an \
             edkd_vision_decoder folder) to annotate it",
            info.model_id
        )));
    }
    match images.image_token_id {
        Some(id) if id == info.image_token_id => Ok(()),
        Some(id) => Err(Error::Config(format!(
            "the data's image placeholder `{}` is token {id}, the teacher `{}` reads token {} \
             as its image placeholder: prepare the data with the teacher's tokenizer",
            images.placeholder, info.model_id, info.image_token_id
        ))),
        None => Err(Error::Config(format!(
            "the data's image placeholder `{}` is no single token in its tokenizer, so the \
             teacher `{}` cannot find where the images go: prepare the data with a tokenizer \
             that has it as a special token (`edkd data train-tokenizer --special`)",
            images.placeholder, info.model_id
        ))),
    }
}

/// Ids of examples with an empty input named in an [`Error::EmptyInput`].
const EMPTY_IDS_SHOWN: usize = 5;

/// Refuses, before anything is scored, examples the teacher cannot score: an empty input
/// leaves the first target token with no context to predict it from.
fn check_inputs(ds: &Dataset, todo: &[u64], split: &str) -> Result<()> {
    let empty: Vec<u64> = todo
        .iter()
        .copied()
        .filter(|&i| ds.lengths(i).0 == 0)
        .collect();
    if empty.is_empty() {
        return Ok(());
    }
    Err(Error::EmptyInput {
        split: split.to_owned(),
        count: empty.len(),
        ids: empty
            .iter()
            .take(EMPTY_IDS_SHOWN)
            .map(|&i| ds.example(i).id.to_owned())
            .collect(),
    })
}

/// Names the examples of the request that failed: the one a per-sequence status points at
/// (`sequences[i]...`), otherwise the request's first and last.
fn name_examples(error: Error, ds: &Dataset, request: &[u64]) -> Error {
    let pointed = match &error {
        Error::Rpc(status) => status
            .message()
            .strip_prefix("sequences[")
            .and_then(|m| m.split_once(']'))
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .and_then(|i| request.get(i)),
        _ => None,
    };
    let examples = match (pointed, request) {
        (Some(&i), _) => format!("example `{}`", ds.example(i).id),
        (None, [only]) => format!("example `{}`", ds.example(*only).id),
        (None, [first, .., last]) => format!(
            "examples `{}` .. `{}` ({} in the request)",
            ds.example(*first).id,
            ds.example(*last).id,
            request.len()
        ),
        (None, []) => return error,
    };
    Error::Examples {
        examples,
        source: Box::new(error),
    }
}

/// Scores every not-yet-cached example of the split and appends it to the cache.
pub async fn annotate(client: &Client, config: &AnnotateConfig) -> Result<AnnotateSummary> {
    let started = Instant::now();
    if config.top_k == 0 || config.sequences_per_request == 0 || config.in_flight == 0 {
        return Err(Error::Config(
            "top_k, sequences per request and in-flight requests must be positive".into(),
        ));
    }
    let info = client.info().await?;
    let limits = info.limits.unwrap_or_default();
    let mut options = OpenOptions::new(&config.split);
    options.verify = Verify::Full;
    if !info.tokenizer_sha256.is_empty() {
        options.expect_tokenizer_sha256 = Some(info.tokenizer_sha256.clone());
    }
    // Before the tokenizer check: a text teacher for image data is the error to name.
    check_images(&Manifest::load(&config.data)?, &info, &config.split)?;
    let ds = Arc::new(Dataset::open(&config.data, &options)?);
    let tokenizer_sha256 = ds.manifest.tokenizer.sha256.clone();
    let eos = ds.manifest.tokenizer.special_ids.eos;
    let mut meta = CacheMeta {
        teacher_prompt: config.view.key(),
        ..CacheMeta::new(
            &info.model_id,
            &tokenizer_sha256,
            config.top_k,
            config.temperature,
        )
    };
    if let Some(packing) = config.packing {
        meta = meta.packed(packing, info.vocab_size as usize, config.zstd_level);
    } else if config.zstd_level.is_some() {
        return Err(Error::Config(
            "zstd applies to packed caches: choose a packing too".into(),
        ));
    }
    let vocab = info.vocab_size as usize;
    let mut writer = open_writer(config, &meta)?;
    let mut held: Vec<crate::wire::Scores> = Vec::new();

    let total = ds.len() as usize;
    let mut todo: Vec<u64> = (0..ds.len())
        .filter(|&i| !writer.as_ref().is_some_and(|w| w.is_done(ds.example(i).id)))
        .collect();
    let skipped = total - todo.len();
    if let Some(limit) = config.limit {
        todo.truncate(limit);
    }
    check_inputs(&ds, &todo, &config.split)?;
    // The view adds about the same tokens to every prompt (its template), plus slack for
    // tokens the re-tokenization merges or splits at the edges.
    let view_overhead = if config.view.is_raw() {
        0
    } else {
        config
            .view
            .prompt(&[])
            .map_err(|e| Error::Config(format!("teacher view: {e}")))?
            .len()
            + VIEW_SLACK_TOKENS
    };
    let groups = plan(
        &ds,
        &todo,
        &Plan {
            per_request: config.sequences_per_request,
            token_limit: limits.max_request_tokens.max(1) as usize,
            extra: view_overhead,
            image_positions: (info.tokens_per_image as usize).saturating_sub(1),
        },
    );
    tracing::info!(
        total,
        skipped,
        to_score = todo.len(),
        requests = groups.len(),
        "annotating"
    );

    let bar = if config.progress {
        let bar = ProgressBar::new(todo.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} examples ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let todo = Arc::new(todo);
    let (k, temperature) = (config.top_k as u32, config.temperature);
    let requests = {
        let (ds, todo, groups) = (ds.clone(), todo.clone(), groups.clone());
        let view = config.view.clone();
        tokio_stream::iter(groups.into_iter().enumerate().map(move |(r, range)| {
            let sequences = todo[range]
                .iter()
                .map(|&i| {
                    let e = ds.example(i);
                    let mut target = e.target_ids.to_vec();
                    // Cache positions follow the student's labels: target + [eos].
                    target.push(eos);
                    let prompt = view.prompt(e.input_ids).unwrap_or_else(|err| {
                        // An empty prompt makes the server reject the request naming the
                        // example; the cause is logged here.
                        tracing::error!(example = e.id, "teacher view failed: {err}");
                        Vec::new()
                    });
                    Sequence {
                        id: e.id.to_owned(),
                        prompt_ids: prompt,
                        target_ids: target,
                        images: e.image.map(Bytes::copy_from_slice).into_iter().collect(),
                    }
                })
                .collect();
            ScoreRequest {
                request_id: r as u64,
                sequences,
                top_k: k,
                temperature,
                value_format: ValueFormat::F32 as i32,
                tokenizer_sha256: tokenizer_sha256.clone(),
                ..Default::default()
            }
        }))
    };
    let mut pipeline = client.score_stream(requests, config.in_flight).await?;
    let (mut scored, mut positions) = (0, 0);
    for (r, range) in groups.iter().enumerate() {
        let response = pipeline
            .next()
            .await
            .ok_or_else(|| {
                Error::Wire(format!(
                    "stream ended after {r} of {} answers",
                    groups.len()
                ))
            })?
            .map_err(|e| name_examples(e, &ds, &todo[range.clone()]))?;
        if response.request_id != r as u64 || response.sequences.len() != range.len() {
            return Err(Error::Wire(format!(
                "answer {} ({} sequences) for request {r} ({} sequences)",
                response.request_id,
                response.sequences.len(),
                range.len()
            )));
        }
        for (s, &idx) in decode_response(&response)?
            .into_iter()
            .zip(&todo[range.clone()])
        {
            let e = ds.example(idx);
            if s.id != e.id || s.positions != e.target_ids.len() + 1 {
                return Err(Error::Wire(format!(
                    "answer `{}` ({} positions) for example `{}` ({} targets + eos)",
                    s.id,
                    s.positions,
                    e.id,
                    e.target_ids.len()
                )));
            }
            positions += s.positions;
            match writer.as_mut() {
                Some(w) => push(w, &s)?,
                None => held.push(s),
            }
        }
        if writer.is_none() && held.len() >= config.calibration_examples {
            writer = Some(open_calibrated(config, &meta, vocab, &mut held)?);
        }
        scored += range.len();
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    let writer = match writer {
        Some(w) => w,
        None => open_calibrated(config, &meta, vocab, &mut held)?,
    };
    let shards = writer.finish()?;
    Ok(AnnotateSummary {
        examples: total,
        skipped,
        scored,
        target_positions: positions,
        shards,
        elapsed: started.elapsed(),
    })
}
