//! The encoder-decoder student: cached generation equals recomputation (batched, padded),
//! checkpoint round trips, reference-layout import parity, and the decoder-only twin.

use std::path::{Path, PathBuf};
use std::process::Command;

use edkd_models::generate::right_pad;
use edkd_models::student::convert::{ConvertOptions, SpecialIds, convert_reference};
use edkd_models::student::{StudentConfig, StudentModel, init_twin, save_folder, twin_config};
use edkd_models::{Decoding, GenerationConfig, LoadOptions, Teacher, generate, generate_seq2seq};
use tch::{Device, Kind, Tensor};

fn tiny(seed: i64) -> StudentModel {
    StudentModel::init(&StudentConfig::preset("tiny").unwrap(), Device::Cpu, seed).unwrap()
}

fn inputs() -> Vec<Vec<i64>> {
    // Different lengths, so the batch is padded.
    vec![
        (3..40).collect(),
        (100..111).collect(),
        vec![
            7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
        ],
    ]
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

#[test]
fn cached_generation_equals_recomputation_batched_with_padding() {
    let s = tiny(1);
    let mut cfg = GenerationConfig::greedy(24);
    let cached = generate_seq2seq(&s.model, &inputs(), &cfg, Decoding::Cached).unwrap();
    let full = generate_seq2seq(&s.model, &inputs(), &cfg, Decoding::Recompute).unwrap();
    assert_eq!(cached, full);
    assert!(cached.iter().all(|r| r.len() == 24));
    // Each row alone gives what it gave in the padded batch.
    for (r, x) in inputs().iter().enumerate() {
        let alone =
            generate_seq2seq(&s.model, std::slice::from_ref(x), &cfg, Decoding::Cached).unwrap();
        assert_eq!(alone[0], cached[r], "row {r}");
    }
    // Seeded sampling: the two decoders agree draw for draw.
    cfg.sampling = edkd_models::Sampling::Sample {
        temperature: 1.5,
        top_k: Some(50),
        top_p: Some(0.9),
    };
    cfg.seed = 5;
    assert_eq!(
        generate_seq2seq(&s.model, &inputs(), &cfg, Decoding::Cached).unwrap(),
        generate_seq2seq(&s.model, &inputs(), &cfg, Decoding::Recompute).unwrap()
    );
}

#[test]
fn cached_step_logits_equal_teacher_forced_logits() {
    let s = tiny(2);
    let (ids, valid) = right_pad(&inputs(), 0, Device::Cpu);
    let dec = Tensor::from_slice(&[
        1i64, 5, 9, 13, 17, 21, 1, 6, 10, 14, 18, 22, 1, 7, 11, 15, 19, 23,
    ])
    .reshape([3, 6]);
    tch::no_grad(|| {
        let full = s.model.forward(&ids, &valid, &dec, false);
        let enc = s.model.encode(&ids, &valid, false);
        let mut cache = s.model.new_cache(&enc, 6);
        // Two tokens at once, then one at a time: chunked prefill works too.
        let mut parts =
            vec![
                s.model.logits(&s.model.decode(
                    &dec.narrow(1, 0, 2),
                    &enc,
                    Some(&mut cache),
                    false,
                )),
            ];
        for t in 2..6 {
            parts.push(s.model.logits(&s.model.decode(
                &dec.narrow(1, t, 1),
                &enc,
                Some(&mut cache),
                false,
            )));
        }
        let cached = Tensor::cat(&parts, 1);
        let diff = (cached - full).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "cached vs full: {diff}");
    });
}

#[test]
fn eos_stops_rows_independently() {
    let s = tiny(3);
    let free = generate_seq2seq(
        &s.model,
        &inputs(),
        &GenerationConfig::greedy(16),
        Decoding::Cached,
    )
    .unwrap();
    let eos = free[1][3];
    let mut cfg = GenerationConfig::greedy(16);
    cfg.eos_token_ids = vec![eos];
    let got = generate_seq2seq(&s.model, &inputs(), &cfg, Decoding::Cached).unwrap();
    for (row, want) in got.iter().zip(&free) {
        let cut = want
            .iter()
            .position(|&t| t == eos)
            .map_or(want.len(), |i| i + 1);
        assert_eq!(*row, want[..cut].to_vec());
    }
}

#[test]
fn dropout_only_in_training() {
    let mut c = StudentConfig::preset("tiny").unwrap();
    c.dropout = 0.3;
    let s = StudentModel::init(&c, Device::Cpu, 4).unwrap();
    let (ids, valid) = right_pad(&inputs(), 0, Device::Cpu);
    let dec = Tensor::from_slice(&[1i64, 5, 9, 1, 6, 10, 1, 7, 11]).reshape([3, 3]);
    let eval = |_| s.model.forward(&ids, &valid, &dec, false);
    assert!(eval(0).equal(&eval(1)));
    let a = s.model.forward(&ids, &valid, &dec, true);
    let b = s.model.forward(&ids, &valid, &dec, true);
    assert!(!a.equal(&b), "training forward should be stochastic");
}

#[test]
fn save_load_round_trip_is_exact_and_python_reads_it() {
    let s = tiny(5);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path(), None).unwrap();
    let back = StudentModel::load(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(back.model.config, s.model.config);
    let theirs = back.vs.variables();
    for (name, t) in s.vs.variables() {
        assert!(t.equal(&theirs[&name]), "{name} changed in the round trip");
    }
    // The Python safetensors package reads the file: same keys, same element sum.
    let total: f64 =
        s.vs.variables()
            .values()
            .map(|t| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]))
            .sum();
    let script = "import sys, json\nfrom safetensors.numpy import load_file\nd = load_file(sys.argv[1])\nprint(json.dumps({'keys': sorted(d), 'sum': float(sum(v.astype('float64').sum() for v in d.values()))}))";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(dir.path().join("model.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<String> = s.vs.variables().into_keys().collect();
    keys.sort();
    assert_eq!(v["keys"], serde_json::json!(keys));
    assert!((v["sum"].as_f64().unwrap() - total).abs() <= 1e-6 * total.abs().max(1.0));
}

#[test]
fn strict_student_loading_names_the_problem() {
    let s = tiny(6);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path(), None).unwrap();
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"decoder_layers\": 2", "\"decoder_layers\": 3"),
    )
    .unwrap();
    let err = StudentModel::load(dir.path(), LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing tensors") && err.contains("decoder.layers.2."),
        "{err}"
    );
    std::fs::write(
        &cfg_path,
        text.replace("\"num_kv_heads\": 2", "\"num_kv_heads\": 3"),
    )
    .unwrap();
    let err = StudentModel::load(dir.path(), LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("num_kv_heads"),
        "{err}"
    );
}

#[test]
fn reference_layout_import_matches_the_pytorch_reimplementation() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mu_reference");
    let out = tempfile::tempdir().unwrap();
    let s = convert_reference(&ConvertOptions {
        weights: fx.join("model.safetensors"),
        config: Some(fx.join("config.json")),
        out: out.path().to_path_buf(),
        // The fixture's vocabulary (200) cannot hold the released eos (32000).
        specials: SpecialIds {
            eos: Some(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    assert!(
        s.model.config.tie_word_embeddings,
        "lm_head equals wte, so the import ties them"
    );
    let expected = Tensor::read_safetensors(fx.join("expected.safetensors")).unwrap();
    let get = |k: &str| {
        expected
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .shallow_clone()
    };
    for (enc, dec, logits) in [
        ("encoder_ids", "decoder_ids", "logits"),
        ("encoder_ids_even", "decoder_ids_even", "logits_even"),
    ] {
        let ids = get(enc);
        let valid = ids.ones_like().to_kind(Kind::Bool);
        let ours = tch::no_grad(|| s.model.forward(&ids, &valid, &get(dec), false));
        let diff = (ours - get(logits)).abs().max().double_value(&[]);
        assert!(diff <= 1e-4, "{logits}: max diff {diff}");
    }
}

#[test]
fn parameter_counts_match_the_built_models() {
    for name in ["tiny", "small"] {
        let c = StudentConfig::preset(name).unwrap();
        let s = StudentModel::init(&c, Device::Cpu, 0).unwrap();
        assert_eq!(s.num_parameters(), c.num_parameters(), "{name} student");
        let (vs, _) = init_twin(&c, Device::Cpu, 0);
        assert_eq!(
            edkd_models::CausalLm::num_parameters(&vs),
            twin_config(&c).num_parameters(),
            "{name} twin"
        );
    }
}

#[test]
fn twin_saves_as_a_llama_folder_the_teacher_loader_reads() {
    let c = StudentConfig::preset("tiny").unwrap();
    let (vs, twin) = init_twin(&c, Device::Cpu, 7);
    let dir = tempfile::tempdir().unwrap();
    save_folder(dir.path(), &twin.config.to_hf_json(), &vs, None).unwrap();
    let back = Teacher::load(dir.path(), LoadOptions::default()).unwrap();
    let prompts = inputs();
    let cfg = GenerationConfig::greedy(12);
    assert_eq!(
        generate(&twin, &prompts, &cfg).unwrap(),
        generate(&back.model, &prompts, &cfg).unwrap()
    );
    // transformers reads it too, and agrees on the logits.
    let ids: Vec<i64> = (3..40).collect();
    let x = Tensor::from_slice(&ids).reshape([1, -1]);
    let ours = tch::no_grad(|| {
        back.model
            .forward_padded(&x, &x.ones_like().to_kind(Kind::Bool))
    });
    let script = "import sys, torch, transformers\nm = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\nx = torch.arange(3, 40).unsqueeze(0)\nwith torch.no_grad():\n    l = m(input_ids=x).logits\nfrom safetensors.torch import save_file\nsave_file({'logits': l.contiguous()}, sys.argv[2])";
    let out_file = dir.path().join("hf_logits.safetensors");
    let out = Command::new(python())
        .args(["-c", script])
        .arg(dir.path())
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = Tensor::read_safetensors(&out_file).unwrap().remove(0).1;
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "twin vs transformers: {diff}");
}
