//! A vision-language teacher over gRPC: a tiny random twin (`edkd_vision_decoder` folder)
//! served on loopback scores sequences with images exactly as its own forward pass reads
//! them at the merged target positions, batches image and text sequences together, and
//! refuses every bad image with INVALID_ARGUMENT naming the field; a text teacher refuses
//! images; clients that never send images see no change.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::vision::*;
use common::*;
use edkd_teacher::proto::{ScoreRequest, Sequence};
use edkd_teacher::wire::{Scores, decode_response};
use edkd_teacher::{Client, ClientConfig, Error, ServerConfig};
use tonic::Code;

/// Largest difference from the twin's own forward pass (f32 on the wire).
const TOL: f64 = 1e-5;
const K: u32 = 8;
const T: f32 = 1.3;

fn code_and_message(e: Error) -> (Code, String) {
    match e {
        Error::Rpc(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected an rpc status, got {other}"),
    }
}

fn no_retry_client(server: &edkd_teacher::RunningServer) -> Client {
    let mut config = ClientConfig::new(server.addr.to_string());
    config.timeout = Duration::from_secs(60);
    config.retries = 0;
    Client::connect(config).unwrap()
}

/// Text ids that are never the placeholder.
fn text(seed: u64, len: usize) -> Vec<u32> {
    tokens(seed, len, VL_VOCAB)
        .into_iter()
        .map(|t| if t == IMAGE_TOKEN { t + 1 } else { t })
        .collect()
}

/// Image sequences with the placeholder first, in the middle and last; a JPEG; text only.
fn mixed() -> Vec<Sequence> {
    vec![
        image_sequence(
            "png-middle",
            with_placeholder(text(1, 6), 2),
            text(2, 7),
            vec![png(10, 48, 40)],
        ),
        sequence("text", text(3, 9), text(4, 5)),
        image_sequence(
            "jpeg-first",
            with_placeholder(text(5, 3), 0),
            text(6, 4),
            vec![jpeg(11, 32, 64)],
        ),
        image_sequence(
            "png-last",
            with_placeholder(text(7, 4), 4),
            text(8, 6),
            vec![png(12, 33, 31)],
        ),
    ]
}

fn assert_reference(twin: &edkd_models::multimodal::VisionTwinModel, s: &Sequence, got: &Scores) {
    let r = vision_reference(twin, &s.prompt_ids, &s.target_ids, &s.images, f64::from(T));
    assert_matches(got, &r, &s.target_ids, K as usize, TOL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_sequences_score_as_the_twin_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    save_twin(dir.path(), IMAGE_TOKEN, None, 3);
    let twin = load_twin(dir.path());
    let server = vision_server(dir.path(), ServerConfig::default()).await;
    let client = client(&server);

    let info = client.info().await.unwrap();
    assert!(info.accepts_images);
    assert_eq!(info.image_token_id, IMAGE_TOKEN);
    assert_eq!(info.tokens_per_image as usize, TOKENS_PER_IMAGE);
    assert_eq!(info.vocab_size, VL_VOCAB);
    assert_eq!(info.architecture, "LlamaForCausalLM");
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_images_per_sequence, 1);
    assert_eq!(
        limits.max_image_bytes as usize,
        edkd_teacher::config::DEFAULT_MAX_IMAGE_BYTES
    );

    // One request mixing image and text sequences: each as the twin scores it alone.
    let seqs = mixed();
    let response = client.score(request(seqs.clone(), K, T)).await.unwrap();
    let got = decode_response(&response).unwrap();
    for (s, g) in seqs.iter().zip(&got) {
        assert_eq!(g.id, s.id);
        assert_reference(&twin, s, g);
    }

    // The same tokens with another image score differently, beyond the tolerance.
    let mut other = seqs[0].clone();
    other.images = vec![png(99, 48, 40)];
    let again = client
        .score(request(vec![other.clone()], K, T))
        .await
        .unwrap();
    let again = &decode_response(&again).unwrap()[0];
    assert_reference(&twin, &other, again);
    let moved = again
        .gold_logprob
        .iter()
        .zip(&got[0].gold_logprob)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    assert!(
        moved > 100.0 * TOL,
        "another image moved gold log-probs by {moved}"
    );

    let metrics = server.metrics.render();
    assert!(
        metrics.contains("edkd_teacher_scored_images_total 4"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_mixing_images_and_text_share_passes() {
    let dir = tempfile::tempdir().unwrap();
    save_twin(dir.path(), IMAGE_TOKEN, None, 4);
    let twin = load_twin(dir.path());
    let config = ServerConfig {
        max_wait: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = vision_server(dir.path(), config).await;
    let client = client(&server);
    let all = mixed();
    // Each request: one image sequence and one text sequence, or two of a kind.
    let requests: Vec<ScoreRequest> = [[0, 1], [2, 3], [1, 3], [0, 2]]
        .iter()
        .enumerate()
        .map(|(r, pair)| {
            let mut q = request(pair.iter().map(|&i| all[i].clone()).collect(), K, T);
            q.request_id = r as u64;
            q
        })
        .collect();
    let answers = client
        .score_all(requests.clone(), requests.len())
        .await
        .unwrap();
    for (q, a) in requests.iter().zip(&answers) {
        for (s, g) in q.sequences.iter().zip(decode_response(a).unwrap()) {
            assert_reference(&twin, s, &g);
        }
    }
    // The requests were scored together (fewer passes than requests).
    let passes = server.metrics.forward_seconds.get_sample_count();
    assert!(passes < requests.len() as u64, "{passes} passes");
    server.shutdown().await.unwrap();
}

/// A valid PNG's signature followed by bytes that are no PNG.
fn corrupt_png() -> Bytes {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend_from_slice(&[7; 64]);
    Bytes::from(b)
}

/// A one-colour PNG (a few bytes whatever its size).
fn blank_png(w: u32, h: u32) -> Bytes {
    let image = edkd_data::images::RgbImage::from_raw(w, h, vec![0; (w * h * 3) as usize]);
    Bytes::from(edkd_data::images::encode_png(&image.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_invalid_argument_naming_the_field() {
    const MAX_IMAGE_BYTES: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    save_twin(dir.path(), IMAGE_TOKEN, None, 5);
    let config = ServerConfig {
        max_image_bytes: MAX_IMAGE_BYTES,
        max_request_bytes: 64 << 10,
        ..ServerConfig::default()
    };
    let server = vision_server(dir.path(), config).await;
    let client = no_retry_client(&server);
    let good = || request(mixed()[..2].to_vec(), K, T);
    let truncated = png(13, 40, 40).slice(..60);
    type Mutate = Box<dyn Fn(&mut ScoreRequest)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            "an image without a placeholder",
            Box::new(|r| r.sequences[1].images = vec![png(1, 8, 8)]),
            "sequences[1].images: 1 image(s) for 0 image placeholder(s) (token 500)",
        ),
        (
            "a placeholder without an image",
            Box::new(|r| r.sequences[0].images.clear()),
            "sequences[0].images: 0 image(s) for 1 image placeholder(s) (token 500)",
        ),
        (
            "two images",
            Box::new(|r| {
                r.sequences[0].prompt_ids.push(IMAGE_TOKEN);
                r.sequences[0].images.push(png(2, 8, 8));
            }),
            "sequences[0].images: 2 images, over the limit of 1 per sequence",
        ),
        (
            "a placeholder in the target",
            Box::new(|r| r.sequences[1].target_ids[2] = IMAGE_TOKEN),
            "sequences[1].target_ids[2]: is the image placeholder token 500",
        ),
        (
            "a GIF",
            Box::new(|r| r.sequences[0].images = vec![Bytes::from_static(b"GIF89a\x01\x00")]),
            "sequences[0].images[0]: GIF images are not supported (PNG or JPEG only)",
        ),
        (
            "no image format",
            Box::new(|r| r.sequences[0].images = vec![Bytes::from_static(b"hello, world")]),
            "sequences[0].images[0]: not a PNG or JPEG image (first bytes 68 65 6c",
        ),
        (
            "empty bytes",
            Box::new(|r| r.sequences[0].images = vec![Bytes::new()]),
            "sequences[0].images[0]: no bytes",
        ),
        (
            "over the image byte limit",
            Box::new(|r| {
                let mut b = png(3, 8, 8).to_vec();
                b.resize(MAX_IMAGE_BYTES + 1, 0);
                r.sequences[0].images = vec![Bytes::from(b)];
            }),
            "sequences[0].images[0]: 4097 bytes, over the limit of 4096 bytes per image",
        ),
        (
            "a PNG that does not decode",
            Box::new(|r| r.sequences[0].images = vec![corrupt_png()]),
            "sequences[0].images[0]: PNG does not decode",
        ),
        (
            "a truncated PNG",
            Box::new(move |r| r.sequences[0].images = vec![truncated.clone()]),
            "sequences[0].images[0]: PNG does not decode",
        ),
        (
            "an image over the side limit",
            Box::new(|r| r.sequences[0].images = vec![blank_png(8193, 1)]),
            "sequences[0].images[0]: 8193x1 px is over the limit of 8192 px per side",
        ),
        (
            "over max positions with the image",
            Box::new(|r| r.sequences[0].target_ids = text(9, 110)),
            "sequences[0].prompt_ids + target_ids: 132 tokens (7 + 110 + 15 image positions), \
             over the teacher's max positions 128",
        ),
    ];
    for (what, mutate, expected) in cases {
        let mut bad = good();
        mutate(&mut bad);
        let (code, message) = code_and_message(client.score(bad.clone()).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: `{message}` lacks `{expected}`"
        );
        let (code, message) = code_and_message(client.score_all(vec![bad], 2).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "{what} (stream): {message}");
        let ok = client.score(good()).await.unwrap();
        assert_eq!(ok.sequences.len(), 2, "{what}");
    }

    // A bad image fails its own request, not a good one scored beside it.
    let mut bad = good();
    bad.sequences[0].images = vec![corrupt_png()];
    let (bad, ok) = tokio::join!(client.score(bad), client.score(good()));
    assert_eq!(code_and_message(bad.unwrap_err()).0, Code::InvalidArgument);
    assert_eq!(ok.unwrap().sequences.len(), 2);

    // An image over the message limit never reaches validation: OUT_OF_RANGE.
    let mut huge = good();
    huge.sequences[0].images = vec![Bytes::from(vec![0u8; 70 << 10])];
    let (code, message) = code_and_message(client.score(huge).await.unwrap_err());
    assert_eq!(code, Code::OutOfRange, "{message}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_teacher_refuses_images_and_says_so_in_info() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = no_retry_client(&server);
    let info = client.info().await.unwrap();
    assert!(!info.accepts_images);
    assert_eq!((info.image_token_id, info.tokens_per_image), (0, 0));
    let limits = info.limits.unwrap();
    assert_eq!(
        (limits.max_image_bytes, limits.max_images_per_sequence),
        (0, 0)
    );
    let seqs = vec![
        sequence("t", tokens(1, 4, 160), tokens(2, 3, 160)),
        image_sequence(
            "i",
            tokens(3, 4, 160),
            tokens(4, 3, 160),
            vec![png(1, 8, 8)],
        ),
    ];
    let (code, message) = code_and_message(client.score(request(seqs, 4, 1.0)).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        message.contains("sequences[1].images: 1 image(s) sent to a teacher that reads no images"),
        "{message}"
    );
    server.shutdown().await.unwrap();
}
