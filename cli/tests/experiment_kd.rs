//! `edkd student init` and `edkd experiment kd` end to end at toy sizes: a fixture teacher
//! (tiny Qwen2 with a chat template), real Python functions from the standard library, every
//! arm trained and scored, the report written, a second run resumed without retraining; the
//! init folder is an ordinary student folder for `generate`, `train` (the arms) and `eval`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

fn edkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// The venv interpreter's standard library.
fn stdlib() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The qwen2_tied fixture with its embedding cut to the tokenizer's 140 tokens (the cache
/// holds ids the tokenizer knows), room for real inputs (positions), and a chat template.
fn toy_teacher(dir: &Path) -> PathBuf {
    let src = root().join("models/tests/fixtures/teachers/qwen2_tied");
    let t = dir.join("teacher");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::copy(src.join("tokenizer.json"), t.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = 140.into();
    cfg["max_position_embeddings"] = 2048.into();
    std::fs::write(t.join("config.json"), cfg.to_string()).unwrap();
    let named: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "model.embed_tokens.weight" {
                v.narrow(0, 0, 140).contiguous()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    Tensor::write_safetensors(&named, t.join("model.safetensors")).unwrap();
    let template = "{% for m in messages %}<s>user {{ m['content'] }}</s>{% endfor %}\
                    {% if add_generation_prompt %}<s>assistant {% endif %}";
    let tc =
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template});
    std::fs::write(t.join("tokenizer_config.json"), tc.to_string()).unwrap();
    t
}

#[test]
fn student_init_writes_an_ordinary_student_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let src = root().join("models/tests/fixtures/teachers/llama_linear");
    let out = tmp.path().join("s");
    let (ok, stdout, err) = edkd(&[
        "student",
        "init",
        "--from",
        src.to_str().unwrap(),
        "--encoder-layers",
        "0-1",
        "--decoder-layers",
        "all",
        "--cross-attn-scale",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("2 encoder + 2 decoder layers") && stdout.contains("x 0.5"),
        "{stdout}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "student_init.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let (ok, stdout, err) = edkd(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--input-ids",
        "5,6,7",
        "--max-new-tokens",
        "3",
    ]);
    assert!(ok && stdout.contains("ids: "), "{stdout}\n{err}");
    let (ok, _, err) = edkd(&[
        "student",
        "init",
        "--from",
        src.to_str().unwrap(),
        "--decoder-layers",
        "0,2",
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--decoder-layers") && err.contains("0..=1"),
        "{err}"
    );
}

#[test]
fn the_kd_experiment_runs_end_to_end_at_toy_sizes_and_resumes() {
    let (ok, help, _) = edkd(&["experiment", "kd", "--help"]);
    assert!(
        ok && help.contains("--preset") && help.contains("--report-dir"),
        "{help}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let teacher = toy_teacher(tmp.path());
    let out = tmp.path().join("out");
    let report = tmp.path().join("report");
    let lib = stdlib();
    let source = |name: &str| format!("{name}={}=PSF-2.0", lib.join(name).display());
    let (email, http) = (source("email"), source("http"));
    let args = [
        "experiment",
        "kd",
        "--preset",
        "toy",
        "--out",
        out.to_str().unwrap(),
        "--teacher",
        teacher.to_str().unwrap(),
        "--source",
        &email,
        "--source",
        &http,
        "--report-dir",
        report.to_str().unwrap(),
        "--threads",
        "1",
    ];
    let (ok, stdout, err) = edkd(&args);
    assert!(ok, "{err}");
    for arm in [
        "decoder-init CE (seed 0)",
        "decoder-init KD (seed 1)",
        "random-init KD (seed 0)",
    ] {
        assert!(stdout.contains(arm), "{arm} missing from\n{stdout}");
    }
    assert!(
        stdout.contains("decoder-init: KD - CE (mean over seeds)"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("kd-real.json")).unwrap())
            .unwrap();
    let arms = json["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 6);
    assert_eq!(json["teacher"]["examples"], 8);
    for a in arms {
        let r = &a["scores"]["rougeL"];
        let (lo, m, hi) = (
            r["lo"].as_f64().unwrap(),
            r["mean"].as_f64().unwrap(),
            r["hi"].as_f64().unwrap(),
        );
        assert!(lo <= m && m <= hi && (0.0..=1.0).contains(&m), "{r}");
        assert_eq!(a["train"]["steps"], 6);
    }
    let curves = json["curves"].as_array().unwrap();
    assert!(
        curves.iter().all(|c| c[1].as_array().unwrap().len() == 2),
        "{curves:?}"
    );
    let png = std::fs::read(report.join("kd-real-curves.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let md = std::fs::read_to_string(report.join("kd-real.md")).unwrap();
    assert!(
        md.contains("| source | licence |") && md.contains("PSF-2.0"),
        "{md}"
    );
    assert!(md.contains("## What the numbers say"), "{md}");
    // KD arms read the cache (annotated once); CE arms have no teacher.
    let run =
        |arm: &str| std::fs::read_to_string(out.join("runs").join(arm).join("run.json")).unwrap();
    assert!(run("decoder-kd-s0").contains("teacher cache"));
    assert!(run("random-ce-s0").contains("\"teacher\": null"));
    // Held-out functions come from files the training set never saw.
    let files = |split: &str| -> Vec<String> {
        std::fs::read_to_string(out.join("task").join(format!("{split}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                let id = serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                id.split(':').take(2).collect::<Vec<_>>().join(":")
            })
            .collect()
    };
    let train = files("train");
    assert!(files("test").iter().all(|f| !train.contains(f)));

    // A second run finds every phase done: nothing is retrained or rescored.
    let summary = out.join("runs/decoder-kd-s0/summary.json");
    let before = std::fs::metadata(&summary).unwrap().modified().unwrap();
    let (ok, again, err) = edkd(&args);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::metadata(&summary).unwrap().modified().unwrap(),
        before
    );
    let table = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("| decoder"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&again), table(&stdout));

    // The trained student is an ordinary folder for `edkd eval`.
    let (ok, stdout, err) = edkd(&[
        "eval",
        "--model",
        out.join("runs/decoder-kd-s0/final").to_str().unwrap(),
        "--data",
        out.join("data/main").to_str().unwrap(),
        "--max-new-tokens",
        "4",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.to_lowercase().contains("rouge"), "{stdout}");
}
