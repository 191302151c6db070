//! The model subcommands end to end: `edkd info --preset`, `edkd convert`, `edkd generate`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn edkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn info_prints_the_mu_parameter_count_and_its_twin() {
    let (ok, out, err) = edkd(&["info", "--preset", "mu-330m"]);
    assert!(ok, "{err}");
    assert!(out.contains("parameters    332.0M"), "{out}");
    let ratio: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("twin/student"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((ratio - 1.0).abs() <= 0.02, "{out}");
    let (ok, _, err) = edkd(&["info", "--preset", "huge"]);
    assert!(
        !ok && err.contains("unknown preset `huge`") && err.contains("mu-330m"),
        "{err}"
    );
}

#[test]
fn convert_then_generate_from_the_student_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("student");
    let fx = fixtures().join("mu_reference");
    let tok = fixtures().join("teachers/qwen2_tied/tokenizer.json");
    let (ok, stdout, err) = edkd(&[
        "convert",
        "--weights",
        fx.join("model.safetensors").to_str().unwrap(),
        "--config",
        fx.join("config.json").to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("3 encoder + 2 decoder layers"), "{stdout}");
    let (ok, stdout, err) = edkd(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--input-ids",
        "5,6,7,8,9",
        "--max-new-tokens",
        "7",
    ]);
    assert!(ok, "{err}");
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .unwrap();
    assert_eq!(ids.split(',').count(), 7, "{stdout}");
    // Sampling is seeded: the same seed gives the same ids.
    let args = [
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--input",
        "the student",
        "--max-new-tokens",
        "6",
        "--sample",
        "--temperature",
        "1.2",
        "--seed",
        "3",
    ];
    let (ok, a, err) = edkd(&args);
    assert!(ok, "{err}");
    assert_eq!(a, edkd(&args).1);
}

#[test]
fn generate_from_a_teacher_folder() {
    let dir = fixtures().join("teachers/llama_linear");
    let (ok, stdout, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        "the teacher scores",
        "--max-new-tokens",
        "20",
    ]);
    assert!(ok, "{err}");
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .unwrap();
    assert!(!ids.is_empty() && ids.split(',').count() <= 20, "{stdout}");
}

#[test]
fn bad_flags_are_explained() {
    let dir = fixtures().join("teachers/llama_linear");
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        "1,2,999",
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        !ok && err.contains("999") && err.contains("vocabulary"),
        "{err}"
    );
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        "1",
        "--dtype",
        "f16",
    ]);
    assert!(!ok && err.contains("Half"), "{err}");
    let (ok, _, err) = edkd(&["generate", "--model", "/nonexistent", "--input-ids", "1"]);
    assert!(!ok && err.contains("/nonexistent/config.json"), "{err}");
}

/// The `ids:` line `edkd generate` prints.
fn printed_ids(out: &str) -> Vec<i64> {
    let line = out.lines().find_map(|l| l.strip_prefix("ids: ")).unwrap();
    line.split(',').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn generate_reads_an_image_for_vision_language_students_and_twins() {
    use edkd_models::multimodal::{VisionConfig, VisionStudentModel, VisionTwinModel};
    use edkd_models::student::{StudentConfig, StudentModel};
    use edkd_models::vision::{HfClipVisionConfig, open_rgb};
    use edkd_models::{Decoding, GenerationConfig};

    const IMAGE: i64 = 500;
    let tower = fixtures().join("clip/vision_quick_gelu");
    let png = fixtures().join("clip/images/wide.png");
    let (hf, _) = HfClipVisionConfig::from_folder(&tower).unwrap();
    let config = StudentConfig {
        vision: Some(VisionConfig::llava(hf, IMAGE)),
        ..StudentConfig::preset("tiny").unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (sdir, tdir) = (tmp.path().join("vl-student"), tmp.path().join("vl-twin"));
    let student = VisionStudentModel::init(&config, tch::Device::Cpu, 3).unwrap();
    student.save(&sdir, None).unwrap();
    let twin = VisionTwinModel::init_from(&student, 4).unwrap();
    twin.save(&tdir, None).unwrap();

    let prompt = vec![5i64, 6, IMAGE, 7, 8];
    let ids_arg = "5,6,500,7,8";
    let mut cfg = GenerationConfig::greedy(6); // no tokenizer: every id may be picked
    let pixels = student.processor.batch(&[open_rgb(&png).unwrap()]).unwrap();
    let png_arg = png.to_str().unwrap();
    let generated = |dir: &Path| {
        let (ok, out, err) = edkd(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--input-ids",
            ids_arg,
            "--image",
            png_arg,
            "--max-new-tokens",
            "6",
        ]);
        assert!(ok, "{}: {err}", dir.display());
        printed_ids(&out)
    };

    // The student: what the library generates from the processed image.
    let c = student.model.config();
    cfg.eos_token_ids = vec![c.eos_token_id];
    cfg.pad_token_id = c.pad_token_id;
    let want = student
        .model
        .generate(
            std::slice::from_ref(&prompt),
            Some(&pixels),
            &cfg,
            Decoding::Cached,
        )
        .unwrap();
    assert_eq!(generated(&sdir), want[0]);
    // The twin (the prompt's placeholder becomes the image's patch tokens there too).
    let tc = &twin.model.text.config;
    cfg.eos_token_ids = tc.eos_token_ids.clone();
    cfg.pad_token_id = tc.pad_token_id.unwrap_or(0);
    let want = twin.model.generate(&[prompt], Some(&pixels), &cfg).unwrap();
    assert_eq!(generated(&tdir), want[0]);

    // What cannot be answered is refused, naming what is missing.
    let s = sdir.to_str().unwrap();
    let (ok, _, err) = edkd(&["generate", "--model", s, "--input-ids", ids_arg]);
    assert!(!ok && err.contains("no --image was given"), "{err}");
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        s,
        "--input-ids",
        "5,6,7",
        "--image",
        png_arg,
    ]);
    assert!(!ok && err.contains("no image placeholder"), "{err}");
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        s,
        "--input-ids",
        "5,500,6,500",
        "--image",
        png_arg,
    ]);
    assert!(!ok && err.contains("2 times"), "{err}");
    let not_png = tmp.path().join("notes.png");
    std::fs::write(&not_png, b"not an image").unwrap();
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        s,
        "--input-ids",
        ids_arg,
        "--image",
        not_png.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("notes.png"), "{err}");
    // Without an image or a placeholder, a VL student answers from the text alone.
    let (ok, out, err) = edkd(&["generate", "--model", s, "--input-ids", "5,6,7"]);
    assert!(ok && !printed_ids(&out).is_empty(), "{err}");
    // A text student has nowhere to put an image.
    let text_dir = tmp.path().join("text");
    StudentModel::init(&StudentConfig::preset("tiny").unwrap(), tch::Device::Cpu, 1)
        .unwrap()
        .save(&text_dir, None)
        .unwrap();
    let (ok, _, err) = edkd(&[
        "generate",
        "--model",
        text_dir.to_str().unwrap(),
        "--input-ids",
        "5,6",
        "--image",
        png_arg,
    ]);
    assert!(!ok && err.contains("is a text model"), "{err}");
}
