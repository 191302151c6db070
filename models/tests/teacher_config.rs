//! How config.json fields resolve for each family: the defaults of transformers' config
//! classes when a key is absent, `null` versus absent, older spellings, and clear errors.

use std::path::Path;

use edkd_models::nn::RopeScaling;
use edkd_models::teacher::{CausalLmConfig, LayerRope};
use serde_json::{Value, json};

fn base(arch: &str) -> Value {
    json!({
        "architectures": [arch],
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8,
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn resolve(v: Value) -> Result<CausalLmConfig, String> {
    let raw = serde_json::from_value(v).map_err(|e| e.to_string())?;
    CausalLmConfig::resolve(&raw, Path::new("config.json")).map_err(|e| e.to_string())
}

fn windows(c: &CausalLmConfig) -> Vec<Option<i64>> {
    (0..c.num_layers as usize)
        .map(|i| c.layer_kind(i).window)
        .collect()
}

#[test]
fn mistral_window_absent_is_4096_and_null_is_none() {
    let absent = resolve(base("MistralForCausalLM")).unwrap();
    assert_eq!(windows(&absent), vec![Some(4096); 6]);
    let null = resolve(with(
        base("MistralForCausalLM"),
        json!({"sliding_window": null}),
    ))
    .unwrap();
    assert_eq!(windows(&null), vec![None; 6]);
    let llama = resolve(with(base("LlamaForCausalLM"), json!({"sliding_window": 8}))).unwrap();
    assert_eq!(
        windows(&llama),
        vec![None; 6],
        "Llama has no window in transformers"
    );
}

#[test]
fn qwen2_window_needs_use_sliding_window_and_starts_at_max_window_layers() {
    let off = resolve(with(base("Qwen2ForCausalLM"), json!({"sliding_window": 8}))).unwrap();
    assert_eq!(windows(&off), vec![None; 6]);
    let on = resolve(with(
        base("Qwen2ForCausalLM"),
        json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 4}),
    ))
    .unwrap();
    assert_eq!(windows(&on), vec![None, None, None, None, Some(8), Some(8)]);
    let err = resolve(with(
        base("Qwen2ForCausalLM"),
        json!({"layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention", "full_attention", "full_attention"]}),
    ))
    .unwrap_err();
    assert!(
        err.contains("sliding_window") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn gemma2_defaults_alternate_and_softcap() {
    let c = resolve(base("Gemma2ForCausalLM")).unwrap();
    assert_eq!(
        windows(&c),
        vec![Some(4096), None, Some(4096), None, Some(4096), None]
    );
    assert!(c.tie_word_embeddings, "Gemma ties by default");
    assert_eq!(c.features.final_softcap, Some(30.0));
    assert_eq!(c.features.attn_softcap, Some(50.0));
    assert_eq!(c.attention_scale(), Some(256f64.powf(-0.5)));
    let null = resolve(with(
        base("Gemma2ForCausalLM"),
        json!({"final_logit_softcapping": null, "attn_logit_softcapping": null}),
    ))
    .unwrap();
    assert_eq!(null.features.final_softcap, None);
    assert_eq!(null.features.attn_softcap, None);
}

#[test]
fn gemma3_legacy_rope_fields_resolve_like_rope_parameters() {
    let legacy = resolve(with(
        base("Gemma3ForCausalLM"),
        json!({
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "sliding_window": 512, "sliding_window_pattern": 3,
        }),
    ))
    .unwrap();
    let nested = resolve(with(
        base("Gemma3ForCausalLM"),
        json!({
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            "sliding_window": 512,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention", "sliding_attention", "full_attention"],
        }),
    ))
    .unwrap();
    assert_eq!(legacy, nested);
    assert_eq!(legacy.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    let local = legacy.features.local_rope.as_ref().unwrap();
    assert_eq!(
        (local.theta, &local.scaling),
        (10_000.0, &RopeScaling::None)
    );
    let ropes: Vec<LayerRope> = (0..6).map(|i| legacy.layer_kind(i).rope).collect();
    use LayerRope::{Global, Local};
    assert_eq!(ropes, vec![Local, Local, Global, Local, Local, Global]);
    // With nothing said: every 6th layer global, thetas 1e6 / 1e4, no soft-caps.
    let bare = resolve(base("Gemma3ForCausalLM")).unwrap();
    assert_eq!(windows(&bare)[5], None);
    assert_eq!(windows(&bare)[4], Some(4096));
    assert_eq!(bare.rope.theta, 1e6);
    assert_eq!(bare.features.final_softcap, None);
}

#[test]
fn smollm3_every_fourth_layer_has_no_rope_by_default() {
    let c = resolve(base("SmolLM3ForCausalLM")).unwrap();
    let ropes: Vec<LayerRope> = (0..6).map(|i| c.layer_kind(i).rope).collect();
    assert_eq!(ropes[3], LayerRope::None);
    assert_eq!(ropes.iter().filter(|r| **r == LayerRope::None).count(), 1);
    assert_eq!(c.rope.theta, 2e6);
}

#[test]
fn yarn_attention_factor_follows_transformers() {
    let yarn = |extra: Value| {
        let c = resolve(with(
            base("LlamaForCausalLM"),
            json!({"rope_parameters": with(json!({"rope_type": "yarn", "original_max_position_embeddings": 32}), extra)}),
        ))
        .unwrap();
        match c.rope.scaling {
            RopeScaling::Yarn {
                attention_factor,
                factor,
                ..
            } => (factor, attention_factor),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(yarn(json!({"factor": 4.0})), (4.0, 0.1 * 4f64.ln() + 1.0));
    let (_, af) = yarn(json!({"factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5}));
    assert_eq!(af, (0.1 * 4f64.ln() + 1.0) / (0.05 * 4f64.ln() + 1.0));
    assert_eq!(yarn(json!({"factor": 4.0, "attention_factor": 0.7})).1, 0.7);
}

#[test]
fn bad_fields_are_named() {
    let cases = [
        (json!({"layer_types": ["full_attention"]}), "layer_types"),
        (
            json!({"rope_parameters": {"rope_type": "proportional"}}),
            "rope_parameters",
        ),
        (json!({"sliding_window": 0}), "sliding_window"),
        (
            json!({"use_bidirectional_attention": true}),
            "use_bidirectional_attention",
        ),
        (
            json!({"layer_types": ["full_attention", "chunked_attention", "full_attention", "full_attention", "full_attention", "full_attention"]}),
            "chunked_attention",
        ),
    ];
    for (extra, needle) in cases {
        let err = resolve(with(base("Gemma3ForCausalLM"), extra)).unwrap_err();
        assert!(
            err.contains(needle) && !err.contains('\n'),
            "{needle}: {err}"
        );
    }
}
