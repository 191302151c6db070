//! CLIP vision tower parity with transformers 5.23 (fixtures from
//! `fixtures/make_clip.py`): hidden states and pooled output of a `CLIPVisionModel` folder
//! (quick_gelu) and a `CLIPModel` folder (gelu), the PIL image processor's pixels, and the
//! strict loader's errors.

use std::path::{Path, PathBuf};

use edkd_models::vision::{
    ClipVisionModel, FeatureLayer, FeatureSelect, ImageProcessor, VisionTower, open_rgb,
};
use edkd_models::{Error, LoadOptions};
use image::RgbImage;
use tch::{Kind, Tensor};

/// fp32 agreement of hidden states and pooled outputs with transformers.
const FEATURE_TOL: f64 = 1e-4;
/// Pixels from PNG files: the same 8-bit values as PIL, so only f32 rounding can differ.
const PNG_PIXEL_TOL: f64 = 1e-6;
/// Pixels from the JPEG: zune-jpeg (the `image` crate) and libjpeg-turbo (PIL) decode some
/// samples apart (measured: at most 10 levels, mean below 1, on this noisy 4:2:0 file), and
/// resizing averages that down; one level is 1/255/std ~= 0.015 after normalisation.
const JPEG_PIXEL_TOL: f64 = 0.06;
const JPEG_DECODE_MAX: u8 = 12;
const JPEG_DECODE_MEAN: f64 = 0.6;

const CASES: [&str; 2] = ["vision_quick_gelu", "full_gelu"];
/// In `make_clip.py`'s IMAGES order (the rows of the expected tensors).
const IMAGES: [&str; 5] = [
    "wide.png",
    "gray_tall.png",
    "rgba.png",
    "photo.jpg",
    "small.png",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn named(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// PIL's decoded pixels of a fixture image, `[h, w, 3]` uint8, as an `RgbImage`.
fn pil_decoded(name: &str) -> RgbImage {
    let t = get(&named(&fixtures().join("images/decoded.safetensors")), name);
    let (h, w, _) = t.size3().unwrap();
    let data = Vec::<u8>::try_from(t.flatten(0, -1)).unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

fn load(dir: &Path) -> VisionTower {
    VisionTower::load(dir, LoadOptions::default()).unwrap()
}

#[test]
fn hidden_states_and_pooled_output_match_transformers() {
    for case in CASES {
        let dir = fixtures().join(case);
        let tower = load(&dir);
        let e = named(&dir.join("expected.safetensors"));
        let out = tch::no_grad(|| tower.model.forward(&get(&e, "pixel_values"), false)).unwrap();
        let n = out.hidden_states.len();
        assert_eq!(n as i64, tower.model.config.num_layers + 1);
        let checks = [
            ("hidden_m2", &out.hidden_states[n - 2]),
            ("last_hidden", &out.last_hidden_state),
            ("pooled", &out.pooler_output),
        ];
        for (key, got) in checks {
            let diff = max_diff(got, &get(&e, key));
            println!("{case}: {key}: max |edkd - transformers| = {diff:.2e}");
            assert!(diff <= FEATURE_TOL, "{case} {key}: {diff}");
        }
        // LLaVA's selection: layer -2, class token dropped or kept.
        let px = get(&e, "pixel_values");
        let features = |select| {
            tch::no_grad(|| {
                tower
                    .model
                    .features(&px, FeatureLayer::LLAVA, select, false)
            })
            .unwrap()
        };
        let want = get(&e, "hidden_m2");
        let patches = features(FeatureSelect::Patch);
        assert_eq!(patches.size()[1], tower.model.config.num_patches());
        assert!(max_diff(&patches, &want.narrow(1, 1, want.size()[1] - 1)) <= FEATURE_TOL);
        assert!(max_diff(&features(FeatureSelect::ClsPatch), &want) <= FEATURE_TOL);
    }
}

#[test]
fn preprocessing_matches_the_pil_image_processor() {
    for case in CASES {
        let dir = fixtures().join(case);
        let processor = load(&dir).processor;
        let want = get(&named(&dir.join("expected.safetensors")), "pixel_values");
        for (row, name) in IMAGES.iter().enumerate() {
            let want = want.get(row as i64);
            // Resize, crop, rescale, normalise on PIL's own decoded pixels: exact.
            let from_pil = processor.pixel_values(&pil_decoded(name));
            let diff = max_diff(&from_pil, &want);
            println!("{case} {name}: from PIL's pixels: max diff {diff:.2e}");
            assert!(diff <= PNG_PIXEL_TOL, "{case} {name}: {diff}");
            // The whole path from the file.
            let ours = open_rgb(&fixtures().join("images").join(name)).unwrap();
            let diff = max_diff(&processor.pixel_values(&ours), &want);
            println!("{case} {name}: from the file: max diff {diff:.2e}");
            let tol = if name.ends_with(".jpg") {
                JPEG_PIXEL_TOL
            } else {
                PNG_PIXEL_TOL
            };
            assert!(diff <= tol, "{case} {name}: {diff}");
        }
    }
}

#[test]
fn decoding_png_matches_pil_exactly() {
    for name in IMAGES.iter().filter(|n| n.ends_with(".png")) {
        let ours = open_rgb(&fixtures().join("images").join(name)).unwrap();
        assert_eq!(ours, pil_decoded(name), "{name}");
    }
    let jpg = open_rgb(&fixtures().join("images/photo.jpg")).unwrap();
    let pil = pil_decoded("photo.jpg");
    let diffs: Vec<u8> = jpg
        .as_raw()
        .iter()
        .zip(pil.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let worst = diffs.iter().copied().max().unwrap_or(0);
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    let same = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
    println!(
        "photo.jpg: |zune-jpeg - libjpeg-turbo|: max {worst}, mean {mean:.3} levels, {:.1}% equal",
        100.0 * same
    );
    assert!(
        worst <= JPEG_DECODE_MAX && mean <= JPEG_DECODE_MEAN,
        "{worst} {mean}"
    );
}

#[test]
fn bilinear_resampling_matches_pil() {
    let dir = fixtures().join("vision_quick_gelu");
    let mut processor = load(&dir).processor;
    let (how, _) = processor.resize.unwrap();
    processor.resize = Some((how, edkd_models::vision::Filter::Bilinear));
    let want = get(
        &named(&dir.join("expected.safetensors")),
        "pixel_values_bilinear",
    );
    let got = processor.pixel_values(&pil_decoded(IMAGES[0]));
    assert!(max_diff(&got, &want.get(0)) <= PNG_PIXEL_TOL);
}

#[test]
fn llava_features_of_image_files_match_transformers() {
    for case in CASES {
        let dir = fixtures().join(case);
        let tower = load(&dir);
        let want = get(&named(&dir.join("expected.safetensors")), "hidden_m2");
        let pngs: Vec<(usize, PathBuf)> = IMAGES
            .iter()
            .enumerate()
            .filter(|(_, n)| n.ends_with(".png"))
            .map(|(i, n)| (i, fixtures().join("images").join(n)))
            .collect();
        let paths: Vec<&Path> = pngs.iter().map(|(_, p)| p.as_path()).collect();
        let got = tower.llava_features(&paths).unwrap();
        let rows = Tensor::from_slice(&pngs.iter().map(|(i, _)| *i as i64).collect::<Vec<_>>());
        let want = want.index_select(0, &rows);
        let diff = max_diff(&got, &want.narrow(1, 1, want.size()[1] - 1));
        println!("{case}: features from PNG files: max diff {diff:.2e}");
        assert!(diff <= FEATURE_TOL, "{case}: {diff}");
    }
}

#[test]
fn a_tower_inside_a_larger_varstore_loads_and_freezes_by_its_path() {
    let dir = fixtures().join("full_gelu");
    let config = edkd_models::vision::ClipVisionConfig::from_folder(&dir).unwrap();
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let scope = "student.vision_tower";
    let tower = ClipVisionModel::new(&(vs.root() / "student" / "vision_tower"), &config);
    let projector = vs.root().var("projector", &[4], tch::nn::Init::Const(1.0));
    edkd_models::vision::load_tower_weights(&mut vs, scope, &dir, config.checkpoint).unwrap();
    edkd_models::vision::set_trainable(&vs, scope, false);
    for (name, var) in vs.variables() {
        assert_eq!(var.requires_grad(), name == "projector", "{name}");
    }
    let e = named(&dir.join("expected.safetensors"));
    let pooled = tower
        .forward(&get(&e, "pixel_values"), false)
        .unwrap()
        .pooler_output;
    assert!(max_diff(&pooled, &get(&e, "pooled")) <= FEATURE_TOL);
    assert!(projector.requires_grad());
}

/// A scratch copy of a fixture folder.
fn copy_of(case: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(case)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut named = named(&path);
    edit(&mut named);
    edkd_models::weights::save_tensors(&named, None, &path).unwrap();
}

fn load_err(dir: &Path) -> (Error, String) {
    let err = VisionTower::load(dir, LoadOptions::default())
        .err()
        .expect("load should fail");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    (err, msg)
}

#[test]
fn a_missing_tensor_is_named() {
    for (case, key) in [
        ("vision_quick_gelu", "encoder.layers.1.mlp.fc2.bias"),
        ("full_gelu", "vision_model.pre_layrnorm.weight"),
    ] {
        let dir = copy_of(case);
        rewrite_weights(dir.path(), |n| n.retain(|(k, _)| k != key));
        let (err, msg) = load_err(dir.path());
        assert!(matches!(err, Error::MissingTensors { .. }), "{msg}");
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn an_unknown_tensor_is_named_but_the_text_tower_is_not() {
    for (case, key) in [
        ("vision_quick_gelu", "encoder.layers.7.mlp.fc1.weight"),
        ("full_gelu", "vision_model.head.weight"),
        ("full_gelu", "image_projection.weight"),
    ] {
        let dir = copy_of(case);
        rewrite_weights(dir.path(), |n| {
            n.push((key.into(), Tensor::zeros([2], tch::kind::FLOAT_CPU)))
        });
        let (err, msg) = load_err(dir.path());
        assert!(matches!(err, Error::UnusedTensors { .. }), "{msg}");
        assert!(msg.contains(key) && !msg.contains("text_model"), "{msg}");
    }
    // A text tower in a CLIPVisionModel folder is not known there.
    let dir = copy_of("vision_quick_gelu");
    rewrite_weights(dir.path(), |n| {
        n.push((
            "text_model.final_layer_norm.weight".into(),
            Tensor::ones([2], tch::kind::FLOAT_CPU),
        ))
    });
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("text_model.final_layer_norm.weight"), "{msg}");
}

#[test]
fn a_wrong_shape_names_the_key_and_both_shapes() {
    let dir = copy_of("full_gelu");
    let key = "vision_model.encoder.layers.0.self_attn.k_proj.weight";
    rewrite_weights(dir.path(), |n| {
        for (k, t) in n.iter_mut() {
            if k == key {
                *t = Tensor::zeros([48, 40], tch::kind::FLOAT_CPU);
            }
        }
    });
    let (err, msg) = load_err(dir.path());
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(
        msg.contains(key) && msg.contains("[48, 40]") && msg.contains("[48, 48]"),
        "{msg}"
    );
}

#[test]
fn the_transformers_4_layout_and_old_position_id_buffers_load() {
    // transformers 4.x's CLIPVisionModel nests the tower under `vision_model.` and older
    // checkpoints persisted `position_ids`.
    let dir = copy_of("vision_quick_gelu");
    rewrite_weights(dir.path(), |n| {
        for (k, _) in n.iter_mut() {
            *k = format!("vision_model.{k}");
        }
        n.push((
            "vision_model.embeddings.position_ids".into(),
            Tensor::arange(17, tch::kind::INT64_CPU).unsqueeze(0),
        ));
    });
    let tower = load(dir.path());
    let e = named(&dir.path().join("expected.safetensors"));
    let out = tower
        .model
        .forward(&get(&e, "pixel_values"), false)
        .unwrap();
    assert!(max_diff(&out.pooler_output, &get(&e, "pooled")) <= FEATURE_TOL);
}

/// A change to a config.json that makes it nonsense.
type ConfigEdit = fn(&mut serde_json::Value);

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn nonsense_configs_name_the_field() {
    let cases: [(&str, ConfigEdit, &str); 4] = [
        (
            "vision_quick_gelu",
            |v| v["image_size"] = 36.into(),
            "image_size",
        ),
        (
            "full_gelu",
            |v| v["vision_config"]["num_attention_heads"] = 5.into(),
            "num_attention_heads",
        ),
        (
            "vision_quick_gelu",
            |v| v["hidden_act"] = "swishy".into(),
            "hidden_act",
        ),
        (
            "vision_quick_gelu",
            |v| v["model_type"] = "siglip_vision_model".into(),
            "siglip",
        ),
    ];
    for (case, edit, needle) in cases {
        let dir = copy_of(case);
        edit_config(dir.path(), edit);
        let (_, msg) = load_err(dir.path());
        assert!(msg.contains(needle) && msg.contains("config.json"), "{msg}");
    }
    // The processor's config too: Lanczos (1) is not one of the filters edkd implements.
    let dir = copy_of("full_gelu");
    let path = dir.path().join("preprocessor_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"resample\": 3", "\"resample\": 1")).unwrap();
    let err = ImageProcessor::from_folder(dir.path(), 48).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("resample") && msg.contains("preprocessor_config.json"),
        "{msg}"
    );
}

#[test]
fn pixels_of_the_wrong_size_are_refused() {
    let tower = load(&fixtures().join("vision_quick_gelu"));
    let err = tower
        .model
        .forward(&Tensor::zeros([1, 3, 48, 48], tch::kind::FLOAT_CPU), false)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("[1, 3, 48, 48]") && msg.contains("[batch, 3, 32, 32]"),
        "{msg}"
    );
    let err = tower
        .model
        .features(
            &Tensor::zeros([1, 3, 32, 32], tch::kind::FLOAT_CPU),
            FeatureLayer(4),
            FeatureSelect::Patch,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("feature layer 4"), "{err}");
}
