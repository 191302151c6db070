//! `annotate`: scores a prepared dataset into the teacher-logit cache, resumably.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edkd_data::manifest::Verify;
use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};
use edkd_data::{CacheReader, Dataset, OpenOptions};
use edkd_teacher::{AnnotateConfig, ServerConfig, annotate};
use tonic::Code;

const EXAMPLES: usize = 30;

/// Prepares the synthetic split with inputs cut to `max_input` tokens (keeping the end).
fn prepare(dir: &Path, max_input: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let jsonl = dir.join("train.jsonl");
    synth::write_jsonl(
        &jsonl,
        &synth::generate("mix", Split::Train, 5, EXAMPLES).unwrap(),
    )
    .unwrap();
    let out = dir.join("data");
    let config = PrepareConfig {
        max_input_tokens: Some(max_input),
        max_target_tokens: Some(20),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 16,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(
            &[&jsonl],
            &fixture("llama_linear").join("tokenizer.json"),
            &out,
        )
    };
    edkd_data::prepare::prepare(&config).unwrap();
    out
}

fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_writes_the_cache_and_resumes_without_rescoring() {
    let tmp = tempfile::tempdir().unwrap();
    // The fixture teacher has 64 positions: input + target + eos must fit.
    let data = prepare(tmp.path(), 40);
    let cache = tmp.path().join("cache");
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let mut config = AnnotateConfig {
        data: data.clone(),
        split: "train".into(),
        out: cache.clone(),
        top_k: 6,
        temperature: 2.0,
        sequences_per_request: 4,
        in_flight: 3,
        shard_rows: 5,
        limit: Some(12),
        progress: false,
        view: std::sync::Arc::new(edkd_models::chat::TeacherView::raw()),
        packing: None,
        zstd_level: None,
        calibration_examples: edkd_teacher::annotate::CALIBRATION_EXAMPLES,
    };
    // An interrupted run: 12 examples, two full shards and a short last one.
    let first = annotate(&client, &config).await.unwrap();
    assert_eq!(
        (first.examples, first.skipped, first.scored),
        (EXAMPLES, 0, 12)
    );
    assert_eq!(first.shards, 3);
    let before = shard_bytes(&cache);
    assert_eq!(before.len(), 3);

    config.limit = None;
    let second = annotate(&client, &config).await.unwrap();
    assert_eq!((second.skipped, second.scored), (12, EXAMPLES - 12));
    // Finished shards were not rewritten.
    let after = shard_bytes(&cache);
    assert_eq!(&after[..3], &before[..]);
    // A third run has nothing left to do.
    let third = annotate(&client, &config).await.unwrap();
    assert_eq!((third.skipped, third.scored), (EXAMPLES, 0));

    let reader = CacheReader::open(&cache).unwrap();
    assert_eq!(reader.len(), EXAMPLES);
    assert_eq!(reader.meta().k, 6);
    assert_eq!(reader.meta().teacher_model, "llama_linear");
    let mut options = OpenOptions::new("train");
    options.verify = Verify::RowCounts;
    let ds = Dataset::open(&data, &options).unwrap();
    let eos = ds.manifest.tokenizer.special_ids.eos;
    reader
        .check_tokenizer(&ds.manifest.tokenizer.sha256)
        .unwrap();
    let teacher = load("llama_linear");
    for i in (0..ds.len()).step_by(7) {
        let e = ds.example(i);
        let row = reader.get(e.id).unwrap().expect("every example is cached");
        let entry = row.entry();
        let mut target = e.target_ids.to_vec();
        target.push(eos);
        assert_eq!(entry.positions(), target.len());
        let scores = edkd_teacher::wire::Scores {
            id: e.id.into(),
            positions: entry.positions(),
            k: 6,
            topk_ids: entry.topk_ids.to_vec(),
            topk_logprobs: entry.topk_logprobs.to_vec(),
            tail_logmass: entry.tail_logmass.to_vec(),
            gold_logprob: entry.gold_logprob.to_vec(),
        };
        let r = reference(&teacher, e.input_ids, &target, 2.0);
        assert_matches(&scores, &r, &target, 6, 1e-4);
    }
    server.shutdown().await.unwrap();
}

/// 40 examples, a served tiny teacher, and their f32 cache in `TMP/f32`: what the packed
/// caches are compared with.
async fn with_f32_cache(
    tmp: &Path,
) -> (
    PathBuf,
    edkd_teacher::RunningServer,
    edkd_teacher::Client,
    PathBuf,
) {
    let data = prepare(tmp, 40);
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let plain = tmp.join("f32");
    annotate(&client, &config(&data, &plain)).await.unwrap();
    (data, server, client, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_cache_holds_the_f32_cache_within_the_packing_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, server, client, plain) = with_f32_cache(tmp.path()).await;
    let packing = edkd_data::packing::Packing::new(edkd_data::packing::IdCoding::Delta, 8);
    let packed = tmp.path().join("packed");
    let mut cfg = config(&data, &packed);
    cfg.packing = Some(packing);
    cfg.zstd_level = Some(3);
    annotate(&client, &cfg).await.unwrap();
    let (a, b) = (
        CacheReader::open(&plain).unwrap(),
        CacheReader::open(&packed).unwrap(),
    );
    assert_eq!(b.meta().format_version, 2);
    assert_eq!(b.meta().packing.as_deref(), Some("delta-q8"));
    assert_eq!(b.meta().vocab_size, Some(160));
    // k = 4 on a 160-token vocabulary: 40 B a position in f32; packed rows carry f16
    // fields and a zstd frame each, so the saving is smaller than at a real k.
    let (fa, fb) = (a.stats().unwrap(), b.stats().unwrap());
    assert!(
        fb.stored_per_position() * 1.5 < fa.stored_per_position(),
        "{fa:?} {fb:?}"
    );
    assert_holds_within(&a, &b, packing, &open_train(&data));
    // zstd without a packing is refused before anything is scored.
    let mut bad = config(&data, &tmp.path().join("bad"));
    bad.zstd_level = Some(3);
    let e = annotate(&client, &bad).await.unwrap_err().to_string();
    assert!(e.contains("zstd applies to packed caches"), "{e}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freq_cache_calibrates_its_id_order_and_resumes_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, server, client, plain) = with_f32_cache(tmp.path()).await;
    let packing = edkd_data::packing::Packing::from_name("freq-e6").unwrap();
    let out = tmp.path().join("freq");
    let mut cfg = config(&data, &out);
    cfg.packing = Some(packing);
    cfg.calibration_examples = 12;
    cfg.limit = Some(22);
    let first = annotate(&client, &cfg).await.unwrap();
    assert_eq!(first.scored, 22);
    let order = CacheReader::open(&out).unwrap().meta().id_order.clone();
    let leading = order.expect("a freq cache keeps its id order");
    assert!(!leading.is_empty() && leading.len() <= 160, "{leading:?}");
    // A second run resumes with the shards' order instead of calibrating again.
    cfg.limit = None;
    let second = annotate(&client, &cfg).await.unwrap();
    let n = open_train(&data).len() as usize;
    assert_eq!((second.skipped, second.scored), (22, n - 22), "{second:?}");
    let b = CacheReader::open(&out).unwrap();
    assert_eq!(
        b.meta().id_order.as_ref(),
        Some(&leading),
        "resumed with its order"
    );
    assert_eq!(b.verify().unwrap(), n);
    assert!(
        b.describe(1).unwrap().contains("id order of"),
        "describe names the order"
    );
    let a = CacheReader::open(&plain).unwrap();
    assert_holds_within(&a, &b, packing, &open_train(&data));
    server.shutdown().await.unwrap();
}

/// Every row of the packed cache `b` holds the f32 cache `a`'s ids, with log-probs within
/// the packing's bound.
fn assert_holds_within(
    a: &CacheReader,
    b: &CacheReader,
    packing: edkd_data::packing::Packing,
    ds: &Dataset,
) {
    for i in 0..ds.len() {
        let id = ds.example(i).id;
        let (ra, rb) = (a.get(id).unwrap().unwrap(), b.get(id).unwrap().unwrap());
        let (x, y) = (ra.entry(), rb.entry());
        assert_eq!(x.positions(), y.positions());
        for p in 0..x.positions() {
            let top = half::f16::from_f32(x.topk_logprobs[p * 4]).to_f32();
            for j in 0..4 {
                let at = (0..4)
                    .find(|&c| y.topk_ids[p * 4 + c] == x.topk_ids[p * 4 + j])
                    .unwrap();
                let r = |lp: f32| ((lp - top).min(0.0) / 3.0).exp();
                let err = (r(y.topk_logprobs[p * 4 + at]) - r(x.topk_logprobs[p * 4 + j])).abs();
                assert!(
                    err <= packing.r_error_bound() + 1e-6,
                    "{id} p {p} j {j}: {err}"
                );
            }
        }
    }
}

fn config(data: &Path, out: &Path) -> AnnotateConfig {
    AnnotateConfig {
        data: data.to_owned(),
        split: "train".into(),
        out: out.to_owned(),
        top_k: 4,
        temperature: 1.0,
        sequences_per_request: 4,
        in_flight: 3,
        shard_rows: 5,
        limit: None,
        progress: false,
        view: std::sync::Arc::new(edkd_models::chat::TeacherView::raw()),
        packing: None,
        zstd_level: None,
        calibration_examples: edkd_teacher::annotate::CALIBRATION_EXAMPLES,
    }
}

fn open_train(data: &Path) -> Dataset {
    let mut options = OpenOptions::new("train");
    options.verify = Verify::RowCounts;
    Dataset::open(data, &options).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_the_teacher_cannot_score_are_named_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);

    // Inputs cut to nothing: refused before anything is sent, naming the examples.
    let data = prepare(&tmp.path().join("empty"), 0);
    let ds = open_train(&data);
    let cache = tmp.path().join("cache-empty");
    let err = annotate(&client, &config(&data, &cache)).await.unwrap_err();
    let message = err.to_string();
    let first = ds.example(0).id;
    for expected in [
        format!("split `train`: {EXAMPLES} example(s) with an empty input, first `{first}`, "),
        "prompt_ids must hold at least one token".to_string(),
        "nothing was scored".to_string(),
    ] {
        assert!(
            message.contains(&expected),
            "`{message}` lacks `{expected}`"
        );
    }
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(server.metrics.requests.get(), 0);
    assert!(!cache.exists() || shard_bytes(&cache).is_empty());

    // An example over the teacher's 64 positions: the server's per-sequence error is reported
    // with the example's id.
    let data = prepare(&tmp.path().join("long"), 60);
    let ds = open_train(&data);
    let too_long = (0..ds.len())
        .find(|&i| {
            let (n, t) = ds.lengths(i);
            n + t + 1 > 64
        })
        .expect("an example over 64 positions");
    let err = annotate(&client, &config(&data, &tmp.path().join("cache-long")))
        .await
        .unwrap_err();
    let message = err.to_string();
    let expected = format!("example `{}`: rpc failed: ", ds.example(too_long).id);
    assert!(
        message.starts_with(&expected),
        "`{message}` lacks `{expected}`"
    );
    assert!(
        message.contains("over the teacher's max positions 64"),
        "{message}"
    );
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await.unwrap();
}

/// Image-to-text examples (PNG paths in JSONL, one text-only row among them) prepared with
/// an image column and a tokenizer whose `<image>` is one token; returns the data folder,
/// the tokenizer and the placeholder's id.
fn prepare_images(dir: &Path, n: usize) -> (PathBuf, PathBuf, u32) {
    use edkd_data::images::IMAGE_PLACEHOLDER;
    use edkd_data::synth_image::{
        IMAGE_MIX, ImageSynthConfig, generate_images, write_jsonl_with_images,
    };
    std::fs::create_dir_all(dir).unwrap();
    let examples = generate_images(&ImageSynthConfig::new(IMAGE_MIX, Split::Train, 3, n)).unwrap();
    let jsonl = dir.join("images.jsonl");
    write_jsonl_with_images(&jsonl, &examples).unwrap();
    let mut lines = std::fs::read_to_string(&jsonl).unwrap();
    lines.push_str(
        &serde_json::json!({"id": "text-only", "input": "Question: what is red?",
                            "target": "a square", "image": null})
        .to_string(),
    );
    lines.push('\n');
    std::fs::write(&jsonl, lines).unwrap();
    let tokenizer = dir.join("tokenizer.json");
    let texts = examples
        .iter()
        .flat_map(|e| [e.input.clone(), e.target.clone()])
        .collect();
    edkd_data::tokenizer::train_bpe_with_specials_to_file(
        texts,
        300,
        2,
        &[IMAGE_PLACEHOLDER],
        &tokenizer,
    )
    .unwrap();
    let out = dir.join("data");
    let mut config = PrepareConfig {
        shard_rows: 8,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(&[&jsonl], &tokenizer, &out)
    };
    config.fields.image_field = Some("image".into());
    let summary = edkd_data::prepare::prepare(&config).unwrap();
    let image_token = summary.manifest.images.unwrap().image_token_id.unwrap();
    (out, tokenizer, image_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_sends_each_examples_image_to_a_vision_language_teacher() {
    use common::vision::{load_twin, save_twin, vision_reference, vision_server};
    const N: usize = 14;
    let tmp = tempfile::tempdir().unwrap();
    let (data, tokenizer, image_token) = prepare_images(tmp.path(), N);
    let twin_dir = tmp.path().join("twin");
    save_twin(&twin_dir, image_token, Some(&tokenizer), 8);
    let twin = load_twin(&twin_dir);
    let vl = vision_server(&twin_dir, ServerConfig::default()).await;
    let client = client(&vl);
    let cache = tmp.path().join("cache");
    let cfg = config(&data, &cache);
    let summary = annotate(&client, &cfg).await.unwrap();
    assert_eq!((summary.examples, summary.scored), (N + 1, N + 1));

    // Every row equals the twin's own forward pass over the example and its image.
    let reader = CacheReader::open(&cache).unwrap();
    let ds = open_train(&data);
    assert!(ds.has_images());
    let eos = ds.manifest.tokenizer.special_ids.eos;
    let mut with_image = 0;
    for i in 0..ds.len() {
        let e = ds.example(i);
        let row = reader.get(e.id).unwrap().expect("every example is cached");
        let entry = row.entry();
        let mut target = e.target_ids.to_vec();
        target.push(eos);
        let scores = edkd_teacher::wire::Scores {
            id: e.id.into(),
            positions: entry.positions(),
            k: cfg.top_k,
            topk_ids: entry.topk_ids.to_vec(),
            topk_logprobs: entry.topk_logprobs.to_vec(),
            tail_logmass: entry.tail_logmass.to_vec(),
            gold_logprob: entry.gold_logprob.to_vec(),
        };
        let images: Vec<bytes::Bytes> = e
            .image
            .map(bytes::Bytes::copy_from_slice)
            .into_iter()
            .collect();
        with_image += images.len();
        let r = vision_reference(&twin, e.input_ids, &target, &images, 1.0);
        assert_matches(&scores, &r, &target, cfg.top_k, 1e-5);
    }
    assert_eq!(with_image, N);
    assert!(
        vl.metrics
            .render()
            .contains(&format!("edkd_teacher_scored_images_total {N}")),
        "every image was read"
    );

    // A text teacher is refused before anything is scored, naming why.
    let text_server = server("llama_linear", ServerConfig::default()).await;
    let e = annotate(
        &common::client(&text_server),
        &config(&data, &tmp.path().join("x")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("reads no images") && e.contains("image column"),
        "{e}"
    );
    text_server.shutdown().await.unwrap();
    vl.shutdown().await.unwrap();
}
