//! The training bench's one-screen summary.

use std::fmt;

use super::flops::{PEAK_ITERS, PEAK_N};
use super::{
    ALPHA, BATCH_ROWS, BATCH_TOKENS, CLIP, LR, Report, STUDENT, TEMPERATURE, TeacherReport,
    VOCAB_SIZE,
};

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "edkd bench train: {} threads on {} CPUs; load average {} before, {} after \
             (a shared machine: figures are noisy)",
            o.threads, self.cpus, self.load[0], self.load[1]
        )?;
        writeln!(
            f,
            "student: the demo's encoder-decoder ({}), {:.2}M parameters, vocabulary {VOCAB_SIZE}",
            STUDENT[1..]
                .iter()
                .map(|s| s.trim_start_matches("model.overrides."))
                .collect::<Vec<_>>()
                .join(" "),
            self.step.params as f64 / 1e6
        )?;
        if let Some(t) = &self.teacher {
            self.fmt_loop(f, t)?;
        }
        self.fmt_step(f)?;
        self.fmt_flops(f)
    }
}

impl Report {
    fn fmt_loop(&self, f: &mut fmt::Formatter<'_>, t: &TeacherReport) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "\n1. distillation loop, remote teacher vs cache: mean over {} steps after {} \
             warm-up, {} run(s) each, in an order rotated every round",
            o.steps, o.warmup, o.rounds
        )?;
        writeln!(
            f,
            "   teacher: random Llama, d_model {} x {} layers ({:.2}M params), gRPC on loopback \
             in this process (same cores); top-k {}, T {TEMPERATURE}; batches <= {BATCH_TOKENS} \
             tokens / {BATCH_ROWS} rows",
            o.teacher_d_model,
            o.teacher_layers,
            t.teacher_params as f64 / 1e6,
            o.top_k
        )?;
        writeln!(
            f,
            "   {:<40} {:>9} {:>9} {:>10} {:>13}",
            "teacher (threads)", "step s", "wait s", "tokens/s", "step / cache"
        )?;
        let avg = TeacherReport::avg;
        let c_step = avg(&t.cache, |r| r.step_s);
        let mut rows = vec![(format!("cache (trainer {})", o.threads), &t.cache)];
        for (place, runs) in &t.remote {
            let prefetch = place
                .prefetch
                .map_or(String::new(), |p| format!(", prefetch {p}"));
            rows.push((
                format!(
                    "remote ({} teacher + {} trainer{prefetch})",
                    place.teacher_threads, place.trainer_threads
                ),
                runs,
            ));
        }
        for (name, runs) in rows {
            let step = avg(runs, |r| r.step_s);
            writeln!(
                f,
                "   {name:<40} {step:>9.4} {:>9.4} {:>10.0} {:>12.3}x",
                avg(runs, |r| r.wait_s),
                avg(runs, |r| r.tokens_per_s),
                step / c_step
            )?;
        }
        writeln!(
            f,
            "   goal: a co-located remote teacher within 1.15x of the cache; one synchronous \
             Score of a batch takes {:.4} s on {} threads",
            t.latency_s, o.threads
        )
    }

    fn tokens(&self) -> (f64, f64) {
        let o = &self.options;
        (
            (o.batch * (o.input_len + o.target_len)) as f64,
            (o.batch * o.target_len) as f64,
        )
    }

    fn fmt_step(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, s) = (&self.options, &self.step);
        let (tokens, target) = self.tokens();
        writeln!(
            f,
            "\n2. training step, edkd vs PyTorch {}: batch {} x ({} input + {} target) tokens, \
             (1-{ALPHA}) CE + {ALPHA} T^2 KL(teacher||student) at T {TEMPERATURE} on \
             full-vocabulary teacher logits, clip {CLIP}, AdamW lr {LR}; median of {} steps \
             after {} warm-up, the two sides alternating step by step",
            s.torch_version, o.batch, o.input_len, o.target_len, o.steps, o.warmup
        )?;
        writeln!(
            f,
            "   {:<10} {:>9} {:>10} {:>12} {:>7}",
            "", "step s", "tokens/s", "target tok/s", "MFU"
        )?;
        for (name, secs) in [("edkd", s.edkd_s), ("PyTorch", s.torch_s)] {
            writeln!(
                f,
                "   {name:<10} {secs:>9.4} {:>10.0} {:>12.0} {:>6.1}%",
                tokens / secs,
                target / secs,
                100.0 * s.flops.mfu(secs, self.peak_gflops)
            )?;
        }
        writeln!(
            f,
            "   edkd/PyTorch tokens/s: {:.3}x (goal >= 0.95); median of per-step pairs {:.3}x",
            s.torch_s / s.edkd_s,
            s.paired_ratio
        )?;
        let n = s.edkd_loss.len().min(s.torch_loss.len());
        if n > 0 {
            writeln!(
                f,
                "   same computation: loss at step 1 edkd {:.6} / PyTorch {:.6}, at step {n} \
                 {:.6} / {:.6}; max |diff| over {n} steps {:.2e}",
                s.edkd_loss[0],
                s.torch_loss[0],
                s.edkd_loss[n - 1],
                s.torch_loss[n - 1],
                s.max_loss_diff()
            )?;
        }
        Ok(())
    }

    fn fmt_flops(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, fl, peak) = (&self.step, &self.step.flops, self.peak_gflops);
        let (tokens, _) = self.tokens();
        writeln!(
            f,
            "\n3. model FLOP utilisation: peak {peak:.1} GFLOP/s ({PEAK_N}x{PEAK_N} fp32 \
             matmul, libtorch, {} threads, best of {PEAK_ITERS}, measured before and after)",
            self.options.threads
        )?;
        writeln!(
            f,
            "   FLOPs/step = 6 * (P_enc*T_in + P_xkv*T_in + (P_dec + d*V)*T_out) \
             + 12 * a * B * (n_enc*L_in^2 + n_dec*(L_out^2 + L_out*L_in))"
        )?;
        writeln!(
            f,
            "   P_enc {} (encoder layers + norm), P_xkv {} (cross-attention k/v, on encoder \
             tokens), P_dec {} (rest of the decoder), d*V {} (tied LM head), a {}, T_in {}, \
             T_out {}",
            fl.p_enc, fl.p_xkv, fl.p_dec, fl.head, fl.attn_dim, fl.t_in, fl.t_out
        )?;
        writeln!(
            f,
            "   = {:.2} GFLOP per step, {:.0} kFLOP per (input + target) token; MFU edkd \
             {:.1}%, PyTorch {:.1}%",
            fl.per_step / 1e9,
            fl.per_step / tokens / 1e3,
            100.0 * fl.mfu(s.edkd_s, peak),
            100.0 * fl.mfu(s.torch_s, peak)
        )
    }
}
