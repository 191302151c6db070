//! Interop with pyarrow: pyarrow reads every data and cache shard we write (checked by a
//! committed Python script against values computed here), Pillow decodes the image column
//! to the same pixels as edkd, and we ingest Parquet written by pyarrow (also with images as
//! bytes, paths and Hugging Face image structs).

mod common;

use std::path::{Path, PathBuf};

use edkd_data::cache::{CacheEntry, CacheMeta, CacheWriter};
use edkd_data::images::encode_jpeg;
use edkd_data::ingest::TextSpec;
use edkd_data::manifest::{TRAIN, VALIDATION};
use edkd_data::prepare::prepare;
use edkd_data::synth::Split;
use edkd_data::synth_image::{
    IMAGE_MIX, ImageSynthConfig, generate_images, write_jsonl_with_images,
};
use edkd_data::tokenizer::{Tokenizer, sha256_hex};
use edkd_data::{Dataset, OpenOptions};
use serde_json::json;

#[test]
fn pyarrow_reads_data_and_cache_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = common::tokenizer(tmp.path());
    let tok = Tokenizer::load(&tok_path).unwrap();
    let input = common::synth_jsonl(&tmp.path().join("a.jsonl"), 120, 8);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&input], &tok_path, &out);
    cfg.val_fraction = Some(0.25);
    cfg.keep_text = true;
    prepare(&cfg).unwrap();

    // Expected rows per split: ids from the dataset, token ids from the tokenizer itself.
    let source = edkd_data::synth::generate("mix", edkd_data::synth::Split::Train, 8, 120).unwrap();
    let mut splits = serde_json::Map::new();
    for split in [TRAIN, VALIDATION] {
        let ds = Dataset::open(&out, &OpenOptions::new(split)).unwrap();
        let rows: Vec<_> = (0..ds.len())
            .map(|i| {
                let id = ds.example(i).id;
                let e = source.iter().find(|e| e.id == id).unwrap();
                json!({
                    "id": e.id, "task": e.task,
                    "input_ids": tok.encode(&e.input).unwrap(),
                    "target_ids": tok.encode(&e.target).unwrap(),
                })
            })
            .collect();
        splits.insert(split.into(), rows.into());
    }

    let cache_dir = tmp.path().join("cache");
    let meta = CacheMeta::new("test/teacher", &tok.sha256, 3, 1.0);
    let mut w = CacheWriter::open(&cache_dir, meta.clone(), 7).unwrap();
    let mut cache_rows = Vec::new();
    for i in 0..20 {
        let (id, ids, lps, tail, gold) = common::fake_teacher(i, 1 + i % 5, 3);
        w.push(&CacheEntry {
            id: &id,
            topk_ids: &ids,
            topk_logprobs: &lps,
            tail_logmass: &tail,
            gold_logprob: &gold,
        })
        .unwrap();
        cache_rows.push(json!({"id": id, "topk_ids": ids, "topk_logprobs": lps, "tail_logmass": tail, "gold_logprob": gold}));
    }
    w.finish().unwrap();

    let spec = json!({
        "dataset": {"dir": out, "manifest": out.join("manifest.json"), "splits": splits},
        "cache": {"dir": cache_dir, "meta": meta, "rows": cache_rows},
    });
    let spec_path = tmp.path().join("expect.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let stdout = common::run_python("check_arrow.py", &[spec_path.to_str().unwrap()]);
    assert!(
        stdout.contains("ok: 120 examples, 20 cache rows"),
        "{stdout}"
    );
}

#[test]
fn parquet_from_pyarrow_is_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = common::tokenizer(tmp.path());
    let tok = Tokenizer::load(&tok_path).unwrap();
    let parquet = tmp.path().join("hf.parquet");
    common::run_python("write_parquet.py", &[parquet.to_str().unwrap()]);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&parquet], &tok_path, &out);
    cfg.fields.input = TextSpec::template("{context}\nQuestion: {question}").unwrap();
    cfg.fields.target = TextSpec::Field("answer".into());
    cfg.fields.id_field = "uid".into();
    prepare(&cfg).unwrap();
    let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
    assert_eq!(ds.len(), 40);
    for i in 0..40u64 {
        let e = ds.example(i);
        assert_eq!(e.id, format!("pq-{i}"));
        assert_eq!(tok.decode(e.target_ids).unwrap(), i.to_string());
        assert_eq!(
            tok.decode(e.input_ids).unwrap(),
            format!("Inventory:\nitem {i}: red box in the attic\nQuestion: what is item {i}?")
        );
    }
    // A missing column is named, with the row.
    cfg.fields.target = TextSpec::Field("nope".into());
    cfg.out = tmp.path().join("ds2");
    let err = prepare(&cfg).unwrap_err().to_string();
    assert!(err.contains("hf.parquet:1: missing field `nope`"), "{err}");
}

/// Image examples as JSONL with PNG files, plus one row without an image and one with a
/// JPEG file; returns the JSONL path and each row's image file (`None`: no image).
fn image_inputs(dir: &Path, n: usize) -> (PathBuf, Vec<(String, Option<PathBuf>)>) {
    let cfg = ImageSynthConfig::new(IMAGE_MIX, Split::Train, 4, n);
    let examples = generate_images(&cfg).unwrap();
    let jsonl = dir.join("img.jsonl");
    write_jsonl_with_images(&jsonl, &examples).unwrap();
    let jpeg = dir.join("photo.jpg");
    std::fs::write(&jpeg, encode_jpeg(&examples[0].scene.render(), 85)).unwrap();
    let mut text = std::fs::read_to_string(&jsonl).unwrap();
    for line in [
        json!({"id": "no-image", "input": "Question: none?", "target": "none", "image": null}),
        json!({"id": "jpeg", "input": "<image>\nQuestion: jpeg?", "target": "yes", "image": "photo.jpg"}),
    ] {
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(&jsonl, text).unwrap();
    let mut files: Vec<(String, Option<PathBuf>)> = examples
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                Some(dir.join(format!("img-images/{}.png", e.id))),
            )
        })
        .collect();
    files.push(("no-image".into(), None));
    files.push(("jpeg".into(), Some(jpeg)));
    (jsonl, files)
}

#[test]
fn pyarrow_and_pillow_read_the_image_column() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::image_tokenizer(tmp.path());
    let (jsonl, files) = image_inputs(tmp.path(), 30);
    let out = tmp.path().join("ds");
    let mut cfg = common::config(&[&jsonl], &tok, &out);
    cfg.fields.image_field = Some("image".into());
    cfg.val_fraction = Some(0.3);
    cfg.shard_rows = 8;
    prepare(&cfg).unwrap();

    let mut rows = serde_json::Map::new();
    for (id, file) in &files {
        let want = file.as_ref().map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let (format, img) = edkd_data::images::decode(&bytes).unwrap();
            json!({
                "sha256": sha256_hex(&bytes),
                "format": format.name(),
                "width": img.width(), "height": img.height(),
                "pixels_sha256": sha256_hex(img.as_raw()),
            })
        });
        rows.insert(id.clone(), want.unwrap_or(serde_json::Value::Null));
    }
    let spec = json!({"dir": out, "image_token_id": 4, "rows": rows});
    let spec_path = tmp.path().join("expect.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let stdout = common::run_python("check_images.py", &[spec_path.to_str().unwrap()]);
    assert!(
        stdout.contains("ok: 32 rows, 30 PNGs decoded alike, 1 without image"),
        "{stdout}"
    );
}

#[test]
fn parquet_image_bytes_paths_and_hf_structs_are_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = common::image_tokenizer(tmp.path());
    let (_, files) = image_inputs(tmp.path(), 12);
    let write_parquet = |name: &str, files: &[(String, Option<PathBuf>)]| -> PathBuf {
        let rows: Vec<_> = files
            .iter()
            .map(|(id, f)| json!({"id": id, "input": "<image>\nQuestion: what?", "target": "x", "image": f}))
            .collect();
        let rows_path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&rows_path, serde_json::to_vec(&rows).unwrap()).unwrap();
        let parquet = tmp.path().join(format!("{name}.parquet"));
        common::run_python(
            "write_image_parquet.py",
            &[rows_path.to_str().unwrap(), parquet.to_str().unwrap()],
        );
        parquet
    };
    let parquet = write_parquet("img", &files);
    for field in ["image_bytes", "image_path", "image_struct"] {
        let out = tmp.path().join(format!("ds-{field}"));
        let mut cfg = common::config(&[&parquet], &tok, &out);
        cfg.fields.image_field = Some(field.into());
        prepare(&cfg).unwrap();
        let ds = Dataset::open(&out, &OpenOptions::new(TRAIN)).unwrap();
        assert_eq!(ds.len(), files.len() as u64);
        for (i, (id, file)) in files.iter().enumerate() {
            let e = ds.example(i as u64);
            assert_eq!(e.id, id);
            let want = file.as_ref().map(|f| std::fs::read(f).unwrap());
            assert_eq!(e.image, want.as_deref(), "{field}: {id}");
        }
        let stats = ds.manifest.splits[TRAIN].images.clone().unwrap();
        assert_eq!((stats.count, stats.png, stats.jpeg), (13, 12, 1), "{field}");
    }
    // A row whose bytes are not an image is named by its row number.
    let mut bad = files.clone();
    let text = tmp.path().join("readme.txt");
    std::fs::write(&text, "not an image").unwrap();
    bad[5].1 = Some(text);
    let parquet = write_parquet("bad", &bad);
    let mut cfg = common::config(&[&parquet], &tok, &tmp.path().join("ds-bad"));
    cfg.fields.image_field = Some("image_bytes".into());
    let err = prepare(&cfg).unwrap_err().to_string();
    let expected = format!(
        "bad.parquet:6: example `{}`, image field `image_bytes`: not a PNG or JPEG image",
        bad[5].0
    );
    assert!(err.contains(&expected), "{err}");
}
