//! Scoring a batch of sequences with a loaded teacher: one padded forward pass, then
//! log-softmax at temperature T only at target positions, top-k, tail log-mass and the gold
//! token's log-prob.

use std::panic::AssertUnwindSafe;

use edkd_models::Teacher;
use edkd_models::nn::AttnMask;
use edkd_models::nn::attention::causal_padding_mask;
use edkd_models::nn::rope::RopeScaling;
use edkd_models::teacher::positions_from_valid;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

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
#[derive(Debug, Clone, PartialEq)]
pub struct SeqInput {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    pub k: usize,
    pub temperature: f32,
}

impl SeqInput {
    /// Tokens fed to the model: `prompt ++ target[..T-1]` (the last target token is only a
    /// label).
    pub fn input_len(&self) -> usize {
        self.prompt.len() + self.target.len() - 1
    }
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
    teacher: Teacher,
}

fn torch(e: tch::TchError) -> Error {
    Error::Model(e.to_string())
}

impl Scorer {
    pub fn new(teacher: Teacher) -> Self {
        Self { teacher }
    }

    pub fn device(&self) -> Device {
        self.teacher.model.device()
    }

    /// Target rows whose full-vocabulary log-probs are materialised at once.
    fn logit_rows_per_chunk(&self) -> usize {
        let vocab = self.teacher.model.config.vocab_size.max(1) as usize;
        match self.device() {
            Device::Cpu => {
                (CPU_LOGIT_CHUNK_BYTES / (vocab * size_of::<f32>())).max(CPU_MIN_LOGIT_ROWS)
            }
            _ => DEVICE_LOGIT_ROWS_PER_CHUNK,
        }
    }

    /// Scores `seqs` in one right-padded forward pass. Inputs must be validated (ids below
    /// the vocabulary, non-empty prompt and target, k <= vocab). A libtorch panic inside the
    /// model becomes [`Error::Model`]: the serving thread never unwinds.
    pub fn score(&self, seqs: &[&SeqInput]) -> Result<Vec<SeqScores>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let _no_grad = tch::no_grad_guard();
        std::panic::catch_unwind(AssertUnwindSafe(|| self.score_grouped(seqs))).unwrap_or_else(
            |panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::Model(message))
            },
        )
    }

    /// Sequences that may share a forward pass get the same key. Length-dependent RoPE
    /// (dynamic NTK, Phi-3 long-rope) picks its frequencies from the longest sequence in a
    /// pass, so a sequence is only batched with others that lead to the same tables as when
    /// it is scored alone.
    fn rope_group(&self, full_len: usize) -> usize {
        match &self.teacher.model.config.rope.scaling {
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
            self.teacher.model.config.rope.scaling,
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
        )
    }

    fn score_grouped(&self, seqs: &[&SeqInput]) -> Result<Vec<SeqScores>> {
        if !self.length_dependent_rope() {
            return self.score_inner(seqs, false);
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, s) in seqs.iter().enumerate() {
            let key = self.rope_group(s.prompt.len() + s.target.len());
            groups.entry(key).or_default().push(i);
        }
        let mut out: Vec<Option<SeqScores>> = vec![None; seqs.len()];
        for members in groups.values() {
            let part: Vec<&SeqInput> = members.iter().map(|&i| seqs[i]).collect();
            for (&i, scores) in members.iter().zip(self.score_inner(&part, true)?) {
                out[i] = Some(scores);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn score_inner(&self, seqs: &[&SeqInput], full: bool) -> Result<Vec<SeqScores>> {
        let model = &self.teacher.model;
        let device = self.device();
        let b = seqs.len();
        let fed = |s: &SeqInput| s.input_len() + usize::from(full);
        let t = seqs.iter().map(|s| fed(s)).max().unwrap_or(0);
        let mut ids = vec![0i64; b * t];
        let mut valid = vec![false; b * t];
        // Flat `[b * t]` index of the hidden state that predicts each target token.
        let mut rows = Vec::new();
        let (mut gold, mut temps, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        for (r, s) in seqs.iter().enumerate() {
            let row = &mut ids[r * t..(r + 1) * t];
            let input = s.prompt.iter().chain(&s.target[..fed(s) - s.prompt.len()]);
            for (d, &tok) in row.iter_mut().zip(input) {
                *d = i64::from(tok);
            }
            valid[r * t..r * t + fed(s)].fill(true);
            for (j, &tok) in s.target.iter().enumerate() {
                rows.push((r * t + s.prompt.len() - 1 + j) as i64);
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
        let positions = positions_from_valid(&valid);
        let mask = if seqs.iter().all(|s| fed(s) as i64 == t) {
            AttnMask::Causal
        } else {
            AttnMask::Explicit(causal_padding_mask(&valid, 0, t))
        };
        let hidden = model.hidden(&ids, &positions, &mask, None, false); // [b, t, d]
        let d = hidden.size().last().copied().unwrap_or(0);
        let hidden = hidden.f_reshape([b * t, d]).map_err(torch)?; // [b*t, d]

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
        for s in seqs {
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
            let mut logits = self
                .teacher
                .model
                .logits(&selected)
                .f_to_kind(Kind::Float)?; // [n, V]
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
