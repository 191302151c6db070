//! Vision-language student and twin folders: text students untouched, strict loads that
//! name the key or field, students assembled from a CLIP folder and a text student, and
//! twin folders edkd reads back.

use std::path::{Path, PathBuf};

use edkd_models::generate::right_pad;
use edkd_models::multimodal::{
    TWIN_MODEL_TYPE, TextSource, VisionChoices, VisionConfig, VisionStudentModel, VisionTwinModel,
};
use edkd_models::student::{StudentConfig, StudentModel};
use edkd_models::vision::{HfClipVisionConfig, VisionTower};
use edkd_models::weights::save_tensors;
use edkd_models::{GenerationConfig, LoadOptions, Teacher};
use tch::{Device, Tensor};

const IMAGE: i64 = 500;

fn clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn vl_config() -> StudentConfig {
    let (tower, _) = HfClipVisionConfig::from_folder(&clip("vision_quick_gelu")).unwrap();
    StudentConfig {
        vision: Some(VisionConfig::llava(tower, IMAGE)),
        ..StudentConfig::preset("tiny").unwrap()
    }
}

fn err_of<T>(r: edkd_models::Result<T>) -> String {
    r.err().expect("an error").to_string()
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn text_students_are_untouched_and_refuse_a_vision_section() {
    let tiny = StudentConfig::preset("tiny").unwrap();
    let text = serde_json::to_string_pretty(&tiny).unwrap();
    assert!(!text.contains("vision"), "{text}");
    assert_eq!(serde_json::from_str::<StudentConfig>(&text).unwrap(), tiny);
    let e = err_of(StudentModel::init(&vl_config(), Device::Cpu, 0));
    assert!(
        e.contains("vision") && e.contains("VisionStudentModel"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = VisionStudentModel::init(&vl_config(), Device::Cpu, 0).unwrap();
    s.save(dir.path(), None).unwrap();
    let e = err_of(StudentModel::load(dir.path(), LoadOptions::default()));
    assert!(
        e.contains("config.json") && e.contains("VisionStudentModel"),
        "{e}"
    );
}

#[test]
fn vision_student_folders_load_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let s = VisionStudentModel::init(&vl_config(), Device::Cpu, 1).unwrap();
    s.save(dir.path(), None).unwrap();
    let load = || VisionStudentModel::load(dir.path(), LoadOptions::default());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(v["vision"]["tower"]["hidden_size"], 32);
    assert_eq!(v["vision"]["projector"], "mlp2x_gelu");
    let layers = |n: i64| {
        move |v: &mut serde_json::Value| v["vision"]["tower"]["num_hidden_layers"] = n.into()
    };
    edit_config(dir.path(), layers(2));
    let e = err_of(load());
    assert!(
        e.contains("unused tensors") && e.contains("vision_tower.vision_model.encoder.layers.2."),
        "{e}"
    );
    edit_config(dir.path(), layers(4));
    let e = err_of(load());
    assert!(
        e.contains("missing tensors") && e.contains("vision_tower.vision_model.encoder.layers.3."),
        "{e}"
    );
    edit_config(dir.path(), layers(3));
    edit_config(dir.path(), |v| v["vision"]["image_token_id"] = 512.into());
    let e = err_of(load());
    assert!(
        e.contains("config.json") && e.contains("vision.image_token_id"),
        "{e}"
    );
    edit_config(dir.path(), |v| v["vision"]["image_token_id"] = IMAGE.into());
    // A projector tensor gone from the weights is named.
    let mut named: Vec<(String, Tensor)> = s.vs.variables().into_iter().collect();
    named.retain(|(k, _)| k != "mm_projector.2.bias");
    save_tensors(&named, None, &dir.path().join("model.safetensors")).unwrap();
    let e = err_of(load());
    assert!(e.contains("missing tensors: mm_projector.2.bias"), "{e}");
}

#[test]
fn from_parts_keeps_the_tower_and_the_text_students_weights() {
    let text_dir = tempfile::tempdir().unwrap();
    let text = StudentModel::init(&StudentConfig::preset("tiny").unwrap(), Device::Cpu, 2).unwrap();
    text.save(text_dir.path(), None).unwrap();
    // A CLIPModel folder: the tower sits under `vision_model.` beside a text tower.
    let tower_dir = clip("full_gelu");
    let choices = VisionChoices::llava(IMAGE);
    let s = VisionStudentModel::from_parts(
        &tower_dir,
        TextSource::Folder(text_dir.path()),
        &choices,
        3,
    )
    .unwrap();
    let ours = s.vs.variables();
    for (name, t) in text.vs.variables() {
        assert!(t.equal(&ours[&name]), "text {name}");
    }
    let tower = VisionTower::load(&tower_dir, LoadOptions::default()).unwrap();
    for (name, t) in tower.vs.variables() {
        assert!(
            t.equal(&ours[&format!("vision_tower.{name}")]),
            "tower {name}"
        );
    }
    assert_eq!(s.processor, tower.processor);
    assert_eq!(s.model.embedder.tokens_per_image, 36);
    // A fresh text student: the seed decides text and projector alike.
    let fresh = |seed| {
        let c = StudentConfig::preset("tiny").unwrap();
        VisionStudentModel::from_parts(&tower_dir, TextSource::Fresh(&c), &choices, seed).unwrap()
    };
    let (a, b, c) = (fresh(4), fresh(4), fresh(5));
    let w = |m: &VisionStudentModel, k: &str| m.vs.variables()[k].shallow_clone();
    for key in ["mm_projector.0.weight", "embed_tokens.weight"] {
        assert!(w(&a, key).equal(&w(&b, key)), "{key} seeded");
        assert!(!w(&a, key).equal(&w(&c, key)), "{key} differs by seed");
    }
}

#[test]
fn twin_folders_round_trip_and_are_not_plain_llama_folders() {
    let student = VisionStudentModel::init(&vl_config(), Device::Cpu, 6).unwrap();
    let twin = VisionTwinModel::init_from(&student, 7).unwrap();
    let vars = twin.vs.variables();
    for (name, t) in student.vs.variables() {
        if name.starts_with("vision_tower.") || name.starts_with("mm_projector.") {
            assert!(t.equal(&vars[&name]), "{name} shared with the student");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    twin.save(dir.path(), None).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(v["model_type"], TWIN_MODEL_TYPE);
    assert_eq!(v["text_config"]["architectures"][0], "LlamaForCausalLM");
    assert_eq!(v["vision"]["image_token_id"], IMAGE);
    let back = VisionTwinModel::load(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(back.num_parameters(), twin.num_parameters());
    let px = Tensor::read_safetensors(clip("vision_quick_gelu").join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "pixel_values")
        .unwrap()
        .1
        .narrow(0, 0, 1);
    let prompts = vec![vec![3, IMAGE, 4, 5], vec![6, 7]];
    let cfg = GenerationConfig::greedy(6);
    assert_eq!(
        back.model.generate(&prompts, Some(&px), &cfg).unwrap(),
        twin.model.generate(&prompts, Some(&px), &cfg).unwrap()
    );
    let (ids, valid) = right_pad(&prompts, 0, Device::Cpu);
    let logits = |m: &VisionTwinModel| {
        tch::no_grad(|| m.model.forward(&ids, &valid, Some(&px), false))
            .unwrap()
            .0
    };
    assert!(logits(&back).equal(&logits(&twin)));
    assert!(Teacher::load(dir.path(), LoadOptions::default()).is_err());
    edit_config(dir.path(), |v| v["model_type"] = "llama".into());
    let e = err_of(VisionTwinModel::load(dir.path(), LoadOptions::default()));
    assert!(
        e.contains("model_type") && e.contains(TWIN_MODEL_TYPE),
        "{e}"
    );
}
