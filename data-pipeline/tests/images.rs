//! The image column end to end: prepare from JSONL with image paths and inline bytes, read
//! back identical bytes and pixels through shards, the reader and batches; text-only data
//! unchanged byte for byte; bad images named by file, line, example and field.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use edkd_data::images::{IMAGE_PLACEHOLDER, RgbImage, decode_rgb8, encode_jpeg, encode_png};
use edkd_data::manifest::{TRAIN, VALIDATION};
use edkd_data::prepare::prepare;
use edkd_data::shard::{Columns, Example, write_shard};
use edkd_data::synth::Split;
use edkd_data::synth_image::{
    IMAGE_MIX, ImageExample, ImageSynthConfig, generate_images, write_jsonl_with_images,
};
use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};
use serde_json::json;

/// Examples of the image tasks, written as JSONL with PNG paths in `dir`.
fn image_jsonl(dir: &Path, name: &str, n: usize) -> (PathBuf, Vec<ImageExample>) {
    let examples = generate_images(&ImageSynthConfig::new(IMAGE_MIX, Split::Train, 5, n)).unwrap();
    let path = dir.join(name);
    write_jsonl_with_images(&path, &examples).unwrap();
    (path, examples)
}

#[test]
fn image_shards_round_trip_bytes_and_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::image_tokenizer(tmp.path());
    let (jsonl, examples) = image_jsonl(tmp.path(), "a.jsonl", 60);
    // Two more rows: one without an image (null), one with a JPEG inline as base64.
    let jpeg = encode_jpeg(&examples[0].scene.render(), 90);
    let extra = [
        json!({"id": "no-image", "input": "Question: what is missing?", "target": "nothing", "image": null}),
        json!({"id": "inline-jpeg", "input": "<image>\nQuestion: inline?", "target": "yes",
               "image": {"bytes": base64(&jpeg)}}),
    ];
    append_lines(&jsonl, &extra);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&jsonl], &tok, &out);
    cfg.fields.image_field = Some("image".into());
    cfg.shard_rows = 16;
    cfg.val_fraction = Some(0.2);
    let summary = prepare(&cfg).unwrap();

    let images = summary
        .manifest
        .images
        .as_ref()
        .expect("manifest records images");
    assert_eq!(images.placeholder, IMAGE_PLACEHOLDER);
    assert_eq!(images.image_token_id, Some(4));
    let count = |s: &str| summary.manifest.splits[s].images.as_ref().unwrap().clone();
    let (train, val) = (count(TRAIN), count(VALIDATION));
    assert_eq!(train.count + val.count, 61);
    assert_eq!((train.jpeg + val.jpeg, train.png + val.png), (1, 60));
    assert_eq!(train.max_width.max(val.max_width), 64);

    let by_id: HashMap<&str, &ImageExample> = examples.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut seen = 0;
    for split in [TRAIN, VALIDATION] {
        let ds = Dataset::open(&out, &OpenOptions::new(split)).unwrap();
        assert!(ds.has_images());
        for i in 0..ds.len() {
            let e = ds.example(i);
            seen += 1;
            match e.id {
                "no-image" => assert_eq!(e.image, None),
                "inline-jpeg" => assert_eq!(e.image, Some(jpeg.as_slice())),
                id => {
                    let want = by_id[id];
                    let file =
                        std::fs::read(tmp.path().join(format!("a-images/{id}.png"))).unwrap();
                    assert_eq!(e.image, Some(file.as_slice()), "{id}: stored bytes differ");
                    assert_eq!(file, want.png);
                    assert_eq!(
                        decode_rgb8(e.image.unwrap(), id).unwrap(),
                        want.scene.render()
                    );
                    // The placeholder is one token, first in the input.
                    assert_eq!(e.input_ids[0], 4, "{id}");
                    assert_eq!(e.input_ids.iter().filter(|&&t| t == 4).count(), 1, "{id}");
                }
            }
        }
    }
    assert_eq!(seen, 62);

    // Batches carry each row's bytes next to its id, and decode to the scene's pixels.
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    let mut reader = Reader::new(
        ds,
        ReaderConfig {
            max_tokens: 200,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut rows = 0;
    while let Some(batch) = reader.try_next_batch().unwrap() {
        let bytes = batch
            .images
            .as_ref()
            .expect("image dataset batches have images");
        assert_eq!(bytes.len(), batch.rows);
        let decoded = batch.decode_images().unwrap();
        for (r, id) in batch.ids.iter().enumerate() {
            rows += 1;
            match by_id.get(id.as_str()) {
                Some(e) => {
                    assert_eq!(bytes[r].as_deref(), Some(e.png.as_slice()));
                    assert_eq!(decoded[r].as_ref(), Some(&e.scene.render()));
                }
                None if id == "no-image" => assert!(decoded[r].is_none()),
                None => assert_eq!(bytes[r].as_deref(), Some(jpeg.as_slice())),
            }
        }
    }
    assert_eq!(rows as u64, summary.manifest.splits[TRAIN].rows);
}

fn append_lines(path: &Path, lines: &[serde_json::Value]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Standard padded base64, written out here so the test does not share the crate's decoder.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| acc << 8 | b as u32) << (8 * (3 - chunk.len()));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn text_only_data_is_byte_identical_to_before_images() {
    // sha256 of shards written before the image column existed (commit 9d2ca85).
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::tokenizer(tmp.path());
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 90, 3);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&input], &tok, &out);
    cfg.val_fraction = Some(0.2);
    cfg.keep_text = true;
    prepare(&cfg).unwrap();
    let manifest = edkd_data::Manifest::load(&out).unwrap();
    let shards: Vec<(&str, u64, &str)> = manifest
        .splits
        .values()
        .flat_map(|s| &s.shards)
        .map(|s| (s.file.as_str(), s.rows, s.sha256.as_str()))
        .collect();
    assert_eq!(
        shards,
        vec![
            (
                "train/shard-00000.arrow",
                64,
                "b8e22846560130d449a254427561219054a112544aa0be399bddb751df83c211"
            ),
            (
                "train/shard-00001.arrow",
                11,
                "964d395eff1d83b4acdd4de96d496056ffc74de7bace930d0ebfaa4161438471"
            ),
            (
                "validation/shard-00000.arrow",
                15,
                "1dab4347dce7e8b0a26368b2fb6ba93016cd9eb143b1fa512281c1d0b6590b9c"
            ),
        ]
    );
    let json = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        !json.contains("image"),
        "a text-only manifest mentions images:\n{json}"
    );
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    assert!(!ds.has_images());
    let mut reader = Reader::new(ds, ReaderConfig::default(), None).unwrap();
    let batch = reader.try_next_batch().unwrap().unwrap();
    assert_eq!(batch.images, None);
    assert_eq!(batch.decode_images().unwrap(), vec![None; batch.rows]);

    let rows: Vec<Example> = (0..3)
        .map(|i| Example {
            id: format!("e{i}"),
            task: "t".into(),
            input_ids: vec![1, 2, i],
            target_ids: vec![i],
            text: None,
            image: None,
        })
        .collect();
    let path = tmp.path().join("s.arrow");
    write_shard(&path, &rows, Columns::default()).unwrap();
    assert_eq!(
        edkd_data::fsutil::sha256_file(&path).unwrap(),
        "a71687871ae87b392a53673f75c745dd13b89f975a26ccb2f162b084b58b0a41"
    );
}

#[test]
fn a_shard_without_the_image_column_is_refused_for_an_image_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::image_tokenizer(tmp.path());
    let (jsonl, _) = image_jsonl(tmp.path(), "a.jsonl", 10);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&jsonl], &tok, &out);
    cfg.fields.image_field = Some("image".into());
    prepare(&cfg).unwrap();
    // Replace the shard with a text-only one of the same rows (and fix its checksum).
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    let rows: Vec<Example> = (0..ds.len())
        .map(|i| {
            let e = ds.example(i);
            Example {
                id: e.id.into(),
                task: e.task.into(),
                input_ids: e.input_ids.to_vec(),
                target_ids: e.target_ids.to_vec(),
                text: None,
                image: None,
            }
        })
        .collect();
    drop(ds);
    let shard = out.join("train/shard-00000.arrow");
    let replaced = tmp.path().join("text-only.arrow");
    write_shard(&replaced, &rows, Columns::default()).unwrap();
    std::fs::rename(&replaced, &shard).unwrap();
    let mut options = OpenOptions::new(TRAIN);
    options.verify = edkd_data::Verify::RowCounts;
    let err = Dataset::open(&out, &options).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000.arrow: bad schema: the shard lacks an `image` column"),
        "{err}"
    );
}

/// Runs prepare on `lines` (JSONL, image field `image`) and returns its error message.
fn prepare_error(tmp: &Path, tok: &Path, lines: &[serde_json::Value]) -> String {
    let jsonl = tmp.join("bad.jsonl");
    std::fs::write(&jsonl, "").unwrap();
    append_lines(&jsonl, lines);
    let out = tmp.join("ds");
    let mut cfg = common::config(&[&jsonl], tok, &out);
    cfg.fields.image_field = Some("image".into());
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(!out.exists(), "a failed prepare left {}", out.display());
    err
}

#[test]
fn bad_images_are_errors_naming_line_example_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tok = common::image_tokenizer(dir);
    let good = encode_png(&RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([x as u8 * 16, y as u8 * 16, 7])
    }));
    std::fs::write(dir.join("ok.png"), &good).unwrap();
    std::fs::write(dir.join("notes.txt"), "just text").unwrap();
    std::fs::write(dir.join("anim.png"), b"GIF89a\x01\x00\x01\x00").unwrap();
    std::fs::write(dir.join("wide.png"), encode_png(&RgbImage::new(9000, 2))).unwrap();
    std::fs::write(dir.join("cut.png"), &good[..good.len() / 2]).unwrap();
    let row = |id: &str, image: serde_json::Value| json!({"id": id, "input": "<image> what?", "target": "x", "image": image});
    let cases = [
        (json!("missing.png"), "cannot read"),
        (
            json!("notes.txt"),
            "not a PNG or JPEG image (first bytes 6a 75 73 74",
        ),
        (
            json!("anim.png"),
            "GIF images are not supported (PNG or JPEG only)",
        ),
        (
            json!("wide.png"),
            "9000x2 px is over the limit of 8192 px per side",
        ),
        (json!("cut.png"), "PNG does not decode"),
        (json!({"bytes": "%%%"}), "`bytes` is not valid base64"),
        (json!(7), "found a number"),
    ];
    for (value, problem) in cases {
        let lines = [row("fine", json!("ok.png")), row("broken", value.clone())];
        let err = prepare_error(dir, &tok, &lines);
        assert!(
            err.contains("bad.jsonl:2: example `broken`, image field `image`: ")
                && err.contains(problem),
            "{value}: {err}"
        );
    }
    // An image file over the record limit is refused before it is read.
    std::fs::write(dir.join("big.png"), vec![0u8; 5000]).unwrap();
    let jsonl = dir.join("big.jsonl");
    std::fs::write(&jsonl, row("big", json!("big.png")).to_string() + "\n").unwrap();
    let mut cfg = common::config(&[&jsonl], &tok, &dir.join("ds-big"));
    cfg.fields.image_field = Some("image".into());
    cfg.max_record_bytes = 1000;
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("big.jsonl:1: example `big`, image field `image`: 5000 bytes, over the record limit of 1000 bytes"),
        "{err}"
    );
    // A field name that finds no image at all is a mistake, not a text-only dataset.
    cfg.fields.image_field = Some("picture".into());
    cfg.max_record_bytes = edkd_data::ingest::DEFAULT_MAX_RECORD_BYTES;
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("--image-field `picture`: no example has an image"),
        "{err}"
    );
    cfg.fields.image_field = Some("input".into());
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("--image-field `input` is also a text, id or task field"),
        "{err}"
    );
}
