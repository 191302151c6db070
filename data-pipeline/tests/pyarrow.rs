//! Interop with pyarrow: pyarrow reads every data and cache shard we write (checked by a
//! committed Python script against values computed here), and we ingest Parquet written by
//! pyarrow.

mod common;

use edkd_data::cache::{CacheEntry, CacheMeta, CacheWriter};
use edkd_data::ingest::TextSpec;
use edkd_data::manifest::{TRAIN, VALIDATION};
use edkd_data::prepare::prepare;
use edkd_data::tokenizer::Tokenizer;
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
