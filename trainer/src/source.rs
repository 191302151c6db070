//! Where the teacher's predictions come from, behind one trait: the teacher service over
//! gRPC (top-k + tail), teacher-logit cache shards (top-k + tail, offline), or a teacher
//! loaded into this process (full vocabulary). Every source answers for the positions of
//! a batch's labels (`target + [eos]`), aligned as in `edkd_data::batch`.

use std::path::Path;
use std::time::Duration;

use edkd_data::{Batch, CacheReader, TeacherBatch};
use edkd_models::multimodal::VisionTwinModel;
use edkd_models::teacher::{LoadOptions, Teacher};
use edkd_teacher::proto::{ScoreRequest, ScoreResponse, Sequence, ValueFormat};
use edkd_teacher::wire::decode_response;
use edkd_teacher::{Client, ClientConfig};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::loss::TeacherTargets;
use crate::model::vision::{self, VisionFolder};
use crate::model::{BatchTensors, causal_target_logits};

/// A teacher's answer for one batch.
pub enum TeacherOut {
    /// Raw teacher logits `[rows, dec_len, V_t]` (in-process teacher).
    Full(Tensor),
    /// Top-k log-probs at the run's temperature, plus the tail (service, cache).
    TopK(TeacherBatch),
}

/// What the trainer checks a source against before the first step.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub description: String,
    /// sha256 of the teacher's tokenizer.json (None if the source cannot tell).
    pub tokenizer_sha256: Option<String>,
    pub vocab_size: i64,
    /// The temperature of top-k log-probs (None for full logits).
    pub temperature: Option<f32>,
    /// The teacher view its answers were made with, when fixed by the source (a cache);
    /// `None` for live teachers, which take the run's view.
    pub teacher_prompt: Option<String>,
}

pub trait TeacherSource: Send {
    fn info(&self) -> &SourceInfo;
    /// Teacher predictions for every label position of `batch`.
    fn score(&mut self, batch: &Batch) -> Result<TeacherOut>;
}

/// Per-position summary statistics of a teacher answer, for the metrics log.
pub struct TargetsStats {
    /// Mean teacher probability mass inside the top-k (1 for full logits).
    pub topk_mass: f64,
    /// Teacher top-1 ids `[n]` at the masked positions.
    pub top1: Tensor,
}

impl TeacherOut {
    /// The masked positions (row-major, where `mask` `[b, dec_len]` is true) as loss
    /// targets on `device`.
    pub fn targets(&self, mask: &Tensor, device: Device) -> (TeacherTargets, TargetsStats) {
        let idx = mask.reshape([-1]).nonzero().squeeze_dim(-1);
        match self {
            TeacherOut::Full(logits) => {
                let v = logits.size()[2];
                let rows = logits
                    .to_device(device)
                    .reshape([-1, v])
                    .index_select(0, &idx.to_device(device));
                let top1 = rows.argmax(-1, false);
                (
                    TeacherTargets::Full { logits: rows },
                    TargetsStats {
                        topk_mass: 1.0,
                        top1,
                    },
                )
            }
            TeacherOut::TopK(t) => {
                let n = (t.rows * t.dec_len) as i64;
                let k = t.k as i64;
                let idx = idx.to_device(Device::Cpu);
                let ids = Tensor::from_slice(&t.topk_ids)
                    .reshape([n, k])
                    .index_select(0, &idx);
                let logprobs = Tensor::from_slice(&t.topk_logprobs)
                    .reshape([n, k])
                    .index_select(0, &idx);
                let tail = Tensor::from_slice(&t.tail_logmass)
                    .reshape([n])
                    .index_select(0, &idx);
                let mass = if idx.size()[0] == 0 {
                    1.0
                } else {
                    logprobs
                        .logsumexp([-1], false)
                        .exp()
                        .mean(Kind::Double)
                        .double_value(&[])
                };
                let best = logprobs.argmax(-1, true);
                let top1 = ids.gather(-1, &best, false).squeeze_dim(-1);
                (
                    TeacherTargets::TopK {
                        ids: ids.to_device(device),
                        logprobs: logprobs.to_device(device),
                        tail_logmass: tail.to_device(device),
                    },
                    TargetsStats {
                        topk_mass: mass,
                        top1: top1.to_device(device),
                    },
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// In-process teacher.

/// A teacher folder loaded into this process; scores without grad.
pub struct InProcess {
    teacher: InProcessModel,
    info: SourceInfo,
}

/// The teacher an [`InProcess`] source holds.
#[allow(clippy::large_enum_variant)]
enum InProcessModel {
    /// A decoder-only text model (Hugging Face folder or GGUF).
    Text(Teacher),
    /// A vision-language twin folder: it reads each row's image at the placeholder.
    Vision(VisionTwinModel),
}

impl InProcess {
    /// Loads `dir`: a vision-language twin folder (`edkd_vision_decoder`), or any folder
    /// or GGUF file a text teacher loads from.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let opts = LoadOptions {
            device,
            kind: Kind::Float,
        };
        let (teacher, tokenizer, vocab_size) =
            if vision::folder_kind(dir) == Some(VisionFolder::Twin) {
                let m = VisionTwinModel::load(dir, opts)?;
                let sha = m.tokenizer.as_ref().map(|t| t.sha256().to_owned());
                let vocab = m.model.text.config.vocab_size;
                (InProcessModel::Vision(m), sha, vocab)
            } else {
                let t = Teacher::load(dir, opts)?;
                let sha = t.tokenizer.as_ref().map(|t| t.sha256().to_owned());
                let vocab = t.model.config.vocab_size;
                (InProcessModel::Text(t), sha, vocab)
            };
        let info = SourceInfo {
            description: format!("in-process teacher {}", dir.display()),
            tokenizer_sha256: tokenizer,
            vocab_size,
            temperature: None,
            teacher_prompt: None,
        };
        Ok(Self { teacher, info })
    }
}

impl TeacherSource for InProcess {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// A vision-language teacher reads `prompt ++ target` with the row's image at the
    /// placeholder; its logits are gathered where each target token is predicted
    /// ([`vision::twin_target_logits`]). A text teacher refuses a batch with images: it
    /// would answer blind, and distilling blind answers teaches the student to ignore the
    /// image.
    fn score(&mut self, batch: &Batch) -> Result<TeacherOut> {
        let logits = match &self.teacher {
            InProcessModel::Text(teacher) => {
                vision::refuse_images(batch, "the in-process teacher (a text model)")?;
                let t = BatchTensors::new(batch, teacher.model.device());
                tch::no_grad(|| causal_target_logits(&teacher.model, &t, false))
            }
            InProcessModel::Vision(m) => {
                let device = m.model.text.device();
                let mut t = BatchTensors::new(batch, device);
                let id = m.model.embedder.config.image_token_id;
                t.pixel_values =
                    vision::batch_pixels(&m.processor, id, batch)?.map(|p| p.to_device(device));
                tch::no_grad(|| vision::twin_target_logits(&m.model, &t, false))?
            }
        };
        Ok(TeacherOut::Full(logits.to_kind(Kind::Float)))
    }
}

// ---------------------------------------------------------------------------------------
// Cache shards.

/// Teacher-logit cache shards written by `edkd teacher annotate`.
pub struct Cache {
    reader: CacheReader,
    info: SourceInfo,
}

impl Cache {
    pub fn open(dir: &Path, vocab_size: i64) -> Result<Self> {
        let reader = CacheReader::open(dir)?;
        let meta = reader.meta();
        let info = SourceInfo {
            description: format!(
                "teacher cache {} ({} examples, k {}, model {})",
                dir.display(),
                reader.len(),
                meta.k,
                meta.teacher_model
            ),
            tokenizer_sha256: Some(meta.tokenizer_sha256.clone()),
            vocab_size,
            temperature: Some(meta.temperature),
            teacher_prompt: Some(meta.teacher_prompt.clone()),
        };
        Ok(Self { reader, info })
    }
}

impl TeacherSource for Cache {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn score(&mut self, batch: &Batch) -> Result<TeacherOut> {
        Ok(TeacherOut::TopK(self.reader.collate(batch)?))
    }
}

// ---------------------------------------------------------------------------------------
// The teacher service.

/// Settings of a [`Remote`] source.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub addr: String,
    pub top_k: usize,
    pub temperature: f32,
    pub auth_token: Option<String>,
    pub timeout: Duration,
    /// How long failing transport is retried before giving up.
    pub retry_for: Duration,
    /// Answers packed this way (the server must list it); `None`: unpacked f32.
    pub packing: Option<edkd_data::packing::Packing>,
}

/// First and longest pause between retries of a teacher that stopped answering.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Failures of the connection rather than of the request: a restarted teacher answers
/// the same request later. Bad requests, auth and limits are not retried.
fn transient(e: &edkd_teacher::Error) -> bool {
    use tonic::Code;
    match e {
        edkd_teacher::Error::Transport(_) => true,
        edkd_teacher::Error::Rpc(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// An `edkd teacher serve` process. Large batches are split to the server's limits and
/// the parts sent concurrently. A batch's images (`Batch.images`) travel with their rows,
/// to a teacher whose `Info` says it reads them.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: Client,
    config: RemoteConfig,
    max_request_tokens: usize,
    max_sequences: usize,
    /// Positions an image adds beyond its placeholder; `None`: the teacher reads no images.
    image_positions: Option<usize>,
    info: SourceInfo,
}

impl Remote {
    pub fn connect(config: RemoteConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Source(format!("tokio runtime: {e}")))?;
        let mut cc = ClientConfig::new(config.addr.clone());
        cc.auth_token = config.auth_token.clone();
        cc.timeout = config.timeout;
        let client = runtime.block_on(async { Client::connect(cc) })?;
        let info = runtime.block_on(client.info())?;
        let limits = info.limits.unwrap_or_default();
        if config.top_k as u32 > limits.max_top_k && limits.max_top_k > 0 {
            return Err(Error::Config(format!(
                "teacher.top_k = {} is over the server's limit {}",
                config.top_k, limits.max_top_k
            )));
        }
        if let Some(p) = config.packing
            && !info.packings.contains(&(p.code() as i32))
        {
            let sent: Vec<String> = info
                .packings
                .iter()
                .filter_map(|&c| edkd_data::packing::Packing::from_code(c))
                .map(|p| p.name())
                .collect();
            return Err(Error::Config(format!(
                "teacher.packing = {}: the service at {} does not send it (it sends: {})",
                p.name(),
                config.addr,
                if sent.is_empty() {
                    "unpacked answers only".to_owned()
                } else {
                    sent.join(", ")
                }
            )));
        }
        let source = SourceInfo {
            description: format!(
                "teacher service {} ({}, {}, vocab {})",
                config.addr, info.model_id, info.device, info.vocab_size
            ),
            tokenizer_sha256: (!info.tokenizer_sha256.is_empty())
                .then(|| info.tokenizer_sha256.clone()),
            vocab_size: info.vocab_size as i64,
            temperature: Some(config.temperature),
            teacher_prompt: None,
        };
        Ok(Self {
            runtime,
            client,
            max_request_tokens: (limits.max_request_tokens as usize).max(1),
            max_sequences: (limits.max_sequences as usize).max(1),
            image_positions: info
                .accepts_images
                .then(|| (info.tokens_per_image as usize).saturating_sub(1)),
            config,
            info: source,
        })
    }

    /// Whether the teacher reads images (its `Info.accepts_images`), as found at connect.
    pub fn accepts_images(&self) -> bool {
        self.image_positions.is_some()
    }

    /// Refuses a teacher that reads no images, for data that has them (`what` names it):
    /// the check a run makes before its first step.
    pub fn require_images(&self, what: &str) -> Result<()> {
        if self.accepts_images() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "teacher: {} reads no images (its Info says accepts_images = false), but {what} \
             has images: serve a vision-language teacher (an edkd_vision_decoder folder) or \
             train on text data",
            self.info.description
        )))
    }

    /// Row `r`'s image bytes (none, or one), refused for a teacher that reads no images.
    fn row_images(&self, batch: &Batch, r: usize) -> Result<Vec<bytes::Bytes>> {
        let Some(image) = batch.images.as_ref().and_then(|i| i.get(r)?.as_deref()) else {
            return Ok(Vec::new());
        };
        let id = batch.ids.get(r).map_or("?", String::as_str);
        self.require_images(&format!("example `{id}` of the batch"))?;
        Ok(vec![bytes::Bytes::copy_from_slice(image)])
    }
}

impl Remote {
    /// Sends the requests (concurrently), retrying the whole set with backoff while the
    /// teacher is unreachable, for up to `retry_for`.
    fn score_with_retries(&self, requests: &[ScoreRequest]) -> Result<Vec<ScoreResponse>> {
        let started = std::time::Instant::now();
        let mut pause = RETRY_BACKOFF.0;
        let mut attempt = 0u32;
        loop {
            let client = self.client.clone();
            let sent = self.runtime.block_on(futures_util::future::try_join_all(
                requests.iter().cloned().map(|q| {
                    let client = client.clone();
                    async move { client.score(q).await }
                }),
            ));
            let err = match sent {
                Ok(answers) => return Ok(answers),
                Err(e) => e,
            };
            let waited = started.elapsed();
            if !transient(&err) || waited + pause > self.config.retry_for {
                let tried = if attempt > 0 {
                    format!(
                        " (retried {attempt} times over {:.0} s)",
                        waited.as_secs_f64()
                    )
                } else {
                    String::new()
                };
                return Err(Error::Source(format!(
                    "teacher service at {}{tried}: {err}",
                    self.config.addr
                )));
            }
            attempt += 1;
            tracing::warn!(
                addr = %self.config.addr,
                attempt,
                error = %err,
                "teacher not answering; retrying in {:.1} s",
                pause.as_secs_f64()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_BACKOFF.1);
        }
    }
}

impl TeacherSource for Remote {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn score(&mut self, batch: &Batch) -> Result<TeacherOut> {
        let sha = self.info.tokenizer_sha256.clone().unwrap_or_default();
        let mut requests: Vec<ScoreRequest> = Vec::new();
        let mut rows_of: Vec<Vec<usize>> = Vec::new();
        let mut tokens = 0;
        for r in 0..batch.rows {
            // The teacher's view of the input (it may differ from the student's).
            let prompt: Vec<u32> = batch.teacher_prompt(r).iter().map(|&i| i as u32).collect();
            let target: Vec<u32> = (0..batch.dec_len)
                .filter(|&j| batch.decoder_mask[r * batch.dec_len + j])
                .map(|j| batch.labels[r * batch.dec_len + j] as u32)
                .collect();
            let images = self.row_images(batch, r)?;
            let len =
                prompt.len() + target.len() + images.len() * self.image_positions.unwrap_or(0);
            let full = requests.last().is_none_or(|q| {
                q.sequences.len() >= self.max_sequences || tokens + len > self.max_request_tokens
            });
            if full {
                requests.push(ScoreRequest {
                    request_id: requests.len() as u64,
                    sequences: Vec::new(),
                    top_k: self.config.top_k as u32,
                    temperature: self.config.temperature,
                    value_format: ValueFormat::F32 as i32,
                    packing: self.config.packing.map_or(0, |p| p.code() as i32),
                    tokenizer_sha256: sha.clone(),
                });
                rows_of.push(Vec::new());
                tokens = 0;
            }
            tokens += len;
            let q = requests.last_mut().expect("pushed above");
            q.sequences.push(Sequence {
                id: batch.ids.get(r).cloned().unwrap_or_default(),
                prompt_ids: prompt,
                target_ids: target,
                images,
            });
            rows_of.last_mut().expect("pushed above").push(r);
        }
        let answers = self.score_with_retries(&requests)?;
        let k = self.config.top_k;
        let (rows, dec_len) = (batch.rows, batch.dec_len);
        let mut out = TeacherBatch {
            rows,
            dec_len,
            k,
            topk_ids: vec![0; rows * dec_len * k],
            topk_logprobs: vec![f32::NEG_INFINITY; rows * dec_len * k],
            tail_logmass: vec![f32::NEG_INFINITY; rows * dec_len],
            gold_logprob: vec![0.0; rows * dec_len],
        };
        for (answer, rows) in answers.iter().zip(&rows_of) {
            for (s, &r) in decode_response(answer)?.iter().zip(rows) {
                // Labels are left-aligned: real positions are 0..positions.
                let p = s.positions.min(dec_len);
                for j in 0..p {
                    let o = (r * dec_len + j) * k;
                    for c in 0..k {
                        out.topk_ids[o + c] = s.topk_ids[j * k + c] as i64;
                        out.topk_logprobs[o + c] = s.topk_logprobs[j * k + c];
                    }
                    out.tail_logmass[r * dec_len + j] = s.tail_logmass[j];
                    out.gold_logprob[r * dec_len + j] = s.gold_logprob[j];
                }
            }
        }
        Ok(TeacherOut::TopK(out))
    }
}
