//! Scoring on the test split: greedy generation by each student and by the teacher (in its
//! chat view), every prediction cut to its first sentence (as the targets are), per-example
//! ROUGE-L, ROUGE-Lsum, F1 and EM (kept in `test_predictions.jsonl`), and first-token
//! latency at batch 1.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use edkd_data::{Dataset, OpenOptions};
use edkd_models::student::StudentModel;
use edkd_models::{Decoding, GenerationConfig, LoadOptions, Teacher, generate, generate_seq2seq};
use edkd_trainer::metrics::SampleMetrics;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::KdRealConfig;
use super::arms::{Arm, Files, read_examples, read_json, teacher_view, write_json};
use crate::error::{Error, Result};

/// One scored test prediction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub prediction: String,
    pub reference: String,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
    pub f1: f64,
    pub em: f64,
}

/// Abbreviations whose period does not end a sentence (as in the extractor).
const ABBREVIATIONS: [&str; 8] = [
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "resp.", "approx.", "incl.",
];

/// The first sentence of the first line of a generated text, trimmed (the targets are first
/// sentences; a model that goes on is not rewarded or punished for the rest).
pub fn first_sentence(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    let mut from = 0;
    while let Some(j) = line[from..].find('.') {
        let end = from + j + 1;
        let at_break = end == line.len() || line[end..].starts_with(' ');
        if at_break && !ABBREVIATIONS.iter().any(|a| line[..end].ends_with(a)) {
            return line[..end].to_owned();
        }
        from = end;
    }
    line.to_owned()
}

fn scored(id: &str, raw: &str, reference: &str) -> Prediction {
    let prediction = first_sentence(raw);
    let m = SampleMetrics::compute(&prediction, reference);
    Prediction {
        id: id.to_owned(),
        prediction,
        reference: reference.to_owned(),
        rouge_l: m.rouge.rouge_l.fmeasure,
        rouge_lsum: m.rouge.rouge_lsum.fmeasure,
        f1: m.f1,
        em: m.exact_match,
    }
}

/// The test examples in dataset order: (id, input ids, reference text).
fn test_set(files: &Files) -> Result<Vec<(String, Vec<i64>, String)>> {
    let refs: HashMap<String, String> = read_examples(&files.task_dir().join("test.jsonl"))?
        .into_iter()
        .map(|e| (e.id, e.target))
        .collect();
    let ds = Dataset::open(&files.test_data(), &OpenOptions::new("train"))?;
    (0..ds.len())
        .map(|i| {
            let e = ds.example(i);
            let reference = refs.get(e.id).cloned().ok_or_else(|| Error::Input {
                field: "test split",
                msg: format!("example `{}` is not in task/test.jsonl", e.id),
            })?;
            let ids = e.input_ids.iter().map(|&t| i64::from(t)).collect();
            Ok((e.id.to_owned(), ids, reference))
        })
        .collect()
}

/// Stop tokens: the data's eos, and the chat template's end of turn (which a KD student
/// learns from the teacher at the last position).
fn stop_ids(files: &Files, data_eos: i64) -> Result<Vec<i64>> {
    let tok = edkd_models::Tokenizer::from_file(&files.tokenizer())?;
    let mut ids = vec![data_eos];
    if let Some(t) = edkd_models::chat::ChatTemplate::find(&files.tokenizer_dir())?
        && let Some(id) = tok.token_id(&t.eos_token)
        && id != data_eos
    {
        ids.push(id);
    }
    Ok(ids)
}

fn generation_config(
    cfg: &KdRealConfig,
    eos: Vec<i64>,
    pad: i64,
    vocab: usize,
) -> GenerationConfig {
    GenerationConfig {
        eos_token_ids: eos,
        pad_token_id: pad,
        max_token_id: Some(vocab as i64),
        ..GenerationConfig::greedy(cfg.max_new_tokens)
    }
}

fn decode(tok: &edkd_models::Tokenizer, ids: &[i64], stops: &[i64]) -> Result<String> {
    let end = ids
        .iter()
        .position(|t| stops.contains(t))
        .unwrap_or(ids.len());
    Ok(tok.decode(&ids[..end], true)?)
}

fn save(path: &Path, rows: &[Prediction]) -> Result<()> {
    let text: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).expect("serialises") + "\n")
        .collect();
    std::fs::write(path, text).map_err(Error::io(path))
}

fn load(path: &Path) -> Result<Option<Vec<Prediction>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| Error::Input {
                field: "predictions",
                msg: format!("{}: {e}", path.display()),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The trained student of `arm` on the test split.
pub fn student(
    cfg: &KdRealConfig,
    files: &Files,
    arm: &Arm,
    device: Device,
) -> Result<Vec<Prediction>> {
    let path = files.run(arm).join("test_predictions.jsonl");
    if let Some(rows) = load(&path)? {
        return Ok(rows);
    }
    let opts = LoadOptions {
        device,
        kind: Kind::Float,
    };
    let s = StudentModel::load(&files.run(arm).join("final"), opts)?;
    let tok = s.tokenizer.as_ref().ok_or_else(|| Error::Input {
        field: "student",
        msg: "the final model has no tokenizer.json".into(),
    })?;
    let c = &s.model.config;
    let stops = stop_ids(files, c.eos_token_id)?;
    let gcfg = generation_config(cfg, stops.clone(), c.pad_token_id, tok.vocab_size());
    let mut rows = Vec::new();
    for chunk in test_set(files)?.chunks(cfg.generate_rows.max(1)) {
        let inputs: Vec<Vec<i64>> = chunk.iter().map(|(_, ids, _)| ids.clone()).collect();
        let outs = generate_seq2seq(&s.model, &inputs, &gcfg, Decoding::Cached)?;
        for ((id, _, reference), out) in chunk.iter().zip(outs.iter()) {
            rows.push(scored(id, &decode(tok, out, &stops)?, reference));
        }
    }
    save(&path, &rows)?;
    Ok(rows)
}

/// The teacher, reading each test input in its chat view.
pub fn teacher(
    cfg: &KdRealConfig,
    files: &Files,
    teacher: &Path,
    device: Device,
) -> Result<Vec<Prediction>> {
    let path = files.root.join("runs/teacher_test_predictions.jsonl");
    if let Some(rows) = load(&path)? {
        return Ok(rows);
    }
    let t = Teacher::load(
        teacher,
        LoadOptions {
            device,
            kind: Kind::Float,
        },
    )?;
    let tok = edkd_models::Tokenizer::from_file(&files.tokenizer())?;
    let view = teacher_view(cfg, files)?;
    let data_eos = Dataset::open(&files.test_data(), &OpenOptions::new("train"))?
        .manifest
        .tokenizer
        .special_ids
        .eos;
    let stops = stop_ids(files, i64::from(data_eos))?;
    let pad = t.model.config.pad_token_id.unwrap_or(i64::from(data_eos));
    let gcfg = generation_config(cfg, stops.clone(), pad, tok.vocab_size());
    let mut rows = Vec::new();
    for chunk in test_set(files)?.chunks(cfg.generate_rows.max(1)) {
        let prompts = chunk
            .iter()
            .map(|(_, ids, _)| {
                let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                Ok(view.prompt(&ids)?.into_iter().map(i64::from).collect())
            })
            .collect::<Result<Vec<Vec<i64>>>>()?;
        let outs = generate(&t.model, &prompts, &gcfg)?;
        for ((id, _, reference), out) in chunk.iter().zip(outs.iter()) {
            rows.push(scored(id, &decode(&tok, out, &stops)?, reference));
        }
    }
    save(&path, &rows)?;
    Ok(rows)
}

/// Median first-token latency at batch 1, milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub examples: usize,
    /// Encode the input, one decoder step, logits.
    pub student_ms: f64,
    /// Prefill of the chat-view prompt, logits of its last position.
    pub teacher_ms: f64,
    pub student_parameters: i64,
    pub teacher_parameters: i64,
    pub mean_student_input_tokens: f64,
    pub mean_teacher_prompt_tokens: f64,
    pub threads: i32,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times the decoder-initialised student (the architecture every arm shares) and the teacher.
pub fn latency(
    cfg: &KdRealConfig,
    files: &Files,
    teacher: &Path,
    device: Device,
) -> Result<Latency> {
    let path = files.root.join("runs/latency.json");
    if path.is_file() {
        return read_json(&path);
    }
    let opts = LoadOptions {
        device,
        kind: Kind::Float,
    };
    let s = StudentModel::load(&files.decoder_init(), opts)?;
    let t = Teacher::load(teacher, opts)?;
    let view = teacher_view(cfg, files)?;
    let tests = test_set(files)?;
    let n = cfg.latency_examples.min(tests.len()).max(1);
    let (mut ts, mut tt, mut n_in, mut n_prompt) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let _guard = tch::no_grad_guard();
    for (i, (_, ids, _)) in tests.iter().take(n + 2).enumerate() {
        let x = Tensor::from_slice(ids).view([1, -1]).to_device(device);
        let valid = x.ones_like().to_kind(Kind::Bool);
        let bos = Tensor::from_slice(&[s.model.config.bos_token_id])
            .view([1, 1])
            .to_device(device);
        let t0 = Instant::now();
        let enc = s.model.encode(&x, &valid, false);
        let h = s.model.decode(&bos, &enc, None, false);
        let _ = s.model.logits(&h).argmax(-1, false).int64_value(&[0, 0]);
        let student_ms = t0.elapsed().as_secs_f64() * 1e3;
        let raw: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        let prompt: Vec<i64> = view.prompt(&raw)?.into_iter().map(i64::from).collect();
        let p = Tensor::from_slice(&prompt).view([1, -1]).to_device(device);
        let t0 = Instant::now();
        let logits = t
            .model
            .forward_padded(&p, &p.ones_like().to_kind(Kind::Bool));
        let last = logits.size()[1] - 1;
        let _ = logits.get(0).get(last).argmax(-1, false).int64_value(&[]);
        let teacher_ms = t0.elapsed().as_secs_f64() * 1e3;
        if i >= 2 {
            // The first two are warm-up.
            ts.push(student_ms);
            tt.push(teacher_ms);
            n_in += ids.len();
            n_prompt += prompt.len();
        }
    }
    let k = ts.len().max(1) as f64;
    let l = Latency {
        examples: ts.len(),
        student_ms: median(ts),
        teacher_ms: median(tt),
        student_parameters: s.num_parameters(),
        teacher_parameters: t.num_parameters(),
        mean_student_input_tokens: n_in as f64 / k,
        mean_teacher_prompt_tokens: n_prompt as f64 / k,
        threads: tch::get_num_threads(),
    };
    write_json(&path, &l)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_cut_to_their_first_sentence() {
        assert_eq!(first_sentence("  Return x. Then y."), "Return x.");
        assert_eq!(
            first_sentence("Use e.g. this one. More."),
            "Use e.g. this one."
        );
        assert_eq!(
            first_sentence("No period here\nsecond line"),
            "No period here"
        );
        assert_eq!(
            first_sentence("Version 1.5 of it. Rest"),
            "Version 1.5 of it."
        );
        assert_eq!(first_sentence(""), "");
    }
}
