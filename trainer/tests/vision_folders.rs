//! Vision-language nets built from folders (issue 14): a saved VL student as `model.init`
//! (choosing what trains), a text student folder with a CLIP folder's tower, the
//! decoder-only twin with a CLIP tower, and the combinations that are refused, naming the
//! field.

use std::collections::HashMap;

use edkd_models::student::StudentModel;
use edkd_models::teacher::LoadOptions;
use edkd_trainer::config::{Architecture, ModelSection, TrainConfig, VisionSection};
use edkd_trainer::model::{Net, Vocab};
use tch::{Device, Tensor};

mod common;
use common::images::{clip_dir, prepare_images, vl_config};
use common::vocab_of;

fn build(section: &ModelSection, vocab: Vocab) -> Result<Net, String> {
    Net::build(section, vocab, Device::Cpu, 3).map_err(|e| e.to_string())
}

/// `requires_grad` of every variable under each top-level group.
fn trainable(net: &Net) -> HashMap<&'static str, Vec<bool>> {
    let mut out: HashMap<&'static str, Vec<bool>> = HashMap::new();
    for (name, v) in net.vs().variables() {
        let group = match name.split('.').next() {
            Some("vision_tower") => "tower",
            Some("mm_projector") => "projector",
            _ => "text",
        };
        out.entry(group).or_default().push(v.requires_grad());
    }
    out
}

fn all(flags: &[bool], value: bool) -> bool {
    !flags.is_empty() && flags.iter().all(|&f| f == value)
}

/// The CLIP fixture's weights under the VL model's keys.
fn clip_weights() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(clip_dir().join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, t)| {
            let k = k.strip_prefix("vision_model.").unwrap_or(&k).to_owned();
            (format!("vision_tower.vision_model.{k}"), t)
        })
        .collect()
}

fn assert_clip_tower(net: &Net) {
    let vars = net.vs().variables();
    for (key, t) in clip_weights() {
        assert!(t.equal(&vars[&key]), "{key}");
    }
}

#[test]
fn vl_nets_build_from_folders_and_refuse_what_cannot_join() {
    let tmp = tempfile::tempdir().unwrap();
    let d = prepare_images(tmp.path(), "image-count", (8, 4), true);
    let vocab = vocab_of(&d.data);
    let fresh: TrainConfig = vl_config(&d, &[]);

    // A saved VL student as model.init: its choices, or the section's.
    let student = build(&fresh.model, vocab).unwrap();
    let saved = tmp.path().join("vl-student");
    student.save(&saved, Some(&d.tokenizer)).unwrap();
    let init = ModelSection {
        init: Some(saved.clone()),
        vision: None,
        ..fresh.model.clone()
    };
    let net = build(&init, vocab).unwrap();
    assert!(matches!(net, Net::VisionEncoderDecoder(_)));
    let g = trainable(&net);
    assert!(all(&g["tower"], false) && all(&g["projector"], true) && all(&g["text"], true));
    let stage1 = ModelSection {
        vision: Some(VisionSection {
            train_text: Some(false),
            ..Default::default()
        }),
        ..init.clone()
    };
    let net = build(&stage1, vocab).unwrap();
    let g = trainable(&net);
    assert!(
        all(&g["text"], false) && all(&g["projector"], true),
        "{g:?}"
    );
    assert_eq!(net.config_json()["vision"]["train_text"], false);
    // ... whose tower, features and placeholder are the folder's.
    let mut tower = stage1.clone();
    tower.vision.as_mut().unwrap().tower = Some(clip_dir());
    let e = build(&tower, vocab).err().unwrap();
    assert!(e.contains("`model.vision.tower`"), "{e}");
    let other_id = Vocab {
        image_token_id: Some(7),
        ..vocab
    };
    let e = build(&init, other_id).err().unwrap();
    assert!(e.contains("images.image_token_id is 7"), "{e}");
    let twin_arch = ModelSection {
        architecture: Architecture::DecoderOnly,
        ..init.clone()
    };
    let e = build(&twin_arch, vocab).err().unwrap();
    assert!(e.contains("`model.architecture`"), "{e}");

    // A text student folder and a CLIP folder: its text weights, the folder's tower.
    let text_section = ModelSection {
        vision: None,
        ..fresh.model.clone()
    };
    let text = build(
        &text_section,
        Vocab {
            image_token_id: None,
            ..vocab
        },
    )
    .unwrap();
    let text_dir = tmp.path().join("text-student");
    text.save(&text_dir, Some(&d.tokenizer)).unwrap();
    let on_text = ModelSection {
        init: Some(text_dir.clone()),
        vision: Some(VisionSection {
            tower: Some(clip_dir()),
            ..Default::default()
        }),
        ..fresh.model.clone()
    };
    let net = build(&on_text, vocab).unwrap();
    assert!(matches!(net, Net::VisionEncoderDecoder(_)));
    assert_clip_tower(&net);
    let vars = net.vs().variables();
    let text_model = StudentModel::load(&text_dir, LoadOptions::default()).unwrap();
    for (k, t) in text_model.vs.variables() {
        assert!(t.equal(&vars[&k]), "{k}");
    }
    let mut no_tower = on_text.clone();
    no_tower.vision.as_mut().unwrap().tower = None;
    let e = build(&no_tower, vocab).err().unwrap();
    assert!(
        e.contains("`model.vision.tower`") && e.contains("text student"),
        "{e}"
    );

    // The decoder-only twin with the CLIP folder's tower (and its processor).
    let twin = ModelSection {
        architecture: Architecture::DecoderOnly,
        init: None,
        ..on_text.clone()
    };
    let net = build(&twin, vocab).unwrap();
    let Net::VisionDecoderOnly(m) = &net else {
        panic!("a decoder-only VL net");
    };
    assert_eq!(m.model.embedder.tokens_per_image, 16);
    assert_clip_tower(&net);
    let g = trainable(&net);
    assert!(all(&g["tower"], false) && all(&g["text"], true));
    // A decoder-only text folder cannot take a tower.
    let twin_dir = tmp.path().join("text-twin");
    build(
        &ModelSection {
            vision: None,
            ..twin.clone()
        },
        Vocab {
            image_token_id: None,
            ..vocab
        },
    )
    .unwrap()
    .save(&twin_dir, None)
    .unwrap();
    let e = build(
        &ModelSection {
            init: Some(twin_dir),
            ..twin
        },
        vocab,
    )
    .err()
    .unwrap();
    assert!(
        e.contains("`model.vision`") && e.contains("not supported"),
        "{e}"
    );
}
