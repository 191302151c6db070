//! A tiny random vision-language teacher (the CLIP test tower and the `tiny` text model, as
//! an `edkd_vision_decoder` folder), test images, and the in-process reference: the twin's
//! own forward pass over one sequence, read at the merged target positions.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use edkd_data::images::{RgbImage, decode_rgb8, encode_jpeg, encode_png};
use edkd_models::LoadOptions;
use edkd_models::multimodal::{VisionConfig, VisionTwinModel};
use edkd_models::student::StudentConfig;
use edkd_models::vision::HfClipVisionConfig;
use edkd_teacher::{RunningServer, ServedTeacher, ServerConfig};
use tch::{Device, Kind, Tensor};

/// The twin's image placeholder token.
pub const IMAGE_TOKEN: u32 = 500;
/// The twin's vocabulary (the `tiny` preset's).
pub const VL_VOCAB: u32 = 512;
/// The twin's context length: small, so the position limit is easy to reach.
pub const VL_POSITIONS: i64 = 128;
/// Patch tokens per image of the 32 x 32 CLIP test tower with 8 x 8 patches.
pub const TOKENS_PER_IMAGE: usize = 16;

fn clip_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/clip/vision_quick_gelu")
}

/// The vision-language `tiny` student config whose twin the tests serve.
pub fn vl_student_config(image_token_id: u32) -> StudentConfig {
    let (tower, _) = HfClipVisionConfig::from_folder(&clip_fixture()).unwrap();
    StudentConfig {
        vision: Some(VisionConfig::llava(tower, i64::from(image_token_id))),
        max_positions: VL_POSITIONS,
        ..StudentConfig::preset("tiny").unwrap()
    }
}

/// Writes a freshly initialised twin folder to `dir` (with `tokenizer` copied in).
pub fn save_twin(dir: &Path, image_token_id: u32, tokenizer: Option<&Path>, seed: i64) {
    let twin =
        VisionTwinModel::init(&vl_student_config(image_token_id), Device::Cpu, seed).unwrap();
    twin.save(dir, tokenizer).unwrap();
}

pub fn load_twin(dir: &Path) -> VisionTwinModel {
    VisionTwinModel::load(dir, LoadOptions::default()).unwrap()
}

/// Serves the twin folder `dir` on loopback.
pub async fn vision_server(dir: &Path, config: ServerConfig) -> RunningServer {
    let teacher = ServedTeacher::load(dir, LoadOptions::default()).expect("the twin loads");
    assert!(
        teacher.vision().is_some(),
        "served as a vision-language teacher"
    );
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    edkd_teacher::start(teacher, config)
        .await
        .expect("server starts")
}

/// A `w` x `h` picture of pseudo-random colour blocks.
pub fn picture(seed: u64, w: u32, h: u32) -> RgbImage {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let palette: Vec<[u8; 3]> = (0..16)
        .map(|_| {
            let v = next();
            [v as u8, (v >> 8) as u8, (v >> 16) as u8]
        })
        .collect();
    let mut raw = Vec::with_capacity((w * h * 3) as usize);
    for py in 0..h {
        for px in 0..w {
            raw.extend_from_slice(&palette[((px / 5 + py / 7 * 3) % 16) as usize]);
        }
    }
    RgbImage::from_raw(w, h, raw).expect("w * h * 3 bytes")
}

pub fn png(seed: u64, w: u32, h: u32) -> Bytes {
    Bytes::from(encode_png(&picture(seed, w, h)))
}

pub fn jpeg(seed: u64, w: u32, h: u32) -> Bytes {
    Bytes::from(encode_jpeg(&picture(seed, w, h), 90))
}

/// A sequence with images.
pub fn image_sequence(
    id: &str,
    prompt: Vec<u32>,
    target: Vec<u32>,
    images: Vec<Bytes>,
) -> edkd_teacher::proto::Sequence {
    edkd_teacher::proto::Sequence {
        id: id.into(),
        prompt_ids: prompt,
        target_ids: target,
        images,
    }
}

/// `prompt` with the placeholder inserted at `at`.
pub fn with_placeholder(mut prompt: Vec<u32>, at: usize) -> Vec<u32> {
    prompt.insert(at, IMAGE_TOKEN);
    prompt
}

/// In-process reference: `VisionTwin::forward` over `prompt ++ target[..T-1]` alone (with
/// its images), log-softmax at temperature `t` in f64 at the position where text position
/// `len(prompt) - 1 + j` landed, `[targets][vocab]`.
pub fn vision_reference(
    twin: &VisionTwinModel,
    prompt: &[u32],
    target: &[u32],
    images: &[Bytes],
    t: f64,
) -> Vec<Vec<f64>> {
    let _g = tch::no_grad_guard();
    let ids: Vec<i64> = prompt
        .iter()
        .chain(&target[..target.len() - 1])
        .map(|&i| i64::from(i))
        .collect();
    let input = Tensor::from_slice(&ids).reshape([1, -1]);
    let valid = input.ones_like().to_kind(Kind::Bool);
    let decoded: Vec<RgbImage> = images
        .iter()
        .map(|b| decode_rgb8(b, "reference").unwrap())
        .collect();
    let pixels = (!decoded.is_empty()).then(|| twin.processor.batch(&decoded).unwrap());
    let (logits, merged) = twin
        .model
        .forward(&input, &valid, pixels.as_ref(), false)
        .unwrap(); // [1, L, V]
    let logp = (logits.squeeze_dim(0).to_kind(Kind::Double) / t).log_softmax(-1, Kind::Double);
    (0..target.len())
        .map(|j| {
            let at = merged.text_position(0, (prompt.len() - 1 + j) as i64);
            Vec::<f64>::try_from(&logp.get(at)).unwrap()
        })
        .collect()
}
