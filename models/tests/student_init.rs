//! Students born from a decoder-only checkpoint: with every source layer in the decoder and
//! the cross-attention output zeroed, the decoder's logits are the source's (against
//! transformers' logits on the fixture teachers, and against edkd's SmolLM2 teacher, which
//! `gguf_smollm2.rs` checks against transformers); a save/load round trip is exact; bad
//! layer lists and unsupported sources are errors that say why.

mod common;

use common::{LOGIT_TOL, expected, fixture, prompts};
use edkd_models::gguf::smollm2_path;
use edkd_models::student::init::{InitSpec, init_folder, init_from_teacher, parse_layer_list};
use edkd_models::student::{StudentConfig, StudentModel};
use edkd_models::{LoadOptions, Teacher};
use tch::{Device, Kind, Tensor};

fn all_in_decoder(n: usize, encoder: Vec<usize>, scale: f64) -> InitSpec {
    InitSpec {
        encoder_layers: encoder,
        decoder_layers: (0..n).collect(),
        cross_attn_out_scale: scale,
        ..Default::default()
    }
}

/// Decoder logits `[t, V]` for `ids` (one row) over an encoding of `enc_ids`.
fn decoder_logits(s: &StudentModel, enc_ids: &[i64], ids: &[i64]) -> Tensor {
    let enc = Tensor::from_slice(enc_ids).view([1, -1]);
    let valid = enc.ones_like().to_kind(Kind::Bool);
    let dec = Tensor::from_slice(ids).view([1, -1]);
    tch::no_grad(|| {
        let e = s.model.encode(&enc, &valid, false);
        s.model
            .logits(&s.model.decode(&dec, &e, None, false))
            .get(0)
    })
}

/// The transformers logits of row `r` at its real (left-padded) positions: `[t, V]`.
fn reference_row(e: &common::Expected, r: i64) -> Tensor {
    let valid = e.valid.get(r);
    let idx = valid.nonzero().squeeze_dim(-1);
    e.logits.get(r).index_select(0, &idx)
}

#[test]
fn zeroed_cross_attention_decoder_equals_the_source_on_fixtures() {
    for name in ["llama_linear", "qwen2_tied", "llama_dynamic_tied"] {
        let dir = fixture(name);
        let teacher = Teacher::load(&dir, LoadOptions::default()).unwrap();
        let n = teacher.model.config.num_layers as usize;
        let student = init_from_teacher(&teacher, &all_in_decoder(n, vec![0, 1], 0.0)).unwrap();
        let c = &student.model.config;
        assert_eq!(
            c.tie_word_embeddings,
            teacher.model.config.tie_word_embeddings
        );
        assert_eq!(c.head_dim(), teacher.model.config.head_dim, "{name}");
        let e = expected(&dir);
        let mut worst: f64 = 0.0;
        let rows = prompts(&e);
        let longest = rows.iter().map(Vec::len).max().unwrap();
        // Dynamic NTK picks its frequencies from the batch's longest row: compare that row.
        let length_dependent = teacher.model.config.rope.length_dependent();
        for (r, ids) in rows.iter().enumerate() {
            if length_dependent && ids.len() != longest {
                continue;
            }
            let got = decoder_logits(&student, &[3, 4, 5, 6, 7], ids);
            let want = reference_row(&e, r as i64);
            worst = worst.max((&got - &want).abs().max().double_value(&[]));
        }
        println!("{name}: max |student decoder - transformers| = {worst:.2e}");
        assert!(worst <= LOGIT_TOL, "{name}: {worst}");

        // With the cross-attention on, the encoder's input reaches the decoder.
        let open = init_from_teacher(&teacher, &all_in_decoder(n, vec![0, 1], 0.5)).unwrap();
        let ids = &prompts(&e)[0];
        let a = decoder_logits(&open, &[3, 4, 5, 6, 7], ids);
        let b = decoder_logits(&open, &[9, 8, 7], ids);
        let moved = (&a - &b).abs().max().double_value(&[]);
        assert!(
            moved > 1e-3,
            "{name}: the encoder does not reach the decoder ({moved})"
        );
    }
}

#[test]
fn the_encoder_is_bidirectional_and_copies_the_chosen_layers() {
    let dir = fixture("llama_linear");
    let teacher = Teacher::load(&dir, LoadOptions::default()).unwrap();
    let spec = InitSpec {
        encoder_layers: vec![1, 1, 0],
        decoder_layers: vec![1],
        cross_attn_out_scale: 1.0,
        ..Default::default()
    };
    let s = init_from_teacher(&teacher, &spec).unwrap();
    let vars = s.vs.variables();
    let src = teacher.vs.variables();
    for (student_key, source_key) in [
        (
            "encoder.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ),
        (
            "encoder.layers.2.mlp.down_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        ),
        (
            "decoder.layers.0.cross_attn.o_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
        ),
        ("lm_head.weight", "lm_head.weight"),
    ] {
        assert!(
            vars[student_key].equal(&src[source_key]),
            "{student_key} is not {source_key}"
        );
    }
    // Bidirectional: the encoder's first position sees the last token.
    let enc = |ids: &[i64]| {
        let t = Tensor::from_slice(ids).view([1, -1]);
        let valid = t.ones_like().to_kind(Kind::Bool);
        tch::no_grad(|| s.model.encode(&t, &valid, false).memory.get(0).get(0))
    };
    let moved = (enc(&[5, 6, 7]) - enc(&[5, 6, 9]))
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-4, "encoder position 0 ignores later tokens");
}

#[test]
fn a_student_folder_round_trips_exactly() {
    let dir = fixture("qwen2_tied");
    let out = tempfile::tempdir().unwrap();
    let spec = InitSpec {
        encoder_layers: vec![0, 1],
        decoder_layers: vec![1],
        cross_attn_out_scale: 0.25,
        ..Default::default()
    };
    let record = init_folder(&dir, &spec, out.path()).unwrap();
    assert!(record.tokenizer);
    assert!(out.path().join("tokenizer.json").is_file());
    let teacher = Teacher::load(&dir, LoadOptions::default()).unwrap();
    let built = init_from_teacher(&teacher, &spec).unwrap();
    let loaded = StudentModel::load(out.path(), LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config, built.model.config);
    assert!(loaded.tokenizer.is_some());
    let (a, b) = (built.vs.variables(), loaded.vs.variables());
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert!(v.equal(&b[k]), "{k} changed in the round trip");
    }
    assert_eq!(record.student_parameters, loaded.num_parameters());
    // Qwen2: q/k/v biases without an o_proj bias, recorded in the config.
    let c = &loaded.model.config;
    assert!(c.attn_bias && c.attn_out_bias == Some(false), "{c:?}");
    let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    let back: StudentConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, c);
}

#[test]
fn mu_configs_serialise_without_the_new_fields() {
    let mu = StudentConfig::preset("mu-330m").unwrap();
    let v = serde_json::to_value(&mu).unwrap();
    assert!(v.get("rope_scaling").is_none() && v.get("attn_out_bias").is_none());
    let back: StudentConfig = serde_json::from_value(v).unwrap();
    assert_eq!(back, mu);
    // A linear-scaled RoPE source keeps its scaling.
    let teacher = Teacher::load(&fixture("llama_linear"), LoadOptions::default()).unwrap();
    let s = init_from_teacher(&teacher, &all_in_decoder(2, vec![], 0.0)).unwrap();
    let v = serde_json::to_value(&s.model.config).unwrap();
    assert_eq!(
        v["rope_scaling"],
        serde_json::json!({"type": "linear", "factor": 2.0})
    );
}

#[test]
fn bad_layer_lists_and_sources_are_named() {
    let dir = fixture("llama_linear");
    let teacher = Teacher::load(&dir, LoadOptions::default()).unwrap();
    let err = |spec: InitSpec| {
        init_from_teacher(&teacher, &spec)
            .err()
            .expect("an error")
            .to_string()
    };
    let e = err(InitSpec {
        encoder_layers: vec![0, 2],
        decoder_layers: vec![1],
        ..Default::default()
    });
    assert!(
        e.contains("encoder_layers") && e.contains("2 layers"),
        "{e}"
    );
    let e = err(InitSpec::default());
    assert!(
        e.contains("decoder_layers") && e.contains("at least one"),
        "{e}"
    );
    let e = parse_layer_list("0-5", "--decoder-layers", 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--decoder-layers") && e.contains("0..=1"), "{e}");
    let gemma = Teacher::load(&fixture("gemma2_window"), LoadOptions::default()).unwrap();
    let e = init_from_teacher(&gemma, &all_in_decoder(2, vec![], 0.0))
        .err()
        .expect("gemma is refused")
        .to_string();
    assert!(
        e.contains("Gemma2ForCausalLM") && e.contains("Llama"),
        "{e}"
    );
}

#[test]
fn smollm2_decoder_equals_the_teacher() {
    let gguf = smollm2_path().unwrap_or_else(|e| panic!("{e}"));
    let teacher = Teacher::load(&gguf, LoadOptions::default()).unwrap();
    let tok = teacher
        .tokenizer
        .as_ref()
        .expect("the GGUF has a tokenizer");
    let n = teacher.model.config.num_layers as usize;
    let student = init_from_teacher(&teacher, &all_in_decoder(n, vec![0, 29], 0.0)).unwrap();
    let mut worst: f64 = 0.0;
    for text in [
        "def add(a, b):\n    return a + b",
        "Return the number of elements in the queue, counting those not yet processed.",
    ] {
        let ids = tok.encode(text, false).unwrap();
        let t = Tensor::from_slice(&ids).view([1, -1]);
        let want = tch::no_grad(|| {
            teacher
                .model
                .forward_padded(&t, &t.ones_like().to_kind(Kind::Bool))
                .get(0)
        });
        let got = decoder_logits(&student, &ids[..4], &ids);
        worst = worst.max((&got - &want).abs().max().double_value(&[]));
    }
    println!("SmolLM2-135M: max |student decoder - teacher| = {worst:.2e}");
    assert!(worst <= LOGIT_TOL, "{worst}");
    assert_eq!(student.model.config.vocab_size, 49152);
    assert_eq!(student.vs.device(), Device::Cpu);
}
