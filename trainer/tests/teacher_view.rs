//! The teacher reads its chat template around each input while the student keeps the plain
//! input: the prompt ids equal transformers' `apply_chat_template` (fixture teacher, and
//! SmolLM2's own template on real text), and the teacher's distributions at the shifted
//! positions `len(prompt) - 1 + t` equal transformers' for every target token and the eos.

use std::path::{Path, PathBuf};
use std::process::Command;

use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use edkd_models::Tokenizer;
use edkd_models::chat::{ChatTemplate, TeacherView};
use edkd_trainer::source::{InProcess, TeacherOut};
use edkd_trainer::view::Viewed;
use tch::{Device, Kind, Tensor};

mod common;
use common::{prepare, serial, teacher_dir};

/// fp32 logits against transformers' (f64 log-softmax of fp32 logits).
const TOLERANCE: f64 = 1e-4;
/// A ChatML-like template in text the fixture tokenizer can spell, trimming its content
/// as Llama 3's and Gemma's templates do.
const TEMPLATE: &str = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}\n\
    {% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
const SMOLLM2_TEXTS: usize = 60;

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// The fixture teacher with a chat template in its tokenizer_config.json.
fn templated_teacher(dir: &Path) -> PathBuf {
    let out = dir.join("teacher");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(teacher_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let config =
        serde_json::json!({"chat_template": TEMPLATE, "bos_token": null, "eos_token": null});
    std::fs::write(out.join("tokenizer_config.json"), config.to_string()).unwrap();
    out
}

#[test]
fn the_teacher_reads_its_chat_template_and_targets_stay_aligned() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = prepare(tmp.path(), 24, 4);
    let teacher = templated_teacher(tmp.path());
    let tokenizer = Tokenizer::from_file(&teacher.join("tokenizer.json")).unwrap();
    let template = ChatTemplate::find(&teacher).unwrap().expect("a template");
    let view = TeacherView::chat(
        template,
        None,
        Tokenizer::from_file(&teacher.join("tokenizer.json")).unwrap(),
    );

    let ds = Dataset::open(&data, &OpenOptions::new("train")).unwrap();
    let reader_cfg = ReaderConfig {
        rank: 0,
        world: 1,
        seed: 1,
        max_tokens: 100_000,
        max_rows: 6,
        bucket_window: 24,
        bucket_by_length: false,
        shuffle: false,
        teacher: true,
    };
    let mut reader = Reader::new(ds, reader_cfg, None).unwrap();
    let batch = reader.next_batch().unwrap();
    assert!(batch.rows >= 4);

    // What the teacher is asked about, and what transformers says about it.
    let mut examples = Vec::new();
    for r in 0..batch.rows {
        let input: Vec<i64> = batch.teacher_prompt(r).to_vec();
        let text = tokenizer.decode(&input, false).unwrap();
        examples.push(serde_json::json!({
            "input": text,
            "target_ids": batch.teacher_target(r),
        }));
    }
    let cases = tmp.path().join("cases.json");
    let smollm2 = edkd_models::gguf::smollm2_path().ok();
    std::fs::write(
        &cases,
        serde_json::json!({
            "teacher": teacher, "examples": examples,
            "smollm2": smollm2,
        })
        .to_string(),
    )
    .unwrap();
    let out = tmp.path().join("reference.json");
    let status = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teacher_view_reference.py"))
        .args([&cases, &out])
        .status()
        .unwrap();
    assert!(status.success(), "reference script failed");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    // Prompt ids equal apply_chat_template's.
    let pad = 0;
    let viewed = Viewed::apply(&view, &batch, pad).unwrap();
    for r in 0..batch.rows {
        let want: Vec<i64> =
            serde_json::from_value(reference["examples"][r]["prompt_ids"].clone()).unwrap();
        assert_eq!(viewed.teacher_prompt(r), want.as_slice(), "row {r}");
        assert!(
            want.len() > batch.teacher_prompt(r).len(),
            "the template added nothing"
        );
        assert_eq!(viewed.teacher_target(r), batch.teacher_target(r));
    }

    // Distributions at the shifted positions, through the trainer's sources.
    let inner = InProcess::load(&teacher, Device::Cpu).unwrap();
    let mut source = Viewed::wrap(Box::new(inner), view, pad);
    assert!(
        source.info().description.contains("prompts: chat"),
        "{}",
        source.info().description
    );
    let TeacherOut::Full(logits) = source.score(&batch).unwrap() else {
        panic!("an in-process teacher answers with full logits");
    };
    let logp = logits.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    let mut worst = 0.0f64;
    let mut positions = 0;
    for r in 0..batch.rows {
        let rows = reference["examples"][r]["logprobs"].as_array().unwrap();
        let n = batch.teacher_target(r).len() + 1;
        assert_eq!(rows.len(), n);
        for (t, row) in rows.iter().enumerate() {
            let want: Vec<f64> = serde_json::from_value(row.clone()).unwrap();
            let got = logp.get(r as i64).get(t as i64);
            let d = (got - Tensor::from_slice(&want))
                .abs()
                .max()
                .double_value(&[]);
            worst = worst.max(d);
            positions += 1;
        }
    }
    println!("{positions} target positions, max |log p - transformers| = {worst:.2e}");
    assert!(worst <= TOLERANCE, "max |diff| {worst:e}");

    // SmolLM2's own template on real text, with the tokenizer made from its GGUF.
    let Some(gguf) = smollm2 else {
        panic!("SmolLM2 is missing: run scripts/setup.sh");
    };
    let tok_dir = tmp.path().join("smollm2-tokenizer");
    let tok_path = edkd_models::gguf::extract_tokenizer(&gguf, &tok_dir)
        .unwrap()
        .unwrap();
    let stok = Tokenizer::from_file(&tok_path).unwrap();
    let template = ChatTemplate::find(&gguf)
        .unwrap()
        .expect("SmolLM2 has a chat template");
    let sview = TeacherView::chat(template, None, Tokenizer::from_file(&tok_path).unwrap());
    let want = reference["smollm2"].as_array().unwrap();
    let texts: Vec<String> = serde_json::from_value(reference["smollm2_texts"].clone()).unwrap();
    assert!(texts.len() >= SMOLLM2_TEXTS, "only {} texts", texts.len());
    assert_eq!(want.len(), texts.len());
    for (text, want) in texts.iter().zip(want) {
        let input: Vec<u32> = stok
            .encode(text, false)
            .unwrap()
            .iter()
            .map(|&i| i as u32)
            .collect();
        let got: Vec<i64> = sview
            .prompt(&input)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let want: Vec<i64> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(got, want, "{text:?}");
    }
}
