//! `edkd convert` on the formats the reference code's checkpoints come in: torch.save
//! archives (read by edkd's restricted unpickler), a tied model stored once, the mu_v2
//! layout, the special ids, and pad-id masking. The files are written at test time by
//! `fixtures/make_pt_checkpoints.py` (torch.save, safetensors.save_model) from the
//! committed mu_reference fixture, whose logits stay the answer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edkd_models::nn::GqaMapping;
use edkd_models::student::convert::{
    ConvertOptions, Layout, REFERENCE_EOS, SpecialIds, convert_reference,
};
use edkd_models::student::{StudentConfig, StudentModel};
use edkd_models::{Decoding, GenerationConfig, generate_seq2seq};
use tch::{Kind, Tensor};

/// Logits agree within this (fp32 paths, the reference's clean-room re-implementation).
const TOL: f64 = 1e-4;
/// The fixture's vocabulary is 200, so the released model's eos 32000 does not fit.
const FIXTURE_EOS: i64 = 2;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The folder the fixture script wrote (once per test binary).
fn made() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(
            python.exists(),
            "{} missing: run scripts/setup.sh",
            python.display()
        );
        let out = Command::new(python)
            .arg(fixtures().join("make_pt_checkpoints.py"))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixture script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn options(weights: PathBuf, out: &Path) -> ConvertOptions {
    ConvertOptions {
        weights,
        out: out.to_path_buf(),
        specials: SpecialIds {
            eos: Some(FIXTURE_EOS),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn named(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap()
}

fn get(named: &[(String, Tensor)], key: &str) -> Tensor {
    named
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
        .shallow_clone()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Teacher-forced logits of `s` on the `enc`/`dec` ids of `expected`, against its logits.
fn logit_diff(
    s: &StudentModel,
    expected: &[(String, Tensor)],
    enc: &str,
    dec: &str,
    logits: &str,
) -> f64 {
    let ids = get(expected, enc);
    let valid = ids.ones_like().to_kind(Kind::Bool);
    let ours = tch::no_grad(|| s.model.forward(&ids, &valid, &get(expected, dec), false));
    max_diff(&ours, &get(expected, logits))
}

fn mu_v1_expected() -> Vec<(String, Tensor)> {
    named(&fixtures().join("mu_reference/expected.safetensors"))
}

#[test]
fn torch_save_archive_converts_with_its_stored_config() {
    let out = tempfile::tempdir().unwrap();
    let s = convert_reference(&options(made().join("mu_v1.pt"), out.path())).unwrap();
    let c = &s.model.config;
    // No --config: the archive's model_config (3 + 2 layers, qkv_embd 36) was used.
    assert_eq!((c.encoder_layers, c.decoder_layers, c.attn_dim), (3, 2, 36));
    assert_eq!(c.gqa_mapping, GqaMapping::Cyclic);
    assert!(c.tie_word_embeddings, "wte and lm_head share one storage");
    assert!(!c.lm_head_bias);
    let e = mu_v1_expected();
    for (enc, dec, logits) in [
        ("encoder_ids", "decoder_ids", "logits"),
        ("encoder_ids_even", "decoder_ids_even", "logits_even"),
    ] {
        let d = logit_diff(&s, &e, enc, dec, logits);
        assert!(d <= TOL, "{logits}: max diff {d}");
    }
}

#[test]
fn bf16_archive_keeps_its_bits() {
    let out = tempfile::tempdir().unwrap();
    let mut o = options(made().join("mu_v1_bf16.pt"), out.path());
    o.config = Some(fixtures().join("mu_reference/config.json"));
    convert_reference(&o).unwrap();
    let ours = named(&out.path().join("model.safetensors"));
    let theirs = named(&fixtures().join("mu_reference/model.safetensors"));
    for (our_key, their_key) in [
        ("embed_tokens.weight", "transformer.wte.weight"),
        (
            "decoder.layers.1.cross_attn.k_proj.bias",
            "transformer.h.1.cross_attn.k_linear.bias",
        ),
    ] {
        let t = get(&ours, our_key);
        assert_eq!(t.kind(), Kind::BFloat16, "{our_key}");
        let want = get(&theirs, their_key).to_kind(Kind::BFloat16);
        assert!(t.equal(&want), "{our_key} differs from torch's bf16 cast");
    }
}

#[test]
fn tied_model_stored_once_converts() {
    let out = tempfile::tempdir().unwrap();
    let mut o = options(made().join("tied_once.safetensors"), out.path());
    o.config = Some(fixtures().join("mu_reference/config.json"));
    let s = convert_reference(&o).unwrap();
    assert!(s.model.config.tie_word_embeddings);
    let d = logit_diff(
        &s,
        &mu_v1_expected(),
        "encoder_ids",
        "decoder_ids",
        "logits",
    );
    assert!(d <= TOL, "max diff {d}");
}

#[test]
fn mu_v2_layout_has_a_head_bias_and_interleaved_kv_heads() {
    let out = tempfile::tempdir().unwrap();
    let s = convert_reference(&options(made().join("mu_v2.pt"), out.path())).unwrap();
    let c = &s.model.config;
    assert_eq!(c.gqa_mapping, GqaMapping::Grouped);
    assert!(c.lm_head_bias && c.tie_word_embeddings);
    assert_eq!(c.attn_dim, c.d_model);
    let e = named(&made().join("mu_v2_expected.safetensors"));
    let d = logit_diff(&s, &e, "encoder_ids", "decoder_ids", "logits");
    assert!(d <= TOL, "max diff {d}");
    // Forced to the first layout, its Hugging Face config is refused field by name.
    let out1 = tempfile::tempdir().unwrap();
    let mut o = options(made().join("mu_v2.pt"), out1.path());
    o.layout = Some(Layout::MuV1);
    let err = convert_reference(&o).err().unwrap().to_string();
    assert!(err.contains("unknown field `architectures`"), "{err}");
}

#[test]
fn pickles_that_would_run_code_are_refused_unrun() {
    let out = tempfile::tempdir().unwrap();
    let err = convert_reference(&options(made().join("evil.pt"), out.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("posix.system"), "{err}");
    assert!(err.contains("evil.pt"), "{err}");
    let marker = std::fs::read_to_string(made().join("evil_marker_path")).unwrap();
    assert!(!Path::new(&marker).exists(), "the pickle ran");
}

#[test]
fn special_ids_default_to_the_released_model_and_follow_the_caller() {
    let fx = fixtures().join("mu_reference");
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(fx.join("model.safetensors"), dir.path());
    o.config = Some(fx.join("config.json"));
    o.specials = SpecialIds::default();
    let err = convert_reference(&o).err().unwrap().to_string();
    assert!(
        err.contains("eos_token_id") && err.contains(&REFERENCE_EOS.to_string()),
        "vocab 200 cannot hold the released eos: {err}"
    );
    o.specials = SpecialIds {
        bos: Some(3),
        eos: Some(7),
        pad: None,
    };
    convert_reference(&o).unwrap();
    let saved: StudentConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    // pad: the reference config's pad_token_id (0), as nothing else named one.
    let ids = (saved.bos_token_id, saved.eos_token_id, saved.pad_token_id);
    assert_eq!(ids, (3, 7, 0));
    // Masking pad ids as the reference does needs the reference's own pad id.
    o.specials.pad = Some(5);
    o.mask_pad_tokens = true;
    let err = convert_reference(&o).err().unwrap().to_string();
    assert!(err.contains("pad_token_id"), "{err}");
}

#[test]
fn pad_id_masking_matches_the_reference_on_inputs_that_contain_it() {
    let fx = fixtures().join("mu_reference");
    let convert = |mask: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(fx.join("model.safetensors"), dir.path());
        o.config = Some(fx.join("config.json"));
        o.mask_pad_tokens = mask;
        (convert_reference(&o).unwrap(), dir)
    };
    let (masked, _d1) = convert(true);
    let (plain, _d2) = convert(false);
    assert!(masked.model.config.mask_pad_tokens);
    let e = named(&made().join("pad_expected.safetensors"));
    let d = logit_diff(&masked, &e, "encoder_ids", "decoder_ids", "logits");
    assert!(d <= TOL, "with pad masking: max diff {d}");
    let d = logit_diff(&plain, &e, "encoder_ids", "decoder_ids", "logits");
    assert!(d > 1e-3, "the fixture's pad ids must matter ({d})");
    // Without pad ids in the input the option changes nothing.
    let e = mu_v1_expected();
    let d = logit_diff(&masked, &e, "encoder_ids", "decoder_ids", "logits");
    assert!(d <= TOL, "no pad ids: max diff {d}");
    // Cached generation applies the same masks as the full pass.
    let mut g = GenerationConfig::greedy(6);
    g.eos_token_ids = vec![];
    let inputs = vec![vec![5, 6, 0, 7, 8, 9], vec![11, 0, 0, 12]];
    let cached = generate_seq2seq(&masked.model, &inputs, &g, Decoding::Cached).unwrap();
    let full = generate_seq2seq(&masked.model, &inputs, &g, Decoding::Recompute).unwrap();
    assert_eq!(cached, full);
}
