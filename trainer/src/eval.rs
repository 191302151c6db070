//! Evaluation on a held-out split: validation CE (and KD when a teacher is at hand),
//! perplexity, and cached greedy generation scored with exact match, SQuAD-style token F1
//! and ROUGE-1/2/L/Lsum, overall and per task.

use std::collections::BTreeMap;

use edkd_data::images::{RgbImage, decode_rgb8};
use edkd_data::{Batch, Dataset, Reader, ReaderConfig};
use edkd_models::Tokenizer;
use edkd_models::generate::GenerationConfig;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::EvalSection;
use crate::error::Result;
use crate::loss::KdLoss;
use crate::metrics::{MetricSums, SampleMetrics};
use crate::model::{BatchTensors, Net};
use crate::source::TeacherSource;

/// Task scores (means over examples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub count: usize,
    pub em: f64,
    pub f1: f64,
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
}

/// One evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub step: u64,
    pub examples: usize,
    /// Mean cross-entropy per target token (incl. eos).
    pub val_loss: f64,
    pub perplexity: f64,
    /// Mean KD divergence per target token, when a teacher was available.
    pub val_kd: Option<f64>,
    pub overall: Option<Scores>,
    pub by_task: BTreeMap<String, Scores>,
    /// A few predictions, for eyeballing: (id, prediction, reference).
    pub samples: Vec<(String, String, String)>,
}

impl EvalReport {
    /// The value of `metric` (val_loss or a task score) and whether higher is better.
    pub fn metric(&self, metric: &str) -> Option<(f64, bool)> {
        if metric == "val_loss" {
            return Some((self.val_loss, false));
        }
        let s = self.overall.as_ref()?;
        let v = match metric {
            "em" => s.em,
            "f1" => s.f1,
            "rouge1" => s.rouge1,
            "rouge2" => s.rouge2,
            "rougeL" => s.rouge_l,
            "rougeLsum" => s.rouge_lsum,
            _ => return None,
        };
        Some((v, true))
    }
}

/// What evaluation needs from a model: logits aligned with a batch's labels
/// (`[b, dec_len, V]`) and batched generation. Implemented by [`Net`] on libtorch, and by
/// other runtimes (the `edkd` binary wraps ONNX Runtime exports in it).
pub trait Evaluable {
    fn logits(&self, t: &BatchTensors) -> Result<tch::Tensor>;
    fn generate(&self, inputs: &[Vec<i64>], cfg: &GenerationConfig) -> Result<Vec<Vec<i64>>>;
    fn eos(&self) -> i64;
    fn pad(&self) -> i64;

    /// The batch's tensors on `device`. A model that reads images adds their pixels; the
    /// default is a text model's, which refuses a batch with images.
    fn tensors(&self, b: &Batch, device: Device) -> Result<BatchTensors> {
        crate::model::vision::refuse_images(b, "this model (a text model)")?;
        Ok(BatchTensors::new(b, device))
    }

    /// [`Evaluable::generate`] with each input's image (`None` for a row without one). The
    /// default is a text model's, which refuses images.
    fn generate_with_images(
        &self,
        inputs: &[Vec<i64>],
        images: &[Option<RgbImage>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>> {
        if images.iter().any(Option::is_some) {
            return Err(crate::Error::Images(
                "this model (a text model) cannot read the inputs' images".into(),
            ));
        }
        self.generate(inputs, cfg)
    }
}

impl Evaluable for Net {
    fn logits(&self, t: &BatchTensors) -> Result<tch::Tensor> {
        Net::logits(self, t, false)
    }
    fn generate(&self, inputs: &[Vec<i64>], cfg: &GenerationConfig) -> Result<Vec<Vec<i64>>> {
        Net::generate(self, inputs, cfg)
    }
    fn tensors(&self, b: &Batch, device: Device) -> Result<BatchTensors> {
        Net::tensors(self, b, device)
    }
    fn generate_with_images(
        &self,
        inputs: &[Vec<i64>],
        images: &[Option<RgbImage>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>> {
        Net::generate_with_images(self, inputs, images, cfg)
    }
    fn eos(&self) -> i64 {
        Net::eos(self)
    }
    fn pad(&self) -> i64 {
        Net::pad(self)
    }
}

/// Opens `split` of the dataset in `data` for evaluating the model folder `model`: reads
/// the folder's `tokenizer.json` and checks that the dataset was tokenized with it.
pub fn open_eval_split(
    model: &std::path::Path,
    data: &std::path::Path,
    split: &str,
) -> Result<(Dataset, Tokenizer)> {
    let tok_path = model.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(crate::Error::Config(format!(
            "{}: no tokenizer.json; evaluation decodes predictions with the model's tokenizer",
            model.display()
        )));
    }
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let mut open = edkd_data::OpenOptions::new(split);
    open.verify = edkd_data::Verify::RowCounts;
    open.expect_tokenizer_sha256 = Some(tokenizer.sha256().to_owned());
    Ok((Dataset::open(data, &open)?, tokenizer))
}

/// Loads a saved model folder (student or decoder-only, text or vision-language) with its
/// `tokenizer.json` and opens `split` of the dataset in `data`, checking it was tokenized
/// with that tokenizer.
fn open_folder(
    model: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    device: Device,
) -> Result<(Net, Dataset, Tokenizer)> {
    use crate::config::{Architecture, ModelSection};
    use edkd_models::student::{FolderKind, folder_kind};
    let kind = folder_kind(model)?;
    let (ds, tokenizer) = open_eval_split(model, data, split)?;
    let specials = ds.manifest.tokenizer.special_ids;
    let section = ModelSection {
        architecture: match kind {
            FolderKind::Student => Architecture::EncoderDecoder,
            FolderKind::Teacher => Architecture::DecoderOnly,
        },
        init: Some(model.to_owned()),
        ..Default::default()
    };
    let vocab = crate::model::Vocab {
        size: ds.manifest.tokenizer.vocab_size as i64,
        pad: specials.pad as i64,
        bos: specials.bos as i64,
        eos: specials.eos as i64,
        image_token_id: crate::train::image_token_id(&ds)?,
    };
    let net = Net::build(&section, vocab, device, 0)?;
    Ok((net, ds, tokenizer))
}

/// Evaluates a saved model folder (student or decoder-only) on `split` of the dataset in
/// `data` ([`open_folder`]) with [`evaluate`], without a teacher.
pub fn evaluate_folder(
    model: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    cfg: &EvalSection,
    device: Device,
) -> Result<EvalReport> {
    let (net, ds, tokenizer) = open_folder(model, data, split, device)?;
    let loss = crate::config::TrainConfig::default().loss.kd();
    evaluate(&net, &ds, None, &loss, cfg, Some(&tokenizer), device, 0)
}

/// Per-example predictions ([`predict`]) of a saved model folder on the first
/// `cfg.max_examples` (0: all) examples of `split`.
pub fn predict_folder(
    model: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    cfg: &EvalSection,
    device: Device,
) -> Result<Vec<Prediction>> {
    let (net, ds, tokenizer) = open_folder(model, data, split, device)?;
    let n = if cfg.max_examples == 0 {
        ds.len() as usize
    } else {
        cfg.max_examples
    };
    predict(&net, &ds, n, cfg, &tokenizer)
}

#[allow(clippy::too_many_arguments)]
/// Evaluates `net` on `ds` (the first `cfg.max_examples` examples in manifest order).
pub fn evaluate(
    net: &(impl Evaluable + ?Sized),
    ds: &Dataset,
    teacher: Option<&mut (dyn TeacherSource + '_)>,
    loss: &KdLoss,
    cfg: &EvalSection,
    tokenizer: Option<&Tokenizer>,
    device: Device,
    step: u64,
) -> Result<EvalReport> {
    let n = if cfg.max_examples == 0 {
        ds.len() as usize
    } else {
        cfg.max_examples.min(ds.len() as usize)
    };
    let mut report = EvalReport {
        step,
        examples: n,
        ..Default::default()
    };
    if n == 0 {
        return Ok(report);
    }
    let _guard = tch::no_grad_guard();

    // Losses: batches in manifest order, limited to the first n examples.
    let reader_cfg = ReaderConfig {
        rank: 0,
        world: 1,
        seed: 0,
        max_tokens: 1 << 16,
        max_rows: cfg.batch_rows,
        bucket_window: 4096,
        bucket_by_length: false,
        shuffle: false,
        teacher: true,
    };
    let eval_ds = Dataset::open(&ds.dir, &{
        let mut o = edkd_data::OpenOptions::new(&ds.split);
        o.verify = edkd_data::Verify::RowCounts;
        o
    })?;
    let mut reader = Reader::new(eval_ds, reader_cfg, None)?;
    let mut teacher = teacher;
    let (mut ce_sum, mut kd_sum, mut tokens) = (0.0, 0.0, 0i64);
    let mut seen = 0usize;
    while seen < n {
        let Some(mut batch) = reader.try_next_batch()? else {
            break;
        };
        if batch.rows == 0 {
            continue;
        }
        if seen + batch.rows > n {
            batch = truncate_rows(&batch, n - seen);
        }
        seen += batch.rows;
        let t = net.tensors(&batch, device)?;
        let logits = net.logits(&t)?;
        let targets = match teacher.as_deref_mut() {
            Some(src) => Some(src.score(&batch)?),
            None => None,
        };
        let teacher_vocab = teacher.as_deref().map(|s| s.info().vocab_size).unwrap_or(0);
        let tt = targets
            .as_ref()
            .map(|o| o.targets(&t.decoder_mask, device).0);
        let plain = KdLoss {
            label_smoothing: 0.0,
            alpha: 1.0,
            ..*loss
        };
        let parts = plain.total(
            &logits,
            &t.labels,
            &t.decoder_mask,
            tt.as_ref().map(|x| (x, teacher_vocab)),
        );
        ce_sum += parts.ce * parts.tokens as f64;
        kd_sum += parts.kd * parts.tokens as f64;
        tokens += parts.tokens;
    }
    if tokens > 0 {
        report.val_loss = ce_sum / tokens as f64;
        report.perplexity = report.val_loss.exp();
        if teacher.is_some() {
            report.val_kd = Some(kd_sum / tokens as f64);
        }
    }

    if !cfg.generate {
        return Ok(report);
    }
    let Some(tokenizer) = tokenizer else {
        return Ok(report);
    };
    let mut sums = MetricSums::default();
    for p in predict(net, ds, n, cfg, tokenizer)? {
        sums.add_metrics(&p.task, &p.metrics);
        if report.samples.len() < 5 {
            report.samples.push((p.id, p.prediction, p.reference));
        }
    }
    let to_scores = |m: &crate::metrics::MetricMeans| Scores {
        count: m.count,
        em: m.exact_match,
        f1: m.f1,
        rouge1: m.rouge1,
        rouge2: m.rouge2,
        rouge_l: m.rouge_l,
        rouge_lsum: m.rouge_lsum,
    };
    report.overall = Some(to_scores(&sums.overall()));
    report.by_task = sums
        .by_task()
        .iter()
        .map(|(k, v)| (k.clone(), to_scores(v)))
        .collect();
    Ok(report)
}

/// One scored prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub task: String,
    pub prediction: String,
    pub reference: String,
    pub metrics: SampleMetrics,
}

/// Greedy (cached) answers of `net` for the first `n` examples of `ds` in manifest
/// order, decoded and scored against the references one by one: what a paired or
/// bootstrapped comparison of models needs.
pub fn predict(
    net: &(impl Evaluable + ?Sized),
    ds: &Dataset,
    n: usize,
    cfg: &EvalSection,
    tokenizer: &Tokenizer,
) -> Result<Vec<Prediction>> {
    let _guard = tch::no_grad_guard();
    let n = n.min(ds.len() as usize);
    let gen_cfg = GenerationConfig {
        eos_token_ids: vec![net.eos()],
        pad_token_id: net.pad(),
        // The model's padding columns beyond the tokenizer decode to nothing.
        max_token_id: Some(ds.manifest.tokenizer.vocab_size as i64),
        ..GenerationConfig::greedy(cfg.max_new_tokens)
    };
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + cfg.batch_rows.max(1)).min(n);
        let examples: Vec<_> = (start..end).map(|i| ds.example(i as u64)).collect();
        let inputs: Vec<Vec<i64>> = examples
            .iter()
            .map(|e| e.input_ids.iter().map(|&x| x as i64).collect())
            .collect();
        let images = examples
            .iter()
            .map(|e| e.image.map(|b| decode_rgb8(b, e.id)).transpose())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let outputs = net.generate_with_images(&inputs, &images, &gen_cfg)?;
        for (e, ids) in examples.iter().zip(outputs) {
            let pred_ids: Vec<i64> = ids.into_iter().take_while(|&t| t != net.eos()).collect();
            let gold_ids: Vec<i64> = e.target_ids.iter().map(|&x| x as i64).collect();
            let prediction = tokenizer.decode(&pred_ids, true)?;
            let reference = tokenizer.decode(&gold_ids, true)?;
            out.push(Prediction {
                id: e.id.to_owned(),
                task: e.task.to_owned(),
                metrics: SampleMetrics::compute(&prediction, &reference),
                prediction,
                reference,
            });
        }
        start = end;
    }
    Ok(out)
}

/// The first `rows` rows of a batch (same padded widths).
fn truncate_rows(b: &edkd_data::Batch, rows: usize) -> edkd_data::Batch {
    let cut = |v: &[i64], w: usize| v[..rows * w].to_vec();
    let cutb = |v: &[bool], w: usize| v[..rows * w].to_vec();
    edkd_data::Batch {
        rows,
        indices: b.indices[..rows].to_vec(),
        ids: b.ids[..rows].to_vec(),
        enc_len: b.enc_len,
        encoder_ids: cut(&b.encoder_ids, b.enc_len),
        encoder_mask: cutb(&b.encoder_mask, b.enc_len),
        dec_len: b.dec_len,
        decoder_input_ids: cut(&b.decoder_input_ids, b.dec_len),
        labels: cut(&b.labels, b.dec_len),
        decoder_mask: cutb(&b.decoder_mask, b.dec_len),
        teacher_len: b.teacher_len,
        teacher_ids: cut(&b.teacher_ids, b.teacher_len),
        teacher_mask: cutb(&b.teacher_mask, b.teacher_len),
        target_start: b.target_start[..rows].to_vec(),
        images: b.images.as_ref().map(|v| v[..rows].to_vec()),
    }
}

/// Per-task rows for a results table: task -> (EM, F1, ROUGE-L), with `all` for the
/// overall scores.
pub fn task_table(r: &EvalReport) -> std::collections::BTreeMap<String, (f64, f64, f64)> {
    let mut t: std::collections::BTreeMap<String, (f64, f64, f64)> = r
        .by_task
        .iter()
        .map(|(k, s)| (k.clone(), (s.em, s.f1, s.rouge_l)))
        .collect();
    if let Some(o) = &r.overall {
        t.insert("all".into(), (o.em, o.f1, o.rouge_l));
    }
    t
}
