//! Data-parallel step time split into compute and gradient all-reduce, bytes reduced per
//! step, and the bandwidth of the trainer's bucketed all-reduce against one raw
//! `MPI_Allreduce` of the same size (`edkd bench allreduce`, under `mpirun -np N`).

use std::fmt;
use std::path::Path;
use std::time::Instant;

use edkd_trainer::config::ModelSection;
use edkd_trainer::dist::{self, Collective};
use edkd_trainer::model::{BatchTensors, Net, Vocab};
use edkd_trainer::mpi::Mpi;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Steps run before timing (allocator and MPI warm-up).
const WARMUP_STEPS: usize = 2;

/// Settings of one all-reduce measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Student presets, measured in order.
    pub presets: Vec<String>,
    /// Vocabulary size (`None`: the preset's).
    pub vocab: Option<i64>,
    /// Rows per rank and step, input and target tokens per row.
    pub rows: usize,
    pub input_tokens: usize,
    pub target_tokens: usize,
    /// Timed training steps per preset (the median is reported).
    pub steps: usize,
    /// Timed repeats of each all-reduce variant (the median is reported).
    pub repeats: usize,
    /// libtorch intra-op threads per rank.
    pub threads: i32,
}

/// One preset's measurement (rank 0's view of the slowest rank).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub preset: String,
    pub ranks: usize,
    pub parameters: i64,
    /// Gradient bytes every rank reduces per optimizer step.
    pub bytes_per_step: u64,
    pub step_ms: f64,
    pub compute_ms: f64,
    pub allreduce_ms: f64,
    /// The bucketed all-reduce alone, back to back like the raw one (no compute between).
    pub bucketed_ms: f64,
    /// `Collective::all_reduce_sum` on one preallocated flat tensor of the same bytes.
    pub tensor_ms: f64,
    pub raw_allreduce_ms: f64,
    /// Algorithm bandwidth (bytes / time) of the bucketed path alone, GB/s.
    pub algbw_gbs: f64,
    pub raw_algbw_gbs: f64,
    /// NCCL's bus bandwidth convention: algbw * 2 (n - 1) / n.
    pub busbw_gbs: f64,
    pub raw_busbw_gbs: f64,
    /// Bandwidth of the bucketed path alone / raw.
    pub ratio: f64,
}

/// What every rank measured; only rank 0's is printed (see [`Report::is_lead`]).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub options: Options,
    /// Rank 0 prints; other ranks' rows are the same figures.
    pub is_lead: bool,
    /// The MPI library and world, as `Mpi::describe` says.
    pub mpi: String,
    pub rows: Vec<Row>,
}

/// Initialises MPI and measures every preset on every rank (run under `mpirun -np N`;
/// alone it measures compute only). Progress goes to rank 0's stderr.
pub fn run(opts: &Options) -> Result<Report> {
    if opts.steps == 0 || opts.repeats == 0 || opts.rows == 0 || opts.target_tokens == 0 {
        return Err(Error::input(
            "steps/repeats/rows/target_tokens",
            "all must be at least 1",
        ));
    }
    let mut mpi = Mpi::init_always().ok_or_else(|| Error::Measurement {
        what: "MPI",
        msg: "initialised already in this process".into(),
    })?;
    tch::set_num_threads(opts.threads);
    let lead = mpi.rank() == 0;
    if lead {
        eprintln!(
            "{}; {} rows x ({} + {}) tokens per rank and step, {} thread(s) per rank",
            mpi.describe(),
            opts.rows,
            opts.input_tokens,
            opts.target_tokens,
            opts.threads
        );
        if mpi.world() == 1 {
            eprintln!(
                "one rank: nothing is reduced; run under `mpirun -np N` to measure the all-reduce"
            );
        }
    }
    let rows = opts
        .presets
        .iter()
        .map(|preset| measure(&mut mpi, preset, opts))
        .collect::<Result<Vec<_>>>()?;
    Ok(Report {
        options: opts.clone(),
        is_lead: lead,
        mpi: mpi.describe(),
        rows,
    })
}

impl Report {
    /// Writes the rows as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.rows).expect("rows serialise") + "\n";
        std::fs::write(path, text).map_err(Error::io(path))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:>5} {:>10} {:>8} {:>9} {:>10} {:>10} {:>11} {:>9} {:>8} {:>9} {:>9} {:>6}",
            "preset",
            "ranks",
            "params",
            "MB/step",
            "step ms",
            "compute ms",
            "reduce ms",
            "bucketed ms",
            "tensor ms",
            "raw ms",
            "busbw",
            "raw busbw",
            "ratio"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<8} {:>5} {:>10} {:>8.2} {:>9.1} {:>10.1} {:>10.2} {:>11.2} {:>9.2} {:>8.2} {:>9.2} {:>9.2} {:>6.2}",
                r.preset,
                r.ranks,
                r.parameters,
                r.bytes_per_step as f64 / 1e6,
                r.step_ms,
                r.compute_ms,
                r.allreduce_ms,
                r.bucketed_ms,
                r.tensor_ms,
                r.raw_allreduce_ms,
                r.busbw_gbs,
                r.raw_busbw_gbs,
                r.ratio
            )?;
        }
        writeln!(
            f,
            "reduce ms: the all-reduce inside a training step; bucketed ms: the bucketed path \
             alone (gradients as views of flat buckets, reduced in place); tensor ms: the \
             collective on one flat tensor of the same bytes; raw ms: one MPI_Allreduce of the \
             same bytes between Vecs; bandwidths in GB/s of bucketed and raw, busbw = bytes / \
             time x 2(n-1)/n (NCCL's convention); ratio = raw ms / bucketed ms"
        )
    }
}

fn measure(mpi: &mut Mpi, preset: &str, args: &Options) -> Result<Row> {
    let cfg = edkd_models::student::StudentConfig::preset(preset)?;
    let vocab = Vocab {
        size: args.vocab.unwrap_or(cfg.vocab_size),
        pad: 0,
        bos: 1,
        eos: 2,
        image_token_id: None,
    };
    if vocab.size <= 3 {
        return Err(Error::input("vocab", format!("{}: too small", vocab.size)));
    }
    let section = ModelSection {
        preset: preset.to_owned(),
        ..Default::default()
    };
    let net = Net::build(&section, vocab, Device::Cpu, 0)?;
    dist::broadcast_vars(mpi, net.vs());
    let batch = synthetic_batch(args, vocab.size, mpi.rank() as u64);
    let tensors = BatchTensors::new(&batch, Device::Cpu);

    let world = mpi.world();
    let (mut compute, mut reduce, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut reducer = dist::GradReducer::new();
    let mut bytes = 0;
    for step in 0..WARMUP_STEPS + args.steps {
        mpi.barrier();
        let t0 = Instant::now();
        let logits = net.logits(&tensors, true)?;
        let v = logits.size()[2];
        let loss = logits.reshape([-1, v]).cross_entropy_loss::<Tensor>(
            &tensors.labels.reshape([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        );
        loss.backward();
        dist::ensure_grads(net.vs());
        let t1 = Instant::now();
        // Waiting for the slower rank is compute imbalance, not all-reduce time.
        mpi.barrier();
        let t2 = Instant::now();
        bytes = reducer.all_reduce(mpi, net.vs());
        let t3 = Instant::now();
        if step >= WARMUP_STEPS {
            compute.push((t1 - t0).as_secs_f64());
            reduce.push((t3 - t2).as_secs_f64());
            total.push((t3 - t0).as_secs_f64());
        }
        if step + 1 < WARMUP_STEPS + args.steps {
            zero_grads(&net);
        }
    }
    // The same bytes three ways, back to back and interleaved so that other load on the
    // machine hits all three alike: the bucketed path on the last step's gradients
    // (buckets the gradients are views of), the collective on one flat tensor, and one raw
    // MPI_Allreduce between preallocated buffers.
    let n = (bytes / 4) as usize;
    let mut flat = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
    let send = vec![1.0f32; n];
    let mut recv = vec![0.0f32; n];
    let (mut bucketed, mut tensor, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..WARMUP_STEPS + args.repeats {
        for (variant, times) in [&mut bucketed, &mut tensor, &mut raw]
            .into_iter()
            .enumerate()
        {
            mpi.barrier();
            let t0 = Instant::now();
            match variant {
                0 => {
                    reducer.all_reduce(mpi, net.vs());
                }
                1 => mpi.all_reduce_sum(&mut flat),
                _ if world > 1 => {
                    mpi.communicator().all_reduce_into(
                        &send[..],
                        &mut recv[..],
                        SystemOperation::sum(),
                    );
                }
                _ => {}
            }
            if step >= WARMUP_STEPS {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    zero_grads(&net);
    if world > 1 && recv.first().is_some_and(|&x| x != world as f32) {
        return Err(Error::Measurement {
            what: "raw all-reduce",
            msg: format!("gave {} instead of {world}", recv[0]),
        });
    }
    // Every rank reports rank 0's view of the slowest rank: take the max over ranks.
    let mut medians = [
        median(&compute),
        median(&reduce),
        median(&total),
        median(&bucketed),
        median(&tensor),
        median(&raw),
    ];
    max_over_ranks(mpi, &mut medians);
    let [compute_s, reduce_s, total_s, bucketed_s, tensor_s, raw_s] = medians;
    let bus = 2.0 * (world as f64 - 1.0) / world as f64;
    let gbs = |s: f64| if s > 0.0 { bytes as f64 / s / 1e9 } else { 0.0 };
    Ok(Row {
        preset: preset.to_owned(),
        ranks: world,
        parameters: net.num_parameters(),
        bytes_per_step: bytes,
        step_ms: total_s * 1e3,
        compute_ms: compute_s * 1e3,
        allreduce_ms: reduce_s * 1e3,
        bucketed_ms: bucketed_s * 1e3,
        tensor_ms: tensor_s * 1e3,
        raw_allreduce_ms: raw_s * 1e3,
        algbw_gbs: gbs(bucketed_s),
        raw_algbw_gbs: gbs(raw_s),
        busbw_gbs: gbs(bucketed_s) * bus,
        raw_busbw_gbs: gbs(raw_s) * bus,
        ratio: if bytes > 0 && bucketed_s > 0.0 {
            raw_s / bucketed_s
        } else {
            0.0
        },
    })
}

fn zero_grads(net: &Net) {
    for v in net.vs().trainable_variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn max_over_ranks(mpi: &mut Mpi, values: &mut [f64]) {
    let mut out = vec![0.0; values.len()];
    mpi.communicator()
        .all_reduce_into(&values[..], &mut out[..], SystemOperation::max());
    values.copy_from_slice(&out);
}

/// Random full-length rows (no padding), different on every rank.
fn synthetic_batch(args: &Options, vocab: i64, rank: u64) -> edkd_data::Batch {
    let (rows, enc, dec) = (args.rows, args.input_tokens, args.target_tokens + 1);
    let ids = |len: usize| -> Vec<i64> {
        let t = Tensor::randint_low(3, vocab, [len as i64], (Kind::Int64, Device::Cpu));
        Vec::<i64>::try_from(&t).unwrap_or_default()
    };
    tch::manual_seed(1000 + rank as i64);
    let encoder_ids = ids(rows * enc);
    let targets = ids(rows * dec);
    let mut decoder_input_ids = vec![1; rows * dec];
    let mut labels = vec![2; rows * dec];
    for r in 0..rows {
        for t in 0..dec - 1 {
            decoder_input_ids[r * dec + t + 1] = targets[r * dec + t];
            labels[r * dec + t] = targets[r * dec + t];
        }
    }
    edkd_data::Batch {
        rows,
        indices: (0..rows as u64).collect(),
        ids: (0..rows).map(|r| format!("bench-{rank}-{r}")).collect(),
        enc_len: enc,
        encoder_ids,
        encoder_mask: vec![true; rows * enc],
        dec_len: dec,
        decoder_input_ids,
        labels,
        decoder_mask: vec![true; rows * dec],
        teacher_len: 0,
        teacher_ids: Vec::new(),
        teacher_mask: Vec::new(),
        target_start: vec![enc as i64; rows],
        images: None,
    }
}
