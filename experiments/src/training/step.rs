//! Section 2 of the training bench: one training step in edkd and in PyTorch on the same
//! weights, fixed batch and hyperparameters, the two sides alternating step by step.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Instant;

use edkd_trainer::config::ModelSection;
use edkd_trainer::loss::TeacherTargets;
use edkd_trainer::model::{BatchTensors, Net, Vocab};
use edkd_trainer::optim::AdamW;
use edkd_trainer::{Divergence, KdLoss};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{ADAMW, ALPHA, CLIP, LR, Options, TEMPERATURE, VOCAB_SIZE, median, student_section};
use crate::error::{Error, Result};
use crate::python;
use crate::training::flops::Flops;

/// The PyTorch side's script in experiments/scripts.
pub const REFERENCE_SCRIPT: &str = "train_step_reference.py";
/// Ids below this are specials; random batch tokens avoid them.
const FIRST_ORDINARY_ID: i64 = 4;
/// Scale of the random full-vocabulary teacher logits.
const TEACHER_LOGIT_SCALE: f64 = 2.0;

/// Section 2's findings.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Median seconds of the timed steps.
    pub edkd_s: f64,
    pub torch_s: f64,
    /// Median over timed steps of (PyTorch step time / edkd's next or previous step time).
    pub paired_ratio: f64,
    pub torch_version: String,
    /// Loss of every step (warm-up included), both sides.
    pub edkd_loss: Vec<f64>,
    pub torch_loss: Vec<f64>,
    pub flops: Flops,
    pub params: i64,
}

impl StepReport {
    /// Largest |edkd loss - PyTorch loss| over the steps both sides ran.
    pub fn max_loss_diff(&self) -> f64 {
        self.edkd_loss
            .iter()
            .zip(&self.torch_loss)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }
}

struct StepBatch {
    tensors: BatchTensors,
    /// Full-vocabulary teacher logits at the target positions, `[b * target_len, V]`.
    teacher: Tensor,
}

fn make_batch(opts: &Options, vocab: Vocab) -> StepBatch {
    tch::manual_seed(opts.seed as i64 + 2);
    let (b, li, lo) = (opts.batch, opts.input_len, opts.target_len);
    let ids = (Kind::Int64, Device::Cpu);
    let encoder_ids = Tensor::randint_low(FIRST_ORDINARY_ID, vocab.size, [b, li], ids);
    let labels = Tensor::randint_low(FIRST_ORDINARY_ID, vocab.size, [b, lo], ids);
    let bos = Tensor::full([b, 1], vocab.bos, ids);
    let decoder_input_ids = Tensor::cat(&[bos, labels.narrow(1, 0, lo - 1)], 1);
    let all = |len| Tensor::ones([b, len], (Kind::Bool, Device::Cpu));
    let teacher =
        Tensor::randn([b * lo, vocab.size], (Kind::Float, Device::Cpu)) * TEACHER_LOGIT_SCALE;
    StepBatch {
        tensors: BatchTensors {
            teacher_ids: encoder_ids.shallow_clone(),
            teacher_mask: all(li),
            teacher_positions: Tensor::zeros([b, lo], ids),
            encoder_ids,
            encoder_mask: all(li),
            decoder_input_ids,
            labels,
            decoder_mask: all(lo),
            pixel_values: None,
        },
        teacher,
    }
}

fn save_batch(batch: &StepBatch, path: &Path) -> Result<()> {
    let t = &batch.tensors;
    let u8 = |x: &Tensor| x.to_kind(Kind::Uint8);
    Tensor::write_safetensors(
        &[
            ("encoder_ids", t.encoder_ids.shallow_clone()),
            ("encoder_mask", u8(&t.encoder_mask)),
            ("decoder_input_ids", t.decoder_input_ids.shallow_clone()),
            ("labels", t.labels.shallow_clone()),
            ("decoder_mask", u8(&t.decoder_mask)),
            ("teacher_logits", batch.teacher.shallow_clone()),
        ],
        path,
    )?;
    Ok(())
}

/// edkd's side: the trainer's per-micro-batch work on a ready batch: logits, loss,
/// backward, clipping, AdamW, zeroed gradients.
struct EdkdStep {
    net: Net,
    opt: AdamW,
    loss: KdLoss,
    targets: TeacherTargets,
    vocab: i64,
}

impl EdkdStep {
    fn new(section: &ModelSection, vocab: Vocab, batch: &StepBatch, seed: u64) -> Result<Self> {
        let net = Net::build(section, vocab, Device::Cpu, seed)?;
        let opt = AdamW::new(net.vs(), ADAMW);
        Ok(Self {
            net,
            opt,
            loss: KdLoss {
                divergence: Divergence::ForwardKl,
                temperature: TEMPERATURE,
                alpha: ALPHA,
                label_smoothing: 0.0,
            },
            targets: TeacherTargets::Full {
                logits: batch.teacher.shallow_clone(),
            },
            vocab: vocab.size,
        })
    }

    /// One step: (seconds, loss).
    fn step(&mut self, t: &BatchTensors) -> (f64, f64) {
        let t0 = Instant::now();
        let logits = self
            .net
            .logits(t, true)
            .expect("a text student's forward reads no images and cannot fail");
        let parts = self.loss.total(
            &logits,
            &t.labels,
            &t.decoder_mask,
            Some((&self.targets, self.vocab)),
        );
        parts.total.backward();
        self.opt.clip_grad_norm(CLIP);
        self.opt.step(LR);
        self.opt.zero_grad();
        let loss = parts.total.double_value(&[]);
        (t0.elapsed().as_secs_f64(), loss)
    }
}

/// PyTorch's side: the reference script, one step per `step` line on its stdin, so that
/// the two sides' steps alternate and share whatever load the machine has.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    torch: String,
}

fn script_error(msg: String) -> Error {
    Error::Script {
        script: REFERENCE_SCRIPT.into(),
        msg,
    }
}

impl Reference {
    fn start(opts: &Options, model: &Path, batch: &Path) -> Result<Self> {
        let a = |k: &str, v: String| [format!("--{k}"), v];
        let argv: Vec<String> = [
            a("model", model.display().to_string()),
            a("batch", batch.display().to_string()),
            a("threads", opts.threads.to_string()),
            a("lr", LR.to_string()),
            a("weight-decay", ADAMW.weight_decay.to_string()),
            a("beta1", ADAMW.beta1.to_string()),
            a("beta2", ADAMW.beta2.to_string()),
            a("eps", ADAMW.eps.to_string()),
            a("clip", CLIP.to_string()),
            a("alpha", ALPHA.to_string()),
            a("temperature", TEMPERATURE.to_string()),
        ]
        .concat();
        let mut child = python::command(REFERENCE_SCRIPT)?
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(Error::io(python::script(REFERENCE_SCRIPT)))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(script_error("no pipes to the child".into()));
        };
        let mut me = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            torch: String::new(),
        };
        let ready = me.read()?;
        me.torch = ready["torch"].as_str().unwrap_or("?").to_owned();
        Ok(me)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        match self.lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line)
                .map_err(|e| script_error(format!("printed {line:?}: {e}"))),
            Some(Err(e)) => Err(script_error(format!("reading its output: {e}"))),
            None => Err(script_error(format!(
                "ended early ({}); its errors are above",
                self.child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string())
            ))),
        }
    }

    /// One step: (seconds, loss), as timed inside the Python process.
    fn step(&mut self) -> Result<(f64, f64)> {
        writeln!(self.stdin, "step")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| script_error(format!("writing to it: {e}")))?;
        let v = self.read()?;
        let f = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| script_error(format!("reply without {k}: {v}")))
        };
        Ok((f("step_s")?, f("loss")?))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// Times `opts.warmup + opts.steps` steps of each side on one saved student and batch.
pub fn edkd_vs_pytorch(opts: &Options, work: &Path) -> Result<StepReport> {
    let dir = work.join("step");
    let model = dir.join("student");
    let vocab = Vocab {
        size: VOCAB_SIZE as i64,
        pad: 0,
        bos: 1,
        eos: 2,
        image_token_id: None,
    };
    let section = student_section()?;
    let net = Net::build(&section, vocab, Device::Cpu, opts.seed)?;
    net.save(&model, None)?;
    let Net::EncoderDecoder(student) = &net else {
        return Err(Error::input(
            "model",
            "the bench student is an encoder-decoder",
        ));
    };
    let flops = Flops::of(
        &student.model.config,
        &net,
        opts.batch,
        opts.input_len,
        opts.target_len,
    );
    let params = net.num_parameters();
    drop(net);
    // Both sides start from the saved folder.
    let section = ModelSection {
        init: Some(model.clone()),
        ..section
    };
    let batch = make_batch(opts, vocab);
    let batch_file = dir.join("batch.safetensors");
    save_batch(&batch, &batch_file)?;

    tch::set_num_threads(opts.threads);
    eprintln!(
        "timing {} + {} training steps, edkd and PyTorch alternately ...",
        opts.warmup, opts.steps
    );
    let mut ours = EdkdStep::new(&section, vocab, &batch, opts.seed)?;
    let mut theirs = Reference::start(opts, &model, &batch_file)?;
    let (mut e_s, mut p_s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut edkd_loss, mut torch_loss) = (Vec::new(), Vec::new());
    for i in 0..opts.warmup + opts.steps {
        // Alternate which side goes first, so neither always follows the other.
        let ((es, el), (ps, pl)) = if i % 2 == 0 {
            let e = ours.step(&batch.tensors);
            (e, theirs.step()?)
        } else {
            let p = theirs.step()?;
            (ours.step(&batch.tensors), p)
        };
        edkd_loss.push(el);
        torch_loss.push(pl);
        if i >= opts.warmup {
            e_s.push(es);
            p_s.push(ps);
            ratios.push(ps / es);
        }
    }
    Ok(StepReport {
        edkd_s: median(&e_s),
        torch_s: median(&p_s),
        paired_ratio: median(&ratios),
        torch_version: theirs.torch.clone(),
        edkd_loss,
        torch_loss,
        flops,
        params,
    })
}
