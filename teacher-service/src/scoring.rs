//! Scoring a batch of sequences with a loaded teacher: one padded forward pass, then
//! log-softmax at temperature T only at target positions, top-k, tail log-mass and the gold
//! token's log-prob.
//!
//! A vision-language teacher first decodes each sequence's images ([`Scorer::prepare`]),
//! splices their patch embeddings in at the placeholders, and reads the target rows at the
//! places the text positions landed ([`edkd_models::multimodal::Merged::text_position`]).

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use edkd_data::images::RgbImage;
use edkd_models::nn::AttnMask;
use edkd_models::nn::attention::causal_padding_mask;
use edkd_models::nn::rope::RopeScaling;
use edkd_models::teacher::positions_from_valid;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::served::ServedTeacher;

/// Bytes of one `[rows, vocab]` f32 block of log-probs on CPU. Kept well under glibc's
/// largest mmap threshold (32 MiB): bigger blocks are mmapped and page-faulted afresh on
/// every pass (at a 32k vocabulary, 16-sequence passes took 1.6x the CPU per token; see the
/// `grpc_vs_inprocess` bench). Also bounds memory at large vocabularies.
const CPU_LOGIT_CHUNK_BYTES: usize = 8 << 20;
/// Fewest target rows per CPU block: each block reads the whole LM head once more.
const CPU_MIN_LOGIT_ROWS: usize = 32;
/// Target rows per block on an accelerator, whose caching allocator does not fault and where
/// each block costs a host sync (512 x 128k x 4 B = 256 MiB).
const DEVICE_LOGIT_ROWS_PER_CHUNK: usize = 512;

/// One validated sequence to score.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeqInput {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    pub k: usize,
    pub temperature: f32,
    /// Encoded images (PNG or JPEG), one per image placeholder in `prompt`, in order.
    pub images: Vec<Bytes>,
    /// Positions the images add beyond their placeholders (their patch embeddings).
    pub image_positions: usize,
}

impl SeqInput {
    /// Tokens fed to the model: `prompt ++ target[..T-1]` (the last target token is only a
    /// label), with the images' positions.
    pub fn input_len(&self) -> usize {
        self.text_len() + self.image_positions
    }

    /// Text tokens fed to the model: `prompt ++ target[..T-1]`.
    fn text_len(&self) -> usize {
        self.prompt.len() + self.target.len() - 1
    }
}

/// A sequence ready for a forward pass: its images decoded and preprocessed.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<'a> {
    pub seq: &'a SeqInput,
    /// `[images, 3, H, W]` processed pixels on the CPU ([`Scorer::prepare`]); `None` for a
    /// text sequence.
    pub pixels: Option<&'a Tensor>,
}

/// Scores of one sequence, row-major `[positions, k]` / `[positions]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeqScores {
    pub k: usize,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    pub tail_logmass: Vec<f32>,
    pub gold_logprob: Vec<f32>,
}

/// Owns the teacher; lives on the batcher's thread.
pub struct Scorer {
    teacher: ServedTeacher,
}

fn torch(e: tch::TchError) -> Error {
    Error::Model(e.to_string())
}

fn caught(panic: Box<dyn std::any::Any + Send>) -> Error {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    Error::Model(message)
}

impl Scorer {
    pub fn new(teacher: impl Into<ServedTeacher>) -> Self {
        Self {
            teacher: teacher.into(),
        }
    }

    pub fn device(&self) -> Device {
        self.teacher.lm().device()
    }

    /// Decodes and preprocesses the images of `seq`, the request's sequence `index` (named
    /// in errors): `[images, 3, H, W]` on the CPU, `None` without images. An image that does
    /// not decode or is too large is INVALID_ARGUMENT naming `sequences[index].images[j]`;
    /// a panic in a decoder becomes [`Error::Model`].
    pub fn prepare(&self, index: usize, seq: &SeqInput) -> Result<Option<Tensor>> {
        if seq.images.is_empty() {
            return Ok(None);
        }
        std::panic::catch_unwind(AssertUnwindSafe(|| self.pixels(index, seq)))
            .unwrap_or_else(|panic| Err(caught(panic)))
            .map(Some)
    }

    fn pixels(&self, index: usize, seq: &SeqInput) -> Result<Tensor> {
        let Some(twin) = self.teacher.vision() else {
            return Err(Error::invalid(
                format!("sequences[{index}].images"),
                "this teacher reads no images",
            ));
        };
        let mut decoded: Vec<RgbImage> = Vec::with_capacity(seq.images.len());
        for (j, bytes) in seq.images.iter().enumerate() {
            let (_, image) = edkd_data::images::decode(bytes).map_err(|problem| {
                Error::invalid(
                    format!("sequences[{index}].images[{j}]"),
                    problem.to_string(),
                )
            })?;
            decoded.push(image);
        }
        // A processor that does not crop to the tower's size is the teacher's fault, not
        // the image's.
        let tower = twin.model.embedder.tower_config();
        let want = [
            decoded.len() as i64,
            tower.num_channels,
            tower.image_size,
            tower.image_size,
        ];
        let misfit = |what: String| {
            Error::Model(format!(
                "sequences[{index}].images: {what}; the tower reads {want:?}: check the \
                 teacher's preprocessor_config.json"
            ))
        };
        let pixels = twin
            .processor
            .batch(&decoded)
            .map_err(|e| misfit(e.to_string()))?;
        if pixels.size() != want {
            return Err(misfit(format!(
                "the image processor made pixels of shape {:?}",
                pixels.size()
            )));
        }
        Ok(pixels)
    }

    /// Target rows whose full-vocabulary log-probs are materialised at once.
    fn logit_rows_per_chunk(&self) -> usize {
        let vocab = self.teacher.lm().config.vocab_size.max(1) as usize;
        match self.device() {
            Device::Cpu => {
                (CPU_LOGIT_CHUNK_BYTES / (vocab * size_of::<f32>())).max(CPU_MIN_LOGIT_ROWS)
            }
            _ => DEVICE_LOGIT_ROWS_PER_CHUNK,
        }
    }

    /// Scores `seqs` in one right-padded forward pass, decoding their images first (a bad
    /// one fails the whole pass: the batcher uses [`Scorer::prepare`] and
    /// [`Scorer::score_prepared`] to fail only its request). Inputs must be validated (ids
    /// below the vocabulary, non-empty prompt and target, k <= vocab).
    pub fn score(&self, seqs: &[&SeqInput]) -> Result<Vec<SeqScores>> {
        let pixels = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| self.prepare(i, s))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<Prepared<'_>> = seqs
            .iter()
            .zip(&pixels)
            .map(|(&seq, pixels)| Prepared {
                seq,
                pixels: pixels.as_ref(),
            })
            .collect();
        self.score_prepared(&rows)
    }

    /// Scores prepared sequences in one right-padded forward pass (text and image sequences
    /// may share it). A libtorch panic inside the model becomes [`Error::Model`]: the
    /// serving thread never unwinds.
    pub fn score_prepared(&self, seqs: &[Prepared<'_>]) -> Result<Vec<SeqScores>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let _no_grad = tch::no_grad_guard();
        std::panic::catch_unwind(AssertUnwindSafe(|| self.score_grouped(seqs)))
            .unwrap_or_else(|panic| Err(caught(panic)))
    }

    /// Sequences that may share a forward pass get the same key. Length-dependent RoPE
    /// (dynamic NTK, Phi-3 long-rope) picks its frequencies from the longest sequence in a
    /// pass, so a sequence is only batched with others that lead to the same tables as when
    /// it is scored alone.
    fn rope_group(&self, full_len: usize) -> usize {
        match &self.teacher.lm().config.rope.scaling {
            RopeScaling::Dynamic { original_max, .. } if full_len as i64 > *original_max => {
                full_len
            }
            RopeScaling::LongRope { original_max, .. } => {
                usize::from(full_len as i64 > *original_max)
            }
            _ => 0,
        }
    }

    /// Whether the model's RoPE depends on the sequence length (then the last target token
    /// is fed too, so the length matches scoring `prompt ++ target` alone).
    fn length_dependent_rope(&self) -> bool {
        matches!(
            self.teacher.lm().config.rope.scaling,
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
        )
    }

    fn score_grouped(&self, seqs: &[Prepared<'_>]) -> Result<Vec<SeqScores>> {
        if !self.length_dependent_rope() {
            return self.score_inner(seqs, false);
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, s) in seqs.iter().enumerate() {
            // The whole sequence, images included: what it is alone.
            let key = self.rope_group(s.seq.input_len() + 1);
            groups.entry(key).or_default().push(i);
        }
        let mut out: Vec<Option<SeqScores>> = vec![None; seqs.len()];
        for members in groups.values() {
            let part: Vec<Prepared<'_>> = members.iter().map(|&i| seqs[i]).collect();
            for (&i, scores) in members.iter().zip(self.score_inner(&part, true)?) {
                out[i] = Some(scores);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn score_inner(&self, seqs: &[Prepared<'_>], full: bool) -> Result<Vec<SeqScores>> {
        let device = self.device();
        let b = seqs.len();
        let fed = |s: &SeqInput| s.text_len() + usize::from(full);
        let t = seqs.iter().map(|s| fed(s.seq)).max().unwrap_or(0);
        let mut ids = vec![0i64; b * t];
        let mut valid = vec![false; b * t];
        // (row, text position) of the hidden state that predicts each target token.
        let mut text_rows: Vec<(usize, usize)> = Vec::new();
        let (mut gold, mut temps, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        for (r, s) in seqs.iter().map(|p| p.seq).enumerate() {
            let row = &mut ids[r * t..(r + 1) * t];
            let input = s.prompt.iter().chain(&s.target[..fed(s) - s.prompt.len()]);
            for (d, &tok) in row.iter_mut().zip(input) {
                *d = i64::from(tok);
            }
            valid[r * t..r * t + fed(s)].fill(true);
            for (j, &tok) in s.target.iter().enumerate() {
                text_rows.push((r, s.prompt.len() - 1 + j));
                gold.push(i64::from(tok));
                temps.push(s.temperature);
                ks.push(s.k as i64);
            }
        }
        let (b, t) = (b as i64, t as i64);
        let ids = Tensor::f_from_slice(&ids)
            .and_then(|x| x.f_reshape([b, t]))
            .and_then(|x| x.f_to_device(device))
            .map_err(torch)?;
        let valid = Tensor::f_from_slice(&valid)
            .and_then(|x| x.f_reshape([b, t]))
            .and_then(|x| x.f_to_device(device))
            .map_err(torch)?;
        let (hidden, rows) = match self.teacher.vision() {
            None => {
                let positions = positions_from_valid(&valid);
                let mask = if seqs.iter().all(|s| fed(s.seq) as i64 == t) {
                    AttnMask::Causal
                } else {
                    AttnMask::Explicit(causal_padding_mask(&valid, 0, t))
                };
                let hidden = self
                    .teacher
                    .lm()
                    .hidden(&ids, &positions, &mask, None, false); // [b, t, d]
                let rows: Vec<i64> = text_rows
                    .iter()
                    .map(|&(r, p)| r as i64 * t + p as i64)
                    .collect();
                (hidden, rows)
            }
            Some(twin) => {
                let pixels = self.batch_pixels(seqs)?;
                let (hidden, merged) = twin
                    .model
                    .hidden(&ids, &valid, pixels.as_ref(), false)
                    .map_err(|e| Error::Model(e.to_string()))?; // [b, L, d]
                let (_, width) = merged.valid.size2().map_err(torch)?;
                // Where each text position landed once the images were spliced in.
                let rows: Vec<i64> = text_rows
                    .iter()
                    .map(|&(r, p)| r as i64 * width + merged.text_position(r, p as i64))
                    .collect();
                (hidden, rows)
            }
        };
        let (hb, ht, d) = hidden.size3().map_err(torch)?;
        let hidden = hidden.f_reshape([hb * ht, d]).map_err(torch)?; // [b*L, d]

        let k_max = ks.iter().copied().max().unwrap_or(1);
        let n = rows.len();
        let mut topk_ids = Vec::with_capacity(n * k_max as usize);
        let mut topk_lp = Vec::with_capacity(n * k_max as usize);
        let mut tail = Vec::with_capacity(n);
        let mut gold_lp = Vec::with_capacity(n);
        let chunk_rows = self.logit_rows_per_chunk();
        for start in (0..n).step_by(chunk_rows) {
            let end = (start + chunk_rows).min(n);
            let chunk = TargetChunk {
                rows: &rows[start..end],
                gold: &gold[start..end],
                temps: &temps[start..end],
                ks: &ks[start..end],
                k_max,
            };
            let out = self.score_rows(&hidden, &chunk).map_err(torch)?;
            check_finite(&out, chunk.temps)?;
            topk_ids.extend(out.0.into_iter().map(|i| i as u32));
            topk_lp.extend(out.1);
            tail.extend(out.2);
            gold_lp.extend(out.3);
        }

        // Split the flat rows back into sequences, keeping each one's own k.
        let k_max = k_max as usize;
        let mut out = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs.iter().map(|p| p.seq) {
            let p = s.target.len();
            let mut scores = SeqScores {
                k: s.k,
                topk_ids: Vec::with_capacity(p * s.k),
                topk_logprobs: Vec::with_capacity(p * s.k),
                tail_logmass: tail[row..row + p].to_vec(),
                gold_logprob: gold_lp[row..row + p].to_vec(),
            };
            for r in row..row + p {
                scores
                    .topk_ids
                    .extend_from_slice(&topk_ids[r * k_max..r * k_max + s.k]);
                scores
                    .topk_logprobs
                    .extend_from_slice(&topk_lp[r * k_max..r * k_max + s.k]);
            }
            row += p;
            out.push(scores);
        }
        Ok(out)
    }

    /// The pass's images `[n, 3, H, W]` in row order (the order the twin fills its
    /// placeholder rows in), in the tower's dtype and on its device; `None` without images.
    fn batch_pixels(&self, seqs: &[Prepared<'_>]) -> Result<Option<Tensor>> {
        let Some(twin) = self.teacher.vision() else {
            return Ok(None);
        };
        let parts: Vec<&Tensor> = seqs.iter().filter_map(|s| s.pixels).collect();
        if parts.is_empty() {
            return Ok(None);
        }
        let tower = &twin.model.embedder.tower;
        let pixels = Tensor::f_cat(&parts, 0)
            .and_then(|x| x.f_to_kind(tower.kind()))
            .and_then(|x| x.f_to_device(tower.device()))
            .map_err(torch)?;
        Ok(Some(pixels))
    }

    /// Top-k ids `[n * k_max]`, their log-probs, tail log-mass `[n]` and gold log-prob `[n]`
    /// for hidden rows `chunk.rows`.
    #[allow(clippy::type_complexity)]
    fn score_rows(
        &self,
        hidden: &Tensor,
        chunk: &TargetChunk<'_>,
    ) -> Result<(Vec<i64>, Vec<f32>, Vec<f32>, Vec<f32>), tch::TchError> {
        let device = self.device();
        let n = chunk.rows.len() as i64;
        let to_dev = |t: Tensor| t.f_to_device(device);
        let rows = to_dev(Tensor::f_from_slice(chunk.rows)?)?;
        let gold = to_dev(Tensor::f_from_slice(chunk.gold)?.f_reshape([n, 1])?)?;
        let temps = to_dev(Tensor::f_from_slice(chunk.temps)?.f_reshape([n, 1])?)?;
        let ks = to_dev(Tensor::f_from_slice(chunk.ks)?.f_reshape([n, 1])?)?;

        let selected = hidden.f_index_select(0, &rows)?; // [n, d]
        // In place where possible: every [n, V] temporary is a large allocation.
        let mut logp = {
            let mut logits = self.teacher.lm().logits(&selected).f_to_kind(Kind::Float)?; // [n, V]
            let _ = logits.f_div_(&temps)?;
            logits.f_log_softmax(-1, Kind::Float)? // [n, V]
        };
        let (top_lp, top_ids) = logp.f_topk(chunk.k_max, -1, true, true)?; // [n, k_max]
        let gold_lp = logp.f_gather(1, &gold, false)?.f_reshape([n])?;
        // Tail = logsumexp over the tokens outside each row's own top k: exact even when the
        // tail is far below f32's resolution of 1 - sum(p). Columns past a row's k re-mask
        // its top-1 token, which is already masked.
        let cols = to_dev(Tensor::f_arange(chunk.k_max, (Kind::Int64, Device::Cpu))?)?
            .f_reshape([1, chunk.k_max])?;
        let in_row_k = cols.f_lt_tensor(&ks)?; // [n, k_max]
        let first = top_ids
            .f_narrow(1, 0, 1)?
            .f_expand([n, chunk.k_max], false)?;
        let masked_ids = top_ids.f_where_self(&in_row_k, &first)?;
        let _ = logp.f_scatter_value_(1, &masked_ids, f64::NEG_INFINITY)?;
        let tail = logp.f_logsumexp([1], false)?; // [n]

        let flat = |t: &Tensor| -> Result<Tensor, tch::TchError> {
            t.f_to_device(Device::Cpu)?.f_contiguous()?.f_reshape([-1])
        };
        Ok((
            Vec::<i64>::try_from(&flat(&top_ids)?)?,
            Vec::<f32>::try_from(&flat(&top_lp)?)?,
            Vec::<f32>::try_from(&flat(&tail)?)?,
            Vec::<f32>::try_from(&flat(&gold_lp)?)?,
        ))
    }
}

/// Errors if the model produced NaN or +inf log-probs (or a NaN tail): the proto promises
/// log-probs, so a broken model gets INTERNAL, never an answer with status OK.
#[allow(clippy::type_complexity)]
fn check_finite(out: &(Vec<i64>, Vec<f32>, Vec<f32>, Vec<f32>), temps: &[f32]) -> Result<()> {
    let bad = |v: &f32| v.is_nan() || *v == f32::INFINITY;
    let (_, topk, tail, gold) = out;
    let k = topk.len() / tail.len().max(1);
    let first = topk
        .iter()
        .position(bad)
        .map(|i| (i / k.max(1), "top-k log-prob", topk[i]))
        .or_else(|| {
            tail.iter()
                .position(bad)
                .map(|i| (i, "tail log-mass", tail[i]))
        })
        .or_else(|| {
            gold.iter()
                .position(bad)
                .map(|i| (i, "gold log-prob", gold[i]))
        });
    match first {
        None => Ok(()),
        Some((row, what, value)) => Err(Error::Model(format!(
            "the teacher produced a {what} of {value} (target row {row} of the pass, \
             temperature {}): its logits are not finite",
            temps.get(row).copied().unwrap_or(f32::NAN)
        ))),
    }
}

/// A slice of target rows scored together.
struct TargetChunk<'a> {
    rows: &'a [i64],
    gold: &'a [i64],
    temps: &'a [f32],
    ks: &'a [i64],
    k_max: i64,
}
