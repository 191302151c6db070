//! The vision-language student and its decoder-only twin (issue 14): the placeholder merge,
//! parity with a clean-room PyTorch reference (`fixtures/make_vision_student.py`), cached
//! generation with images, equal sizes, freezing, and errors that name the row.

use std::path::{Path, PathBuf};

use edkd_models::generate::right_pad;
use edkd_models::multimodal::{
    PROJECTOR_SCOPE, Side, TextSource, VISION_SCOPE, VisionChoices, VisionConfig,
    VisionStudentModel, VisionTwinModel,
};
use edkd_models::student::StudentConfig;
use edkd_models::student::convert::{ConvertOptions, SpecialIds, convert_reference};
use edkd_models::vision::{FeatureLayer, FeatureSelect, HfClipVisionConfig};
use edkd_models::{Decoding, GenerationConfig};
use tch::{Device, Kind, Tensor};

/// fp32 agreement of logits with the PyTorch reference.
const LOGIT_TOL: f64 = 1e-4;
/// The placeholder id of the tiny students built here (inside the 512-token vocabulary).
const IMAGE: i64 = 500;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tower_dir() -> PathBuf {
    fixtures().join("clip/vision_quick_gelu")
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

/// The CLIP fixture's processed images, `[5, 3, 32, 32]`.
fn pixels() -> Tensor {
    get(
        &named(&tower_dir().join("expected.safetensors")),
        "pixel_values",
    )
}

/// The `tiny` preset with the CLIP fixture's tower (32 px, 16 patches of width 32).
fn vl_config() -> StudentConfig {
    let (tower, _) = HfClipVisionConfig::from_folder(&tower_dir()).unwrap();
    StudentConfig {
        vision: Some(VisionConfig::llava(tower, IMAGE)),
        ..StudentConfig::preset("tiny").unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn row(t: &Tensor, r: i64) -> Vec<bool> {
    Vec::<bool>::try_from(t.get(r)).unwrap()
}

#[test]
fn the_encoder_input_is_text_before_the_placeholder_then_patches_then_text() {
    let mut config = vl_config();
    config.mask_pad_tokens = true; // a pad id inside a row must stay masked after the merge
    let s = VisionStudentModel::init(&config, Device::Cpu, 1).unwrap();
    let m = &s.model;
    let (p, pad) = (4, config.pad_token_id);
    let inputs = vec![
        vec![10, 11, 12, 13, IMAGE, 14, pad, 15],
        vec![20, 21, 22, 23, 24],
    ];
    let (ids, valid) = right_pad(&inputs, pad, Device::Cpu);
    let px = pixels().narrow(0, 1, 1);
    tch::no_grad(|| {
        let merged = m.merge_inputs(&ids, &valid, Some(&px), false).unwrap();
        let text = m.text.embed(&ids);
        let features = m
            .embedder
            .tower
            .features(&px, FeatureLayer(-2), FeatureSelect::Patch, false)
            .unwrap();
        let patches = m.embedder.projector.forward(&features).get(0); // [16, d]
        let n = patches.size()[0];
        assert_eq!(n, 16);
        let row0 = Tensor::cat(
            &[
                text.get(0).narrow(0, 0, p),
                patches,
                text.get(0).narrow(0, p + 1, 3),
            ],
            0,
        );
        let width = 8 + n - 1;
        assert_eq!(merged.embeds.size(), [2, width, config.d_model]);
        assert!(merged.embeds.get(0).equal(&row0));
        let row1 = merged.embeds.get(1);
        assert!(row1.narrow(0, 0, 5).equal(&text.get(1).narrow(0, 0, 5)));
        assert_eq!(
            row1.narrow(0, 5, width - 5).abs().max().double_value(&[]),
            0.0
        );
        // Row 0: all real but the pad id (text position 6, after the 16 patches: 21).
        let mut want0 = vec![true; width as usize];
        want0[(6 + n - 1) as usize] = false;
        assert_eq!(row(&merged.valid, 0), want0);
        let mut want1 = vec![false; width as usize];
        want1[..5].iter_mut().for_each(|v| *v = true);
        assert_eq!(row(&merged.valid, 1), want1);
        assert_eq!(merged.text_position(0, 3), 3);
        assert_eq!(merged.text_position(0, 5), 5 + n - 1);
        assert_eq!(merged.text_position(1, 4), 4);
        // The encoder runs on exactly that input.
        let enc = m.encode(&ids, &valid, Some(&px), false).unwrap();
        let hand = m.text.encode_embeds(&merged.embeds, &merged.valid, false);
        assert!(enc.memory.equal(&hand.memory) && enc.valid.equal(&merged.valid));
        // The twin pads on the left to generate: same rows, padding first.
        let twin = VisionTwinModel::init_from(&s, 2).unwrap();
        let left = twin
            .model
            .merge_inputs(&ids, &valid, Some(&px), Side::Left, false)
            .unwrap();
        assert_eq!(row(&left.valid, 1)[width as usize - 5..], [true; 5]);
        assert_eq!(left.text_position(1, 0), width - 5);
    });
}

#[test]
fn logits_match_the_pytorch_reference() {
    let fx = fixtures().join("vision_student");
    let e = named(&fx.join("expected.safetensors"));
    let image_token = get(&e, "image_token_id").int64_value(&[0]);
    for mask_pad_tokens in [false, true] {
        let text_dir = tempfile::tempdir().unwrap();
        let mu = fixtures().join("mu_reference");
        convert_reference(&ConvertOptions {
            weights: mu.join("model.safetensors"),
            config: Some(mu.join("config.json")),
            out: text_dir.path().to_path_buf(),
            specials: SpecialIds {
                eos: Some(2),
                ..Default::default()
            },
            mask_pad_tokens,
            ..Default::default()
        })
        .unwrap();
        let mut s = VisionStudentModel::from_parts(
            &tower_dir(),
            TextSource::Folder(text_dir.path()),
            &VisionChoices::llava(image_token),
            0,
        )
        .unwrap();
        s.load_projector(&fx.join("mm_projector.safetensors"))
            .unwrap();
        let ids = get(&e, "input_ids");
        let valid = get(&e, "attention_mask").to_kind(Kind::Bool);
        let px = get(&e, "pixel_values");
        tch::no_grad(|| {
            let merged = s
                .model
                .merge_inputs(&ids, &valid, Some(&px), false)
                .unwrap();
            let want_valid = get(&e, "encoder_valid").to_kind(Kind::Bool);
            assert!(merged.valid.equal(&want_valid), "encoder mask");
            let d = max_diff(&merged.embeds, &get(&e, "encoder_input"));
            assert!(d <= 1e-5, "merged encoder input: {d}");
            let logits = s
                .model
                .forward(&ids, &valid, Some(&px), &get(&e, "decoder_ids"), false)
                .unwrap();
            let d = max_diff(&logits, &get(&e, "logits"));
            println!("mask_pad_tokens {mask_pad_tokens}: max |edkd - torch| = {d:.2e}");
            assert!(d <= LOGIT_TOL, "logits: {d}");
        });
        // The folder it saves loads back strictly to the same logits.
        let dir = tempfile::tempdir().unwrap();
        s.save(dir.path(), None).unwrap();
        let back = VisionStudentModel::load(dir.path(), Default::default()).unwrap();
        let ours = s.vs.variables();
        for (name, t) in back.vs.variables() {
            assert!(t.equal(&ours[&name]), "{name} changed in the round trip");
        }
        assert_eq!(ours.len(), back.vs.variables().len());
        assert!(dir.path().join("preprocessor_config.json").is_file());
        assert_eq!(back.processor, s.processor);
    }
}

/// Logits closer than this are a tie: kernels for another CPU (AVX2 vs AVX-512) sum in
/// another order and may rank them either way, and random initialisation itself differs
/// between those kernels, so no test may depend on which of two tied ids wins.
const TIE: f64 = 1e-4;

/// Each token of `generated` is a greedy choice among the ids generation may pick (below
/// `IMAGE`): its logit in `logits_at(row, step)`, the uncached teacher-forced logits on the
/// generated prefix, is the largest up to a tie.
fn assert_greedy(logits_at: impl Fn(usize, usize) -> Tensor, generated: &[Vec<i64>]) {
    for (r, tokens) in generated.iter().enumerate() {
        assert!(!tokens.is_empty());
        for (t, &tok) in tokens.iter().enumerate() {
            let allowed = logits_at(r, t).narrow(0, 0, IMAGE);
            let best = allowed.max().double_value(&[]);
            let got = allowed.double_value(&[tok]);
            let best_id = allowed.argmax(0, false).int64_value(&[]);
            assert!(
                got >= best - TIE,
                "row {r}, step {t}: picked {tok} (logit {got}) over {best_id} (logit {best})"
            );
        }
    }
}

/// `a` and `b` are one greedy decode: equal, or equal up to a step where their two tokens
/// tie in `logits_at(step)` (logits on the shared prefix); past that step they may differ.
fn assert_same_decode(a: &[i64], b: &[i64], logits_at: impl Fn(usize) -> Tensor, what: &str) {
    let Some(t) = a.iter().zip(b).position(|(x, y)| x != y) else {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        return;
    };
    let l = logits_at(t);
    let gap = (l.double_value(&[a[t]]) - l.double_value(&[b[t]])).abs();
    assert!(
        gap <= TIE,
        "{what}: step {t} gives {} and {}, logits {gap} apart",
        a[t],
        b[t]
    );
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 6, IMAGE, 7, 8, 9],
        (30..41).collect(),
        vec![IMAGE, 50, 51],
    ]
}

#[test]
fn cached_generation_with_images_is_the_uncached_greedy_choice() {
    let s = VisionStudentModel::init(&vl_config(), Device::Cpu, 3).unwrap();
    let px = pixels().narrow(0, 2, 2);
    let mut cfg = GenerationConfig::greedy(10);
    // Generated placeholders would be images in the twin's teacher-forced re-check.
    cfg.max_token_id = Some(IMAGE);
    let m = &s.model;
    let cached = m
        .generate(&prompts(), Some(&px), &cfg, Decoding::Cached)
        .unwrap();
    let recomputed = m
        .generate(&prompts(), Some(&px), &cfg, Decoding::Recompute)
        .unwrap();
    let (ids, valid) = right_pad(&prompts(), 0, Device::Cpu);
    let bos = m.config().bos_token_id;
    let dec: Vec<Vec<i64>> = cached
        .iter()
        .map(|g| {
            std::iter::once(bos)
                .chain(g[..g.len() - 1].iter().copied())
                .collect()
        })
        .collect();
    let (dec, _) = right_pad(&dec, 0, Device::Cpu);
    let logits = tch::no_grad(|| m.forward(&ids, &valid, Some(&px), &dec, false)).unwrap();
    let at = |r: usize, t: usize| logits.get(r as i64).get(t as i64);
    assert_greedy(at, &cached);
    for (r, (c, full)) in cached.iter().zip(&recomputed).enumerate() {
        assert_same_decode(c, full, |t| at(r, t), &format!("row {r}, recomputed"));
    }
    // A row gives alone what it gave in the batch (its image travels with it).
    let alone = m
        .generate(
            &prompts()[2..],
            Some(&px.narrow(0, 1, 1)),
            &cfg,
            Decoding::Cached,
        )
        .unwrap();
    assert_same_decode(&alone[0], &cached[2], |t| at(2, t), "row 2 alone");

    let twin = VisionTwinModel::init_from(&s, 4).unwrap();
    let generated = twin.model.generate(&prompts(), Some(&px), &cfg).unwrap();
    let full: Vec<Vec<i64>> = prompts()
        .iter()
        .zip(&generated)
        .map(|(p, g)| [p.as_slice(), &g[..g.len() - 1]].concat())
        .collect();
    let (ids, valid) = right_pad(&full, 0, Device::Cpu);
    let (logits, merged) =
        tch::no_grad(|| twin.model.forward(&ids, &valid, Some(&px), false)).unwrap();
    assert_greedy(
        |r, t| {
            let at = merged.text_position(r, (prompts()[r].len() - 1 + t) as i64);
            logits.get(r as i64).get(at)
        },
        &generated,
    );
}

#[test]
fn student_and_twin_are_equal_in_size_and_count_the_vision_part_alike() {
    for preset in ["tiny", "small"] {
        let config = StudentConfig {
            vision: vl_config().vision,
            ..StudentConfig::preset(preset).unwrap()
        };
        let s = VisionStudentModel::init(&config, Device::Cpu, 0).unwrap();
        let t = VisionTwinModel::init(&config, Device::Cpu, 0).unwrap();
        let vision_count = |vs: &tch::nn::VarStore| -> i64 {
            vs.variables()
                .iter()
                .filter(|(k, _)| {
                    k.starts_with(&format!("{VISION_SCOPE}."))
                        || k.starts_with(&format!("{PROJECTOR_SCOPE}."))
                })
                .map(|(_, v)| v.numel() as i64)
                .sum()
        };
        let v = config.vision.as_ref().unwrap();
        let by_shape = v.num_parameters(config.d_model, Path::new("-")).unwrap();
        assert_eq!(vision_count(&s.vs), by_shape, "{preset} student");
        assert_eq!(vision_count(&t.vs), by_shape, "{preset} twin");
        assert_eq!(s.num_parameters(), config.num_parameters() + by_shape);
        let ratio = t.num_parameters() as f64 / s.num_parameters() as f64;
        assert!(
            (ratio - 1.0).abs() <= 0.02,
            "{preset}: twin/student {ratio}"
        );
    }
}

#[test]
fn freezing_follows_the_config_and_the_projector_always_trains() {
    let img = pixels().narrow(0, 0, 1);
    for (train_tower, train_text) in [(false, true), (true, false), (false, false), (true, true)] {
        let mut config = vl_config();
        let v = config.vision.as_mut().unwrap();
        (v.train_tower, v.train_text) = (train_tower, train_text);
        let s = VisionStudentModel::init(&config, Device::Cpu, 5).unwrap();
        let t = VisionTwinModel::init(&config, Device::Cpu, 5).unwrap();
        for (what, vs) in [("student", &s.vs), ("twin", &t.vs)] {
            for (name, var) in vs.variables() {
                let want = if name.starts_with("vision_tower.vision_model.") {
                    train_tower
                } else if name.starts_with("mm_projector.") {
                    true
                } else {
                    train_text
                };
                assert_eq!(var.requires_grad(), want, "{what} {name}");
            }
        }
        // A training step's gradients reach exactly the trainable groups.
        let (ids, valid) = right_pad(&[vec![3, IMAGE, 4]], 0, Device::Cpu);
        let dec = Tensor::from_slice(&[1i64, 7]).view([1, 2]);
        let loss = s
            .model
            .forward(&ids, &valid, Some(&img), &dec, true)
            .unwrap()
            .sum(Kind::Float);
        loss.backward();
        let vars = s.vs.variables();
        let has_grad = |k: &str| vars[k].grad().defined();
        assert!(has_grad("mm_projector.0.weight"));
        let tower_key = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight";
        assert_eq!(has_grad(tower_key), train_tower);
        assert_eq!(has_grad("encoder.layers.0.mlp.fc1.weight"), train_text);
    }
}

/// Generation's error for these inputs with the first `n` images.
type GenerateErr<'a> = dyn Fn(&[Vec<i64>], i64) -> String + 'a;

#[test]
fn misplaced_images_are_errors_that_name_the_row() {
    let s = VisionStudentModel::init(&vl_config(), Device::Cpu, 6).unwrap();
    let twin = VisionTwinModel::init_from(&s, 6).unwrap();
    let px = pixels();
    let cfg = GenerationConfig::greedy(2);
    let student_err = |inputs: &[Vec<i64>], n: i64| {
        s.model
            .generate(inputs, Some(&px.narrow(0, 0, n)), &cfg, Decoding::Cached)
            .unwrap_err()
            .to_string()
    };
    let twin_err = |inputs: &[Vec<i64>], n: i64| {
        twin.model
            .generate(inputs, Some(&px.narrow(0, 0, n)), &cfg)
            .unwrap_err()
            .to_string()
    };
    let missing = vec![vec![3, IMAGE], vec![4, 5], vec![IMAGE, 6]];
    let two = vec![vec![3, 4], vec![IMAGE, 5, IMAGE]];
    let extra = vec![vec![IMAGE, 3], vec![4, 5]];
    let errs: [&GenerateErr<'_>; 2] = [&student_err, &twin_err];
    for err in errs {
        let e = err(&missing, 1);
        assert!(e.contains("row 2") && e.contains("only 1 image"), "{e}");
        let e = err(&two, 2);
        assert!(e.contains("row 1 has 2 image placeholders"), "{e}");
        let e = err(&extra, 2);
        assert!(
            e.contains("2 images for 1 row") && e.contains("image 1"),
            "{e}"
        );
    }
    let e = s
        .model
        .generate(&missing[..1], None, &cfg, Decoding::Cached)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 0") && e.contains("only 0 image"), "{e}");
    // Text rows need no images at all.
    let text_only = s
        .model
        .generate(&[vec![3, 4, 5]], None, &cfg, Decoding::Cached)
        .unwrap();
    assert_eq!(text_only[0].len(), 2);
}
