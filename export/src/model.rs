//! An exported folder under ONNX Runtime: cached decoding through the graphs (encode once
//! and reuse the cross-attention K/V, grow the self-attention cache one token a step;
//! or prefill and grow the cache of a decoder-only model), batched generation matching
//! `edkd_models::generate_seq2seq` / `generate`, and teacher-forced logits.

use std::path::{Path, PathBuf};

use edkd_models::generate::{GenerationConfig, check_ids};
use edkd_models::sampling::{Rng, select};
use ort::session::Session;
use ort::value::DynValue;
use tch::Tensor;

use crate::causal::{past_name, present_name};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, ModelKind};
use crate::runtime::{self, Inputs, f32_tensor, f32_values, i64_tensor, run, take};
use crate::student::names;

/// Logits `[batch, len, vocab]`, row-major.
#[derive(Debug, Clone)]
pub struct Logits {
    pub batch: usize,
    pub len: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    fn from_value(v: &DynValue) -> Result<Self> {
        let (shape, data) = f32_values(v, names::LOGITS)?;
        let [batch, len, vocab] = shape[..] else {
            return Err(Error::Ort {
                context: "reading logits".into(),
                msg: format!("expected [batch, len, vocab], got {shape:?}"),
            });
        };
        Ok(Self {
            batch,
            len,
            vocab,
            data,
        })
    }

    /// The logits of row `b` at position `t`.
    pub fn at(&self, b: usize, t: usize) -> &[f32] {
        let start = (b * self.len + t) * self.vocab;
        &self.data[start..start + self.vocab]
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.data).reshape([
            self.batch as i64,
            self.len as i64,
            self.vocab as i64,
        ])
    }
}

enum Graphs {
    Seq2seq { encoder: Session, decoder: Session },
    Causal { model: Session },
}

/// An export folder opened under ONNX Runtime.
pub struct OnnxModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
    graphs: Graphs,
}

/// Per-generation state of the decoder.
struct State {
    batch: usize,
    past: Vec<(DynValue, DynValue)>,
    /// Student: encoder mask and cross-attention K/V per layer.
    enc_mask: Option<DynValue>,
    cross: Vec<(DynValue, DynValue)>,
    /// Decoder-only: the key mask so far (`[batch, len]`, 1 = real) and each row's next
    /// position.
    key_mask: Vec<Vec<i64>>,
    next_pos: Vec<i64>,
    /// Student: decoder tokens fed so far (the next one's position).
    fed: i64,
}

impl OnnxModel {
    /// Opens `dir` (with `export.json`) using `threads` intra-op threads per graph.
    pub fn load(dir: &Path, threads: usize) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let mpath = dir.join(crate::manifest::FILE);
        let open = |name: &str| -> Result<Session> {
            runtime::session(&dir.join(&manifest.graph(name, &mpath)?.file), threads)
        };
        let graphs = match manifest.kind {
            ModelKind::Seq2seq => Graphs::Seq2seq {
                encoder: open("encoder")?,
                decoder: open("decoder")?,
            },
            ModelKind::Causal => Graphs::Causal {
                model: open("model")?,
            },
        };
        Ok(Self {
            manifest,
            dir: dir.to_owned(),
            graphs,
        })
    }

    pub fn kind(&self) -> ModelKind {
        self.manifest.kind
    }

    /// The export's tokenizer, when it has one.
    pub fn tokenizer(&self) -> Result<Option<edkd_models::Tokenizer>> {
        match &self.manifest.tokenizer {
            Some(f) => Ok(Some(edkd_models::Tokenizer::from_file(&self.dir.join(f))?)),
            None => Ok(None),
        }
    }

    fn empty_past(&self, batch: usize) -> Result<Vec<(DynValue, DynValue)>> {
        let m = &self.manifest;
        let shape = [batch, m.num_kv_heads as usize, 0, m.head_dim as usize];
        (0..m.decoder_layers)
            .map(|_| {
                Ok((
                    f32_tensor(&shape, Vec::new())?,
                    f32_tensor(&shape, Vec::new())?,
                ))
            })
            .collect()
    }

    /// Runs the encoder (student) or the prefill (decoder-only) over `prompts` and
    /// returns the logits `[batch, 1, vocab]` of the first new token.
    fn start(&mut self, prompts: &[Vec<i64>]) -> Result<(State, Logits)> {
        let b = prompts.len();
        let mut state = State {
            batch: b,
            past: self.empty_past(b)?,
            enc_mask: None,
            cross: Vec::new(),
            key_mask: Vec::new(),
            next_pos: Vec::new(),
            fed: 0,
        };
        let pad = self.manifest.pad_token_id;
        let layers = self.manifest.decoder_layers as usize;
        match &mut self.graphs {
            Graphs::Seq2seq { encoder, .. } => {
                let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
                let mut ids = vec![pad; b * len];
                let mut mask = vec![0i64; b * len];
                for (r, p) in prompts.iter().enumerate() {
                    ids[r * len..r * len + p.len()].copy_from_slice(p);
                    mask[r * len..r * len + p.len()]
                        .iter_mut()
                        .for_each(|m| *m = 1);
                }
                let inputs: Inputs<'_> = vec![
                    (names::INPUT_IDS.into(), i64_tensor(&[b, len], ids)?.into()),
                    (
                        names::ATTENTION_MASK.into(),
                        i64_tensor(&[b, len], mask.clone())?.into(),
                    ),
                ];
                let mut out = run(encoder, inputs, "encoder.onnx")?;
                for i in 0..layers {
                    let k = take(&mut out, &names::cross(i, "key"))?;
                    let v = take(&mut out, &names::cross(i, "value"))?;
                    state.cross.push((k, v));
                }
                drop(out);
                state.enc_mask = Some(i64_tensor(&[b, len], mask)?);
                let bos = self.manifest.bos_token_id.unwrap_or(0);
                let logits = self.step(&mut state, &vec![bos; b])?;
                Ok((state, logits))
            }
            Graphs::Causal { model } => {
                let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
                let mut ids = vec![pad; b * len];
                let mut mask = vec![0i64; b * len];
                let mut pos = vec![0i64; b * len];
                for (r, p) in prompts.iter().enumerate() {
                    let off = r * len + (len - p.len()); // left padding
                    ids[off..off + p.len()].copy_from_slice(p);
                    for (j, k) in (off..off + p.len()).enumerate() {
                        mask[k] = 1;
                        pos[k] = j as i64;
                    }
                    state.key_mask.push(mask[r * len..(r + 1) * len].to_vec());
                    state.next_pos.push(p.len() as i64);
                }
                let mut inputs: Inputs<'_> = vec![
                    (names::INPUT_IDS.into(), i64_tensor(&[b, len], ids)?.into()),
                    (
                        names::ATTENTION_MASK.into(),
                        i64_tensor(&[b, len], mask)?.into(),
                    ),
                    (
                        names::POSITION_IDS.into(),
                        i64_tensor(&[b, len], pos)?.into(),
                    ),
                    (
                        names::LOGITS_TO_KEEP.into(),
                        i64_tensor(&[1], vec![1])?.into(),
                    ),
                ];
                for (i, (k, v)) in std::mem::take(&mut state.past).into_iter().enumerate() {
                    inputs.push((past_name(i, "key").into(), k.into()));
                    inputs.push((past_name(i, "value").into(), v.into()));
                }
                let mut out = run(model, inputs, "model.onnx")?;
                let logits = Logits::from_value(&take(&mut out, names::LOGITS)?)?;
                for i in 0..layers {
                    let k = take(&mut out, &present_name(i, "key"))?;
                    let v = take(&mut out, &present_name(i, "value"))?;
                    state.past.push((k, v));
                }
                Ok((state, logits))
            }
        }
    }

    /// Feeds one token per row and returns the next logits `[batch, 1, vocab]`.
    fn step(&mut self, state: &mut State, feed: &[i64]) -> Result<Logits> {
        let b = state.batch;
        let layers = self.manifest.decoder_layers as usize;
        let past = std::mem::take(&mut state.past);
        let (session, what, present): (&mut Session, &str, fn(usize, &str) -> String) =
            match &mut self.graphs {
                Graphs::Seq2seq { decoder, .. } => (decoder, "decoder.onnx", names::present_self),
                Graphs::Causal { model } => (model, "model.onnx", present_name),
            };
        let mut inputs: Inputs<'_> = vec![
            (
                names::INPUT_IDS.into(),
                i64_tensor(&[b, 1], feed.to_vec())?.into(),
            ),
            (
                names::LOGITS_TO_KEEP.into(),
                i64_tensor(&[1], vec![1])?.into(),
            ),
        ];
        if let Some(mask) = &state.enc_mask {
            // Student: positions count decoder tokens; the cross K/V are read in place.
            let pos = state.fed;
            state.fed += 1;
            inputs.push((
                names::POSITION_IDS.into(),
                i64_tensor(&[b, 1], vec![pos; b])?.into(),
            ));
            inputs.push((names::ENCODER_MASK.into(), mask.into()));
            for (i, ((k, v), (ck, cv))) in past.into_iter().zip(&state.cross).enumerate() {
                inputs.push((names::past_self(i, "key").into(), k.into()));
                inputs.push((names::past_self(i, "value").into(), v.into()));
                inputs.push((names::past_cross(i, "key").into(), ck.into()));
                inputs.push((names::past_cross(i, "value").into(), cv.into()));
            }
        } else {
            for row in state.key_mask.iter_mut() {
                row.push(1);
            }
            let t = state.key_mask[0].len();
            let mask: Vec<i64> = state.key_mask.concat();
            inputs.push((
                names::ATTENTION_MASK.into(),
                i64_tensor(&[b, t], mask)?.into(),
            ));
            let pos = state.next_pos.clone();
            state.next_pos.iter_mut().for_each(|p| *p += 1);
            inputs.push((names::POSITION_IDS.into(), i64_tensor(&[b, 1], pos)?.into()));
            for (i, (k, v)) in past.into_iter().enumerate() {
                inputs.push((past_name(i, "key").into(), k.into()));
                inputs.push((past_name(i, "value").into(), v.into()));
            }
        }
        let mut out = run(session, inputs, what)?;
        let logits = Logits::from_value(&take(&mut out, names::LOGITS)?)?;
        for i in 0..layers {
            let k = take(&mut out, &present(i, "key"))?;
            let v = take(&mut out, &present(i, "value"))?;
            state.past.push((k, v));
        }
        Ok(logits)
    }

    /// Generates up to `cfg.max_new_tokens` per prompt, as edkd's libtorch generation
    /// does (student: right-padded inputs, decoder from BOS; decoder-only: left padding,
    /// positions counting real tokens); returns each row's new tokens.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i64>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>> {
        check_ids(prompts, self.manifest.vocab_size)?;
        if cfg.max_new_tokens == 0 || prompts.is_empty() {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        let b = prompts.len();
        let mut rng = Rng::new(cfg.seed);
        let mut tokens = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let (mut state, mut logits) = self.start(prompts)?;
        for step in 0..cfg.max_new_tokens {
            let picked = pick(&logits, cfg, &mut rng);
            let feed: Vec<i64> = picked
                .iter()
                .enumerate()
                .map(|(r, &t)| {
                    if done[r] {
                        return cfg.pad_token_id;
                    }
                    tokens[r].push(t);
                    done[r] = cfg.eos_token_ids.contains(&t);
                    t
                })
                .collect();
            if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
                break;
            }
            logits = self.step(&mut state, &feed)?;
        }
        Ok(tokens)
    }

    /// Greedy decoding of one prompt, timed the way `edkd bench` times libtorch: returns
    /// (seconds to the first token, seconds for the `new_tokens - 1` steps after it).
    pub fn time_greedy(&mut self, prompt: &[i64], new_tokens: usize) -> Result<(f64, f64)> {
        let t0 = std::time::Instant::now();
        let (mut state, logits) = self.start(std::slice::from_ref(&prompt.to_vec()))?;
        let mut token = argmax(logits.at(0, 0));
        let first = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        for _ in 1..new_tokens {
            let l = self.step(&mut state, &[token])?;
            token = argmax(l.at(0, 0));
        }
        Ok((first, t1.elapsed().as_secs_f64()))
    }

    /// Teacher-forced student logits `[b, t, vocab]`: `inputs` (right-padded into the
    /// encoder) and equally long `decoder_ids` rows, no cache.
    pub fn seq2seq_logits(
        &mut self,
        inputs: &[Vec<i64>],
        decoder_ids: &[Vec<i64>],
    ) -> Result<Logits> {
        let Graphs::Seq2seq { .. } = self.graphs else {
            return Err(Error::Input("seq2seq_logits needs a student export".into()));
        };
        let t = decoder_ids.first().map_or(0, Vec::len);
        if decoder_ids.len() != inputs.len() || decoder_ids.iter().any(|d| d.len() != t) || t == 0 {
            return Err(Error::Input(
                "decoder_ids: one non-empty row per input, all of one length".into(),
            ));
        }
        let b = inputs.len();
        let (mut state, _) = self.start(inputs)?;
        state.past = self.empty_past(b)?; // discard the BOS step: decode all of decoder_ids
        let Graphs::Seq2seq { decoder, .. } = &mut self.graphs else {
            unreachable!("checked above")
        };
        let mut inputs: Inputs<'_> = vec![
            (
                names::INPUT_IDS.into(),
                i64_tensor(&[b, t], decoder_ids.concat())?.into(),
            ),
            (
                names::LOGITS_TO_KEEP.into(),
                i64_tensor(&[1], vec![0])?.into(),
            ),
            (
                names::POSITION_IDS.into(),
                i64_tensor(&[b, t], (0..b).flat_map(|_| 0..t as i64).collect())?.into(),
            ),
            (
                names::ENCODER_MASK.into(),
                state.enc_mask.as_ref().expect("seq2seq").into(),
            ),
        ];
        for (i, ((k, v), (ck, cv))) in std::mem::take(&mut state.past)
            .into_iter()
            .zip(&state.cross)
            .enumerate()
        {
            inputs.push((names::past_self(i, "key").into(), k.into()));
            inputs.push((names::past_self(i, "value").into(), v.into()));
            inputs.push((names::past_cross(i, "key").into(), ck.into()));
            inputs.push((names::past_cross(i, "value").into(), cv.into()));
        }
        let mut out = run(decoder, inputs, "decoder.onnx")?;
        Logits::from_value(&take(&mut out, names::LOGITS)?)
    }

    /// Logits `[b, t, vocab]` of a decoder-only export over padded rows `ids` with `mask`
    /// (1 = real token); positions count real tokens, as edkd's `forward_padded` does.
    pub fn causal_logits(&mut self, ids: &[Vec<i64>], mask: &[Vec<i64>]) -> Result<Logits> {
        let Graphs::Causal { .. } = self.graphs else {
            return Err(Error::Input(
                "causal_logits needs a decoder-only export".into(),
            ));
        };
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let mut pos = Vec::with_capacity(b * t);
        for row in mask {
            let mut seen = 0i64;
            for &m in row {
                pos.push(if m != 0 { seen } else { 0 });
                seen += (m != 0) as i64;
            }
        }
        let past = self.empty_past(b)?;
        let Graphs::Causal { model } = &mut self.graphs else {
            unreachable!("checked above")
        };
        let mut inputs: Inputs<'_> = vec![
            (
                names::INPUT_IDS.into(),
                i64_tensor(&[b, t], ids.concat())?.into(),
            ),
            (
                names::ATTENTION_MASK.into(),
                i64_tensor(&[b, t], mask.concat())?.into(),
            ),
            (names::POSITION_IDS.into(), i64_tensor(&[b, t], pos)?.into()),
            (
                names::LOGITS_TO_KEEP.into(),
                i64_tensor(&[1], vec![0])?.into(),
            ),
        ];
        for (i, (k, v)) in past.into_iter().enumerate() {
            inputs.push((past_name(i, "key").into(), k.into()));
            inputs.push((past_name(i, "value").into(), v.into()));
        }
        let mut out = run(model, inputs, "model.onnx")?;
        Logits::from_value(&take(&mut out, names::LOGITS)?)
    }
}

fn argmax(row: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as i64
}

/// The next token of each row from logits `[b, 1, V]`, below `cfg.max_token_id`.
fn pick(logits: &Logits, cfg: &GenerationConfig, rng: &mut Rng) -> Vec<i64> {
    let t = Tensor::from_slice(&logits.data).reshape([logits.batch as i64, logits.vocab as i64]);
    let v = logits.vocab as i64;
    match cfg.max_token_id {
        Some(limit) if limit > 0 && limit < v => {
            select(&t.narrow(-1, 0, limit), &cfg.sampling, rng)
        }
        _ => select(&t, &cfg.sampling, rng),
    }
}
