//! The remote teacher source with images: each row's `Batch.images` bytes travel with its
//! sequence to a vision-language teacher (the answers equal the service's own for those
//! sequences and images), and a teacher whose Info says it reads no images is refused
//! with an error naming `teacher` and the reason.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use edkd_data::Batch;
use edkd_data::images::{RgbImage, encode_png};
use edkd_models::multimodal::{VisionConfig, VisionTwinModel};
use edkd_models::student::StudentConfig;
use edkd_models::vision::HfClipVisionConfig;
use edkd_teacher::proto::{ScoreRequest, Sequence, ValueFormat};
use edkd_trainer::source::{self, TeacherOut, TeacherSource};
use tch::Device;

const IMAGE: i64 = 500;
const EOS: i64 = 2;
const K: usize = 6;
const T: f32 = 1.5;

fn clip_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/clip/vision_quick_gelu")
}

fn save_twin(dir: &Path) {
    let (tower, _) = HfClipVisionConfig::from_folder(&clip_fixture()).unwrap();
    let config = StudentConfig {
        vision: Some(VisionConfig::llava(tower, IMAGE)),
        ..StudentConfig::preset("tiny").unwrap()
    };
    let twin = VisionTwinModel::init(&config, Device::Cpu, 11).unwrap();
    twin.save(dir, None).unwrap();
}

fn png(shade: u8) -> Vec<u8> {
    let raw: Vec<u8> = (0..24 * 20 * 3)
        .map(|i| (i as u8).wrapping_mul(shade))
        .collect();
    encode_png(&RgbImage::from_raw(24, 20, raw).unwrap())
}

/// A row's prompt, target and image.
type Row = (Vec<i64>, Vec<i64>, Option<Vec<u8>>);

/// A batch of `rows`: `target + [eos]` are the labels the teacher scores.
fn batch(rows: &[Row]) -> Batch {
    let dec_len = rows.iter().map(|r| r.1.len() + 1).max().unwrap();
    let teacher_len = rows.iter().map(|r| r.0.len() + r.1.len()).max().unwrap();
    let mut b = Batch {
        rows: rows.len(),
        ids: (0..rows.len()).map(|r| format!("row{r}")).collect(),
        dec_len,
        teacher_len,
        images: Some(rows.iter().map(|r| r.2.clone()).collect()),
        ..Batch::default()
    };
    for (prompt, target, _) in rows {
        let mut labels: Vec<i64> = target.iter().copied().chain([EOS]).collect();
        let real = labels.len();
        labels.resize(dec_len, edkd_data::batch::IGNORE_INDEX);
        b.labels.extend(labels);
        b.decoder_mask.extend((0..dec_len).map(|j| j < real));
        let mut ids: Vec<i64> = prompt.iter().chain(target).copied().collect();
        let len = ids.len();
        ids.resize(teacher_len, 0);
        b.teacher_ids.extend(ids);
        b.teacher_mask.extend((0..teacher_len).map(|j| j < len));
        b.target_start.push(prompt.len() as i64);
    }
    b
}

fn remote(addr: &str) -> edkd_trainer::Result<source::Remote> {
    source::Remote::connect(source::RemoteConfig {
        addr: addr.to_owned(),
        top_k: K,
        temperature: T,
        auth_token: None,
        timeout: Duration::from_secs(30),
        retry_for: Duration::ZERO,
        packing: None,
    })
}

#[test]
fn remote_source_sends_each_rows_image() {
    let tmp = tempfile::tempdir().unwrap();
    save_twin(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let served = edkd_teacher::ServedTeacher::load(tmp.path(), Default::default()).unwrap();
    let config = edkd_teacher::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let vl = rt.block_on(edkd_teacher::start(served, config)).unwrap();
    let rows: Vec<Row> = vec![
        (vec![1, IMAGE, 7, 8], vec![9, 10, 11], Some(png(3))),
        (vec![1, 12, 13], vec![14, 15], None),
        (vec![IMAGE, 16], vec![17, 18, 19, 20], Some(png(7))),
    ];
    let batch = batch(&rows);
    let mut src = remote(&vl.addr.to_string()).unwrap();
    assert!(src.accepts_images());
    src.require_images("the data").unwrap();
    let TeacherOut::TopK(got) = src.score(&batch).unwrap() else {
        panic!("the service answers with top-k");
    };

    // The service's own answer for the same sequences with the same images.
    let request = ScoreRequest {
        request_id: 0,
        sequences: rows
            .iter()
            .enumerate()
            .map(|(r, (prompt, target, image))| Sequence {
                id: format!("row{r}"),
                prompt_ids: prompt.iter().map(|&t| t as u32).collect(),
                target_ids: target.iter().chain(&[EOS]).map(|&t| t as u32).collect(),
                images: image.iter().cloned().map(Bytes::from).collect(),
            })
            .collect(),
        top_k: K as u32,
        temperature: T,
        value_format: ValueFormat::F32 as i32,
        ..Default::default()
    };
    let config = edkd_teacher::ClientConfig::new(vl.addr.to_string());
    let client = rt
        .block_on(async { edkd_teacher::Client::connect(config) })
        .unwrap();
    let want = rt.block_on(client.score(request)).unwrap();
    let want = edkd_teacher::wire::decode_response(&want).unwrap();
    for (r, w) in want.iter().enumerate() {
        for j in 0..w.positions {
            let o = (r * batch.dec_len + j) * K;
            let ids: Vec<u32> = got.topk_ids[o..o + K].iter().map(|&i| i as u32).collect();
            assert_eq!(ids, w.topk_ids[j * K..(j + 1) * K], "row {r} position {j}");
            assert_eq!(
                got.topk_logprobs[o..o + K],
                w.topk_logprobs[j * K..(j + 1) * K]
            );
            assert_eq!(got.gold_logprob[r * batch.dec_len + j], w.gold_logprob[j]);
        }
    }
    assert!(
        vl.metrics
            .render()
            .contains("edkd_teacher_scored_images_total 4"),
        "both requests' images were read"
    );
    rt.block_on(vl.shutdown()).unwrap();
}

#[test]
fn a_text_teacher_is_refused_for_image_rows() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let teacher = edkd_models::Teacher::load(&common::teacher_dir(), Default::default()).unwrap();
    let config = edkd_teacher::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = rt.block_on(edkd_teacher::start(teacher, config)).unwrap();
    let mut src = remote(&server.addr.to_string()).unwrap();
    assert!(!src.accepts_images());
    let e = src.require_images("the data").unwrap_err().to_string();
    assert!(
        e.contains("teacher: ") && e.contains("reads no images") && e.contains("the data"),
        "{e}"
    );
    let rows: Vec<Row> = vec![
        (vec![1, 5, 7], vec![9, 10], None),
        (vec![1, 12, 13], vec![14, 15], Some(png(5))),
    ];
    let e = src.score(&batch(&rows)).err().unwrap().to_string();
    assert!(
        e.contains("teacher: ") && e.contains("reads no images") && e.contains("`row1`"),
        "{e}"
    );
    // Text rows still score.
    src.score(&batch(&rows[..1])).unwrap();
    rt.block_on(server.shutdown()).unwrap();
}
