//! `edkd export`: a student, twin or teacher folder to ONNX (optionally int8), and the
//! ONNX Runtime side of `--runtime onnx` in `edkd generate` and `edkd eval`.

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::{Context, bail};
use edkd_export::{ExportOptions, ModelKind, OnnxModel, Scheme, export_folder};
use edkd_models::GenerationConfig;
use edkd_trainer::eval::Evaluable;
use edkd_trainer::model::BatchTensors;
use tch::{Kind, Tensor};

/// Which runtime runs a model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// libtorch, on a model folder.
    #[default]
    Torch,
    /// ONNX Runtime, on an `edkd export` folder.
    Onnx,
}

#[derive(clap::Args)]
pub struct Args {
    /// A student folder, its decoder-only twin, or a Hugging Face teacher folder.
    #[arg(long)]
    model: PathBuf,
    /// Output format (only onnx).
    #[arg(long, default_value = "onnx", value_parser = ["onnx"])]
    format: String,
    /// Output folder: encoder.onnx + decoder.onnx (student) or model.onnx, export.json,
    /// tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    /// none; int8 (int8 weights, activations quantised at run time: integer matmuls);
    /// int8-weight (int8 weights dequantised in the graph, f32 matmuls).
    #[arg(long, default_value = "none", value_parser = ["none", "int8", "int8-weight"])]
    quantize: String,
    /// With --quantize: keep the embedding tables (and a tied output head) in f32.
    #[arg(long)]
    keep_embeddings_f32: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scheme = Scheme::parse(&args.quantize).expect("clap checked the value");
    if args.keep_embeddings_f32 && !scheme.is_quantized() {
        bail!("--keep-embeddings-f32 needs --quantize int8 or int8-weight");
    }
    let opts = ExportOptions {
        scheme,
        quantize_embeddings: !args.keep_embeddings_f32,
    };
    let m = export_folder(&args.model, &args.out, &opts).with_context(|| {
        format!(
            "exporting {} to {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    println!(
        "exported {} ({}, {:.2}M parameters, {}) to {}",
        args.model.display(),
        m.architecture,
        m.parameters as f64 / 1e6,
        match &m.quantization {
            Some(q) => format!(
                "{:?}{}",
                q.scheme,
                if q.embeddings {
                    ", embeddings int8"
                } else {
                    ""
                }
            ),
            None => "f32".into(),
        },
        args.out.display()
    );
    for (name, g) in &m.graphs {
        println!(
            "  {name:<8} {:<14} {:>12} bytes, {} inputs, {} outputs",
            g.file,
            g.bytes,
            g.inputs.len(),
            g.outputs.len()
        );
    }
    println!("  total {} bytes; see export.json", m.model_bytes());
    Ok(())
}

/// ONNX Runtime threads for `--runtime onnx`.
pub const DEFAULT_THREADS: usize = 2;

/// An ONNX export as something `edkd_trainer::eval::evaluate` can score.
pub struct OnnxEval(pub RefCell<OnnxModel>);

fn ort_err(e: edkd_export::Error) -> edkd_trainer::Error {
    edkd_trainer::Error::Config(e.to_string())
}

/// Rows of a `[b, w]` int64 tensor, cut to each row's `mask` length when given.
fn rows(t: &Tensor, mask: Option<&Tensor>) -> edkd_trainer::Result<Vec<Vec<i64>>> {
    let (b, w) = t.size2()?;
    let all = Vec::<i64>::try_from(&t.to_kind(Kind::Int64).contiguous().view([-1]))?;
    let lens: Vec<i64> = match mask {
        Some(m) => Vec::<i64>::try_from(&m.to_kind(Kind::Int64).sum_dim_intlist(
            -1,
            false,
            Kind::Int64,
        ))?,
        None => vec![w; b as usize],
    };
    Ok((0..b as usize)
        .map(|r| all[r * w as usize..][..lens[r] as usize].to_vec())
        .collect())
}

impl Evaluable for OnnxEval {
    fn logits(&self, t: &BatchTensors) -> edkd_trainer::Result<Tensor> {
        let mut m = self.0.borrow_mut();
        match m.kind() {
            ModelKind::Seq2seq => {
                let inputs = rows(&t.encoder_ids, Some(&t.encoder_mask))?;
                let dec = rows(&t.decoder_input_ids, None)?;
                Ok(m.seq2seq_logits(&inputs, &dec)
                    .map_err(ort_err)?
                    .to_tensor())
            }
            ModelKind::Causal => {
                // As the trainer scores a decoder-only model: logits over `input ++ target`
                // gathered at the positions that predict each label.
                let ids = rows(&t.teacher_ids, None)?;
                let mask = rows(&t.teacher_mask.to_kind(Kind::Int64), None)?;
                let all = m.causal_logits(&ids, &mask).map_err(ort_err)?.to_tensor();
                let v = all.size()[2];
                let (b, dl) = t.teacher_positions.size2()?;
                let idx = t.teacher_positions.unsqueeze(-1).expand([b, dl, v], false);
                Ok(all.gather(1, &idx, false))
            }
        }
    }

    fn generate(
        &self,
        inputs: &[Vec<i64>],
        cfg: &GenerationConfig,
    ) -> edkd_trainer::Result<Vec<Vec<i64>>> {
        self.0.borrow_mut().generate(inputs, cfg).map_err(ort_err)
    }

    fn eos(&self) -> i64 {
        self.0
            .borrow()
            .manifest
            .eos_token_ids
            .first()
            .copied()
            .unwrap_or(-1)
    }

    fn pad(&self) -> i64 {
        self.0.borrow().manifest.pad_token_id
    }
}

/// Timed greedy runs per runtime in the demo's device comparison (best of these).
const DEMO_REPEATS: usize = 3;

/// The demo's last step: exports the distilled student to ONNX int8, evaluates it under
/// ONNX Runtime on the held-out examples the libtorch row (`torch`) was scored on, times
/// greedy decoding of one held-out input on both, and renders the two rows as a table.
/// Returns `None` (with the reason printed) when ONNX Runtime is not installed.
pub fn demo_device_table(
    student: &std::path::Path,
    data: &std::path::Path,
    cfg: &edkd_trainer::config::EvalSection,
    torch: &edkd_trainer::eval::EvalReport,
    out: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    if let Err(e) = edkd_export::runtime::init() {
        eprintln!("  skipping the ONNX Runtime row: {e}");
        return Ok(None);
    }
    let opts = ExportOptions {
        scheme: Scheme::Int8,
        quantize_embeddings: true,
    };
    let manifest = export_folder(student, out, &opts)?;
    let int8 = crate::train::evaluate_onnx(out, data, "validation", cfg, DEFAULT_THREADS)?;

    let (ds, _) = edkd_trainer::eval::open_eval_split(out, data, "validation")?;
    let ids: Vec<i64> = ds.example(0).input_ids.iter().map(|&x| x as i64).collect();
    let n = cfg.max_new_tokens.max(2);
    let s = edkd_models::student::StudentModel::load(student, Default::default())?;
    let torch_bytes = s.num_parameters() as u64 * 4;
    // libtorch first: ONNX Runtime's idle threads spin and would slow it down.
    let (mut tf, mut td, mut of, mut od) =
        (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..=DEMO_REPEATS {
        let (f, d) = edkd_experiments::edge::time_student_torch(&s.model, &ids, n);
        (tf, td) = (tf.min(f), td.min(d));
    }
    drop(s);
    let mut m = OnnxModel::load(out, DEFAULT_THREADS)?;
    for _ in 0..=DEMO_REPEATS {
        let (f, d) = m.time_greedy(&ids, n)?;
        (of, od) = (of.min(f), od.min(d));
    }
    let row =
        |name: &str, r: &edkd_trainer::eval::EvalReport, bytes: u64, first: f64, decode: f64| {
            let o = r.overall.clone().unwrap_or_default();
            format!(
                "| {name:<22} | {:>6.3} | {:>6.3} | {:>7.3} | {:>9.2} | {:>9.2} | {:>9.1} |\n",
                o.em,
                o.f1,
                o.rouge_l,
                bytes as f64 / (1u64 << 20) as f64,
                first * 1e3,
                (n - 1) as f64 / decode
            )
        };
    let mut t = format!(
        "| {:<22} | {:>6} | {:>6} | {:>7} | {:>9} | {:>9} | {:>9} |\n|{}|{}|{}|{}|{}|{}|{}|\n",
        "student, KD, runtime",
        "EM",
        "F1",
        "ROUGE-L",
        "model MiB",
        "first ms",
        "decode/s",
        "-".repeat(24),
        "-".repeat(8),
        "-".repeat(8),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(11)
    );
    t += &row("libtorch f32", torch, torch_bytes, tf, td);
    t += &row("ONNX Runtime int8", &int8, manifest.model_bytes(), of, od);
    Ok(Some(t))
}
