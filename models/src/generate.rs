//! Batched generation for decoder-only models: left padding, one prefill, then cached
//! single-token steps.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::AttnMask;
use crate::nn::attention::causal_padding_mask;
use crate::sampling::{Rng, Sampling, select};
use crate::student::Encoded;
use crate::teacher::{CausalLm, positions_from_valid};

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation of a row stops after it emits any of these.
    pub eos_token_ids: Vec<i64>,
    /// Fills the left padding of shorter prompts and the tail of finished rows.
    pub pad_token_id: i64,
    pub seed: u64,
    /// Ids at or above this are never generated: the columns a model has beyond its
    /// tokenizer's vocabulary (padding), or beyond what another model will read back.
    pub max_token_id: Option<i64>,
}

impl GenerationConfig {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            seed: 0,
            max_token_id: None,
        }
    }
}

/// The next token of every row: `cfg.sampling` over the ids below `cfg.max_token_id`.
pub(crate) fn pick(logits: &Tensor, cfg: &GenerationConfig, rng: &mut Rng) -> Vec<i64> {
    let v = logits.size()[logits.dim() - 1];
    match cfg.max_token_id {
        Some(limit) if limit > 0 && limit < v => {
            select(&logits.narrow(-1, 0, limit), &cfg.sampling, rng)
        }
        _ => select(logits, &cfg.sampling, rng),
    }
}

/// Checks prompt ids against the vocabulary; names the offending row and token.
pub fn check_ids(prompts: &[Vec<i64>], vocab: i64) -> Result<()> {
    for (row, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Input(format!("prompt {row} is empty")));
        }
        if let Some(&bad) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Input(format!(
                "prompt {row}: token id {bad} is outside the vocabulary [0, {vocab})"
            )));
        }
    }
    Ok(())
}

/// Left-pads prompts into `[b, L]` ids and a bool validity mask.
pub fn left_pad(prompts: &[Vec<i64>], pad: i64, device: tch::Device) -> (Tensor, Tensor) {
    let b = prompts.len();
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![pad; b * len];
    let mut valid = vec![false; b * len];
    for (r, p) in prompts.iter().enumerate() {
        let off = r * len + (len - p.len());
        ids[off..off + p.len()].copy_from_slice(p);
        valid[off..off + p.len()].iter_mut().for_each(|v| *v = true);
    }
    let shape = [b as i64, len as i64];
    (
        Tensor::from_slice(&ids).reshape(shape).to_device(device),
        Tensor::from_slice(&valid).reshape(shape).to_device(device),
    )
}

/// Tracks which rows are done and collects their new tokens.
pub(crate) struct Outputs {
    pub tokens: Vec<Vec<i64>>,
    pub done: Vec<bool>,
    eos: Vec<i64>,
    pad: i64,
}

impl Outputs {
    pub fn new(b: usize, eos: &[i64], pad: i64) -> Self {
        Self {
            tokens: vec![Vec::new(); b],
            done: vec![false; b],
            eos: eos.to_vec(),
            pad,
        }
    }

    /// Records one step; returns the ids to feed next (pad for finished rows).
    pub fn push(&mut self, picked: &[i64]) -> Vec<i64> {
        picked
            .iter()
            .enumerate()
            .map(|(r, &t)| {
                if self.done[r] {
                    return self.pad;
                }
                self.tokens[r].push(t);
                if self.eos.contains(&t) {
                    self.done[r] = true;
                }
                t
            })
            .collect()
    }

    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// Generates up to `cfg.max_new_tokens` for each prompt; returns only the new tokens of
/// each row (ending with EOS when it was produced).
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<i64>>> {
    check_ids(prompts, model.config.vocab_size)?;
    if cfg.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let (ids, valid) = left_pad(prompts, cfg.pad_token_id, model.device());
    let x = tch::no_grad(|| model.embed(&ids));
    generate_from_embeds(model, &x, &valid, cfg)
}

/// [`generate`] from prompt embeddings: `x` (`[b, L, d]`, left-padded, as
/// [`CausalLm::embed`] makes them) and `valid` (`[b, L]`, bool). Prompts that are not all
/// token ids (image patches spliced in, [`crate::multimodal`]) start here; one prefill over
/// the embeddings, then cached single-token steps.
pub fn generate_from_embeds(
    model: &CausalLm,
    x: &Tensor,
    valid: &Tensor,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<i64>>> {
    let (b, prompt_len, _) = x.size3()?;
    if cfg.max_new_tokens == 0 || b == 0 {
        return Ok(vec![Vec::new(); b as usize]);
    }
    let device = model.device();
    let valid = valid.to_device(device);
    let padded = valid.all().int64_value(&[]) == 0;
    let capacity = prompt_len + cfg.max_new_tokens as i64;
    if capacity > model.config.max_positions {
        tracing::warn!(
            capacity,
            max_positions = model.config.max_positions,
            "prompt + new tokens exceed the model's trained context"
        );
    }
    let key_valid = Tensor::ones([b, capacity], (Kind::Bool, device));
    key_valid.narrow(1, 0, prompt_len).copy_(&valid);
    let mut rng = Rng::new(cfg.seed);
    let mut out = Outputs::new(b as usize, &cfg.eos_token_ids, cfg.pad_token_id);

    tch::no_grad(|| -> Result<()> {
        let mut cache = model.new_cache(b, capacity);
        let positions = positions_from_valid(&valid);
        let mask = if padded {
            AttnMask::Explicit(causal_padding_mask(
                &key_valid.narrow(1, 0, prompt_len),
                0,
                prompt_len,
            ))
        } else {
            AttnMask::Causal
        };
        let hidden = model.hidden_embeds(
            &x.to_device(device),
            &positions,
            &mask,
            Some(&mut cache),
            false,
        );
        let mut logits = model.logits(&hidden.narrow(1, prompt_len - 1, 1).squeeze_dim(1));
        let first_new_pos = positions.narrow(1, prompt_len - 1, 1) + 1; // [b, 1]
        for step in 0..cfg.max_new_tokens {
            let picked = pick(&logits, cfg, &mut rng);
            let feed = out.push(&picked);
            if out.all_done() || step + 1 == cfg.max_new_tokens {
                break;
            }
            let past = cache.len();
            let x = Tensor::from_slice(&feed).reshape([b, 1]).to_device(device);
            let mask = if padded {
                AttnMask::Explicit(causal_padding_mask(
                    &key_valid.narrow(1, 0, past + 1),
                    past,
                    1,
                ))
            } else {
                AttnMask::Full
            };
            let pos = &first_new_pos + step as i64;
            let h = model.hidden(&x, &pos, &mask, Some(&mut cache), false);
            logits = model.logits(&h.squeeze_dim(1));
        }
        Ok(())
    })?;
    Ok(out.tokens)
}

/// Right-pads inputs into `[b, S]` ids and a bool validity mask (the encoder's layout).
pub fn right_pad(inputs: &[Vec<i64>], pad: i64, device: tch::Device) -> (Tensor, Tensor) {
    let b = inputs.len();
    let len = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![pad; b * len];
    let mut valid = vec![false; b * len];
    for (r, p) in inputs.iter().enumerate() {
        ids[r * len..r * len + p.len()].copy_from_slice(p);
        valid[r * len..r * len + p.len()]
            .iter_mut()
            .for_each(|v| *v = true);
    }
    let shape = [b as i64, len as i64];
    (
        Tensor::from_slice(&ids).reshape(shape).to_device(device),
        Tensor::from_slice(&valid).reshape(shape).to_device(device),
    )
}

/// Whether student generation keeps decoder state between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Encode once, cross-attention K/V once, self-attention KV cache: O(1) work per step
    /// in the output length (besides attention over the cache).
    Cached,
    /// Recompute the whole decoder prefix every step, as the paper's reference code does.
    /// Kept for the speed-up benchmark and as a test oracle.
    Recompute,
}

/// Generates outputs for each input with the encoder-decoder student. The decoder starts
/// from the student's BOS; returns the new tokens of each row (ending with EOS when produced).
pub fn generate_seq2seq(
    model: &crate::student::Student,
    inputs: &[Vec<i64>],
    cfg: &GenerationConfig,
    decoding: Decoding,
) -> Result<Vec<Vec<i64>>> {
    check_ids(inputs, model.config.vocab_size)?;
    if cfg.max_new_tokens == 0 || inputs.is_empty() {
        return Ok(vec![Vec::new(); inputs.len()]);
    }
    let (ids, valid) = right_pad(inputs, model.config.pad_token_id, model.device());
    let enc = tch::no_grad(|| model.encode(&ids, &valid, false));
    generate_from_encoded(model, &enc, cfg, decoding)
}

/// [`generate_seq2seq`] after the encoder: decodes from `enc`, however it was made (token
/// ids, or text with image patches spliced in, [`crate::multimodal`]).
pub fn generate_from_encoded(
    model: &crate::student::Student,
    enc: &Encoded,
    cfg: &GenerationConfig,
    decoding: Decoding,
) -> Result<Vec<Vec<i64>>> {
    let (b, _, _) = enc.memory.size3()?;
    if cfg.max_new_tokens == 0 || b == 0 {
        return Ok(vec![Vec::new(); b as usize]);
    }
    let device = model.device();
    let mut rng = Rng::new(cfg.seed);
    let mut out = Outputs::new(b as usize, &cfg.eos_token_ids, cfg.pad_token_id);
    tch::no_grad(|| {
        let bos = Tensor::full([b, 1], model.config.bos_token_id, (Kind::Int64, device));
        match decoding {
            Decoding::Cached => {
                let mut cache = model.new_cache(enc, cfg.max_new_tokens as i64);
                let mut x = bos;
                for _ in 0..cfg.max_new_tokens {
                    let h = model.decode(&x, enc, Some(&mut cache), false);
                    let logits = model.logits(&h.squeeze_dim(1));
                    let feed = out.push(&pick(&logits, cfg, &mut rng));
                    if out.all_done() {
                        break;
                    }
                    x = Tensor::from_slice(&feed).reshape([b, 1]).to_device(device);
                }
            }
            Decoding::Recompute => {
                let mut prefix = bos;
                for _ in 0..cfg.max_new_tokens {
                    let h = model.decode(&prefix, enc, None, false);
                    let t = h.size()[1];
                    let logits = model.logits(&h.narrow(1, t - 1, 1).squeeze_dim(1));
                    let feed = out.push(&pick(&logits, cfg, &mut rng));
                    if out.all_done() {
                        break;
                    }
                    let next = Tensor::from_slice(&feed).reshape([b, 1]).to_device(device);
                    prefix = Tensor::cat(&[&prefix, &next], 1);
                }
            }
        }
    });
    Ok(out.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_at_or_above_max_token_id_are_never_picked() {
        // The last two columns (padding) carry all the probability mass.
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 0.5, 50.0, 60.0]).view([1, 5]);
        let mut rng = Rng::new(3);
        let mut cfg = GenerationConfig::greedy(1);
        assert_eq!(pick(&logits, &cfg, &mut rng), vec![4]);
        cfg.max_token_id = Some(3);
        assert_eq!(pick(&logits, &cfg, &mut rng), vec![1]);
        cfg.sampling = Sampling::Sample {
            temperature: 5.0,
            top_k: None,
            top_p: None,
        };
        for _ in 0..200 {
            assert!(pick(&logits, &cfg, &mut rng)[0] < 3);
        }
    }
}
