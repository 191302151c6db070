//! One optimizer step: gather the step's micro-batches (scored ahead by the prefetcher),
//! optionally let the student sample and the teacher score the samples, forward and
//! backward `(1 - alpha) CE + alpha KD` scaled by the global target-token count,
//! all-reduce, clip, AdamW.

use std::sync::atomic::Ordering;
use std::time::Instant;

use edkd_data::Batch;
use tch::{Kind, Tensor};

use crate::dist;
use crate::error::{Error, Result};
use crate::source::TeacherOut;

use super::on_policy::Sampled;
use super::{StepMetrics, Trainer, now, step_seed};

/// Salt of the per-step libtorch seed (dropout).
const SALT_TORCH: u64 = 1;

/// Token-weighted sums over a step's micro-batches, summed over ranks afterwards.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    ce: f64,
    kd: f64,
    /// Target positions the KD term covered.
    kd_tokens: f64,
    /// Teacher probability mass inside its top-k, token-weighted.
    mass: f64,
    /// Positions where student and teacher argmax agree.
    agree: f64,
}

impl Sums {
    fn add_kd(&mut self, kd: f64, tokens: f64, mass: f64, agree: f64) {
        self.kd += kd * tokens;
        self.kd_tokens += tokens;
        self.mass += mass * tokens;
        self.agree += agree * tokens;
    }
}

fn target_tokens(b: &Batch) -> f64 {
    b.decoder_mask.iter().filter(|&&m| m).count() as f64
}

impl Trainer<'_> {
    /// Runs one optimizer step and returns its metrics (already summed over ranks).
    pub fn step(&mut self) -> Result<StepMetrics> {
        let cfg = self.cfg;
        let step = self.state.step;
        let t0 = Instant::now();
        let on_policy = self.on_policy.due(step, self.teacher.is_some());

        let mut micro = Vec::with_capacity(cfg.optim.accumulation);
        for _ in 0..cfg.optim.accumulation {
            let f = self.prefetch.next()?;
            self.state.cursor = f.cursor.clone();
            micro.push(f);
        }
        let wait_s = t0.elapsed().as_secs_f64();
        let sampled = match (&self.teacher, on_policy) {
            (Some(teacher), true) => {
                let batches: Vec<&Batch> = micro.iter().map(|f| &f.batch).collect();
                self.on_policy
                    .sample_all(&self.net, &batches, teacher, step)?
            }
            _ => Vec::new(),
        };

        let mut counts = [
            micro.iter().map(|f| target_tokens(&f.batch)).sum(),
            sampled
                .iter()
                .flatten()
                .map(|s| target_tokens(&s.batch))
                .sum(),
            micro
                .iter()
                .filter(|f| f.batch.rows > 0)
                .map(|f| f.batch.real_tokens() as f64)
                .sum(),
        ];
        dist::sum_f64(self.coll, &mut counts);
        let [global_tokens, global_samples, global_real] = counts;

        let mut sums = Sums::default();
        // Dropout draws from libtorch's process-global generator: seeded per step, and held
        // for the forward and backward passes only (no collective or teacher wait inside).
        let seed = step_seed(cfg.seed, step, SALT_TORCH) as i64;
        edkd_models::rng::seeded(seed, || -> Result<()> {
            for (i, f) in micro.into_iter().enumerate() {
                if f.batch.rows == 0 {
                    continue;
                }
                let teacher = f.teacher.transpose()?;
                if on_policy {
                    let sample = sampled.get(i).and_then(Option::as_ref);
                    self.backward_on_policy(
                        &f.batch,
                        sample,
                        global_tokens,
                        global_samples,
                        &mut sums,
                    )?;
                } else {
                    self.backward_off_policy(&f.batch, teacher.as_ref(), global_tokens, &mut sums)?;
                }
            }
            Ok(())
        })?;
        // Summed before the update so that every rank agrees on skipping a non-finite step.
        let stop_here = self.stop_requested() as u8 as f64;
        let mut s = [
            sums.ce,
            sums.kd,
            sums.kd_tokens,
            sums.mass,
            sums.agree,
            stop_here,
        ];
        dist::sum_f64(self.coll, &mut s);
        let [ce_sum, kd_sum, kd_tokens, mass_sum, agree_sum, stops] = s;
        self.stop_agreed = stops > 0.0;
        let finite_loss = ce_sum.is_finite() && kd_sum.is_finite();
        let (lr, grad_norm, skipped) = self.apply_gradients(step, finite_loss)?;
        self.state.tokens += global_tokens as u64;
        let step_s = t0.elapsed().as_secs_f64();
        let ce = ce_sum / global_tokens.max(1.0);
        let kd = if kd_tokens > 0.0 {
            kd_sum / kd_tokens
        } else {
            0.0
        };
        let alpha = if self.teacher.is_some() {
            self.loss.alpha
        } else {
            0.0
        };
        Ok(StepMetrics {
            step: self.state.step,
            loss: (1.0 - alpha) * ce + alpha * kd,
            ce,
            kd,
            lr,
            grad_norm,
            tokens_per_s: global_real / step_s.max(1e-9),
            target_tokens: global_tokens,
            topk_mass: (kd_tokens > 0.0).then(|| mass_sum / kd_tokens),
            top1_agree: (kd_tokens > 0.0).then(|| agree_sum / kd_tokens),
            on_policy,
            skipped,
            step_s,
            wait_s,
            time: now(),
        })
    }

    /// CE on the gold targets plus KD against the teacher's answer for them.
    fn backward_off_policy(
        &self,
        batch: &Batch,
        teacher: Option<&TeacherOut>,
        global_tokens: f64,
        sums: &mut Sums,
    ) -> Result<()> {
        let t = self.net.tensors(batch, self.device)?;
        let z = self.net.target_logits(&t, true)?; // [n, V]: the LM head on target rows only
        let n = target_tokens(batch);
        let targets = teacher.map(|o| o.targets(&t.decoder_mask, self.device));
        let parts = self.loss.total_rows(
            &z,
            &t.labels.masked_select(&t.decoder_mask),
            targets.as_ref().map(|(x, _)| (x, self.vocabs.kd)),
        );
        (parts.total * (n / global_tokens)).backward();
        sums.ce += parts.ce * n;
        if let Some((_, stats)) = &targets {
            sums.add_kd(parts.kd, n, stats.topk_mass, agreement(&z, &stats.top1));
        }
        Ok(())
    }

    /// CE on the gold targets plus KD on the student's own samples.
    fn backward_on_policy(
        &self,
        batch: &Batch,
        sample: Option<&Sampled>,
        global_tokens: f64,
        global_samples: f64,
        sums: &mut Sums,
    ) -> Result<()> {
        let loss = &self.loss;
        let t = self.net.tensors(batch, self.device)?;
        let n = target_tokens(batch);
        let ce = loss.cross_entropy(
            &self.net.target_logits(&t, true)?,
            &t.labels.masked_select(&t.decoder_mask),
        );
        let mut total = &ce * ((1.0 - loss.alpha) * n / global_tokens);
        sums.ce += ce.double_value(&[]) * n;
        if let Some(s) = sample {
            let st = self.net.tensors(&s.batch, self.device)?;
            let (targets, stats) = s.teacher.targets(&st.decoder_mask, self.device);
            let z = self.net.target_logits(&st, true)?;
            let kd = loss.distill(&z, &targets, self.vocabs.kd);
            let ns = target_tokens(&s.batch);
            total += &kd * (loss.alpha * ns / global_samples.max(1.0));
            sums.add_kd(
                kd.double_value(&[]),
                ns,
                stats.topk_mass,
                agreement(&z, &stats.top1),
            );
        }
        total.backward();
        Ok(())
    }

    /// All-reduces, clips and applies the accumulated gradients; returns the step's
    /// learning rate, the gradient norm before clipping, and whether the update was
    /// skipped because the loss or the gradient norm is not finite (an error once more
    /// than `optim.max_nonfinite_steps` were).
    fn apply_gradients(&mut self, step: u64, finite_loss: bool) -> Result<(f64, f64, bool)> {
        dist::ensure_grads(self.net.vs());
        self.reducer.all_reduce(self.coll, self.net.vs());
        let clip = self.cfg.optim.clip;
        let grad_norm = self
            .opt
            .clip_grad_norm(if clip > 0.0 { clip } else { f64::INFINITY });
        let lr = self.schedule.lr(self.cfg.optim.lr, step as i64);
        let skip = !(finite_loss && grad_norm.is_finite());
        if skip {
            self.nonfinite_steps += 1;
            let limit = self.cfg.optim.max_nonfinite_steps;
            if self.nonfinite_steps > limit {
                return Err(Error::NonFinite(format!(
                    "step {}: loss or gradient norm ({grad_norm}) is NaN or infinite, the \
                     {} such step of this run (optim.max_nonfinite_steps = {limit}); stopping \
                     without an update or a checkpoint (lower optim.lr or check the data)",
                    step + 1,
                    ordinal(self.nonfinite_steps)
                )));
            }
            tracing::warn!(
                step = step + 1,
                grad_norm,
                finite_loss,
                "non-finite loss or gradient norm: step skipped (no update)"
            );
        } else {
            self.opt.step(lr);
        }
        self.opt.zero_grad();
        self.state.step += 1;
        self.steps_here += 1;
        Ok((lr, grad_norm, skip))
    }

    /// A stop (Ctrl-C, SIGTERM) was requested of this process.
    pub(super) fn stop_requested(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Fraction of rows where the student's argmax (over the teacher's vocabulary) equals the
/// teacher's top-1.
fn agreement(student_rows: &Tensor, teacher_top1: &Tensor) -> f64 {
    if student_rows.size()[0] == 0 {
        return 0.0;
    }
    let s = student_rows.detach().argmax(-1, false);
    s.eq_tensor(teacher_top1)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}
