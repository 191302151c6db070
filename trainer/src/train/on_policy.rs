//! On-policy KD: the student samples its own answers and the teacher scores
//! `prompt ++ sample`, so the student learns on the distribution it will generate from.

use edkd_data::Batch;
use edkd_models::generate::GenerationConfig;
use edkd_models::sampling::Sampling;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::model::Net;
use crate::source::TeacherOut;

use super::prefetch::{SharedSource, lock};
use super::step_seed;

/// Salt of the per-step draw that decides whether a step is on-policy.
const SALT_DRAW: u64 = 2;
/// Salt base of the per-micro-batch sampling seeds.
const SALT_SAMPLE: u64 = 10;

/// Decides which steps are on-policy and makes their samples.
pub(crate) struct OnPolicy {
    fraction: f64,
    seed: u64,
    max_new_tokens: usize,
    temperature: f64,
    top_k: Option<usize>,
    /// Samples use ids below this only: the tokenizer's ids the teacher also has.
    max_token_id: i64,
}

/// One micro-batch re-targeted on the student's samples, with the teacher's answer.
pub(crate) struct Sampled {
    pub batch: Batch,
    pub teacher: TeacherOut,
}

impl OnPolicy {
    pub fn new(cfg: &TrainConfig, max_token_id: i64) -> Self {
        Self {
            fraction: cfg.loss.on_policy_fraction,
            seed: cfg.seed,
            max_new_tokens: cfg.loss.sample_max_tokens,
            temperature: cfg.loss.sample_temperature,
            top_k: (cfg.loss.sample_top_k > 0).then_some(cfg.loss.sample_top_k),
            max_token_id,
        }
    }

    /// Whether `step` trains on the student's own samples (a seeded draw per step).
    pub fn due(&self, step: u64, have_teacher: bool) -> bool {
        self.fraction > 0.0
            && have_teacher
            && (step_seed(self.seed, step, SALT_DRAW) as f64 / u64::MAX as f64) < self.fraction
    }

    /// Samples every non-empty micro-batch and has the teacher score the samples
    /// (`None` for empty micro-batches, so indices line up).
    pub fn sample_all(
        &self,
        net: &Net,
        micro: &[&Batch],
        teacher: &SharedSource,
        step: u64,
    ) -> Result<Vec<Option<Sampled>>> {
        let mut out = Vec::with_capacity(micro.len());
        for (i, b) in micro.iter().enumerate() {
            if b.rows == 0 {
                out.push(None);
                continue;
            }
            let seed = step_seed(self.seed, step, SALT_SAMPLE + i as u64);
            let batch = self.sample_batch(net, b, seed)?;
            let teacher = lock(teacher).score(&batch)?;
            out.push(Some(Sampled { batch, teacher }));
        }
        Ok(out)
    }

    /// The batch with its targets replaced by the student's own samples (cached
    /// generation): `decoder_input_ids = [bos] + sample`, `labels = sample + [eos]`,
    /// `teacher_ids = input ++ sample`.
    fn sample_batch(&self, net: &Net, b: &Batch, seed: u64) -> Result<Batch> {
        let inputs: Vec<Vec<i64>> = (0..b.rows)
            .map(|r| {
                (0..b.enc_len)
                    .filter(|&j| b.encoder_mask[r * b.enc_len + j])
                    .map(|j| b.encoder_ids[r * b.enc_len + j])
                    .collect()
            })
            .collect();
        let max_new = if self.max_new_tokens > 0 {
            self.max_new_tokens
        } else {
            b.dec_len
        };
        let (eos, pad) = (net.eos(), net.pad());
        let gen_cfg = GenerationConfig {
            max_new_tokens: max_new,
            sampling: Sampling::Sample {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: None,
            },
            eos_token_ids: vec![eos],
            pad_token_id: pad,
            seed,
            max_token_id: Some(self.max_token_id),
        };
        let outs = net.generate_with_images(&inputs, &b.decode_images()?, &gen_cfg)?;
        // A sample ends before an image placeholder the student emits: the teacher reads
        // one image per example, at the input's placeholder.
        let image = net.image_token_id();
        let targets: Vec<Vec<i64>> = outs
            .into_iter()
            .map(|o| {
                o.into_iter()
                    .take_while(|&t| t != eos && Some(t) != image)
                    .collect()
            })
            .collect();
        let bos = b.decoder_input_ids.first().copied().unwrap_or(0);
        Ok(with_targets(
            b,
            &inputs,
            &targets,
            Specials { pad, bos, eos },
        ))
    }
}

#[derive(Clone, Copy)]
struct Specials {
    pad: i64,
    bos: i64,
    eos: i64,
}

/// Re-collates a batch with new targets (same inputs and ids).
fn with_targets(b: &Batch, inputs: &[Vec<i64>], targets: &[Vec<i64>], s: Specials) -> Batch {
    let rows = b.rows;
    let dec_len = targets.iter().map(|t| t.len() + 1).max().unwrap_or(1);
    let teacher_len = inputs
        .iter()
        .zip(targets)
        .map(|(i, t)| i.len() + t.len())
        .max()
        .unwrap_or(1);
    let mut out = Batch {
        rows,
        indices: b.indices.clone(),
        ids: b.ids.clone(),
        enc_len: b.enc_len,
        encoder_ids: b.encoder_ids.clone(),
        encoder_mask: b.encoder_mask.clone(),
        dec_len,
        decoder_input_ids: vec![s.pad; rows * dec_len],
        labels: vec![edkd_data::IGNORE_INDEX; rows * dec_len],
        decoder_mask: vec![false; rows * dec_len],
        teacher_len,
        teacher_ids: vec![s.pad; rows * teacher_len],
        teacher_mask: vec![false; rows * teacher_len],
        target_start: inputs.iter().map(|i| i.len() as i64).collect(),
        images: b.images.clone(),
    };
    for (r, (inp, tgt)) in inputs.iter().zip(targets).enumerate() {
        let d = r * dec_len;
        out.decoder_input_ids[d] = s.bos;
        for (j, &t) in tgt.iter().enumerate() {
            out.decoder_input_ids[d + 1 + j] = t;
            out.labels[d + j] = t;
        }
        out.labels[d + tgt.len()] = s.eos;
        for j in 0..=tgt.len() {
            out.decoder_mask[d + j] = true;
        }
        let o = r * teacher_len;
        for (j, &t) in inp.iter().chain(tgt.iter()).enumerate() {
            out.teacher_ids[o + j] = t;
            out.teacher_mask[o + j] = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        // Two rows; inputs [5, 6] and [7]; old targets irrelevant.
        Batch {
            rows: 2,
            indices: vec![0, 1],
            ids: vec!["a".into(), "b".into()],
            enc_len: 2,
            encoder_ids: vec![5, 6, 7, 0],
            encoder_mask: vec![true, true, true, false],
            dec_len: 1,
            decoder_input_ids: vec![1, 1],
            labels: vec![2, 2],
            decoder_mask: vec![true, true],
            teacher_len: 2,
            teacher_ids: vec![5, 6, 7, 0],
            teacher_mask: vec![true, true, true, false],
            target_start: vec![2, 1],
            images: None,
        }
    }

    #[test]
    fn samples_become_targets_and_the_teacher_sees_input_then_sample() {
        let b = batch();
        let inputs = vec![vec![5, 6], vec![7]];
        let targets = vec![vec![9, 10], vec![]];
        let s = Specials {
            pad: 0,
            bos: 1,
            eos: 2,
        };
        let out = with_targets(&b, &inputs, &targets, s);
        assert_eq!(out.dec_len, 3);
        assert_eq!(out.decoder_input_ids, vec![1, 9, 10, 1, 0, 0]);
        let ig = edkd_data::IGNORE_INDEX;
        assert_eq!(out.labels, vec![9, 10, 2, 2, ig, ig]);
        assert_eq!(out.decoder_mask, vec![true, true, true, true, false, false]);
        assert_eq!(out.teacher_len, 4);
        assert_eq!(out.teacher_ids, vec![5, 6, 9, 10, 7, 0, 0, 0]);
        assert_eq!(out.target_start, vec![2, 1]);
        // Encoder side untouched.
        assert_eq!(out.encoder_ids, b.encoder_ids);
    }

    #[test]
    fn the_on_policy_draw_follows_the_fraction_and_needs_a_teacher() {
        let mut cfg = TrainConfig::default();
        cfg.loss.on_policy_fraction = 0.25;
        let p = OnPolicy::new(&cfg, 100);
        let hits = (0..4000).filter(|&s| p.due(s, true)).count();
        assert!((800..1200).contains(&hits), "{hits} of 4000");
        assert!(!(0..100).any(|s| p.due(s, false)));
        cfg.loss.on_policy_fraction = 0.0;
        assert!(!(0..100).any(|s| OnPolicy::new(&cfg, 100).due(s, true)));
    }
}
