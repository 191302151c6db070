//! Packed scores on the wire: negotiated by the additive `packing` fields, so a client that
//! never heard of them (one built from the first version of the .proto) sends and reads
//! exactly what it did before; a packing client gets packed rows within the packing's
//! bounds; an unknown packing from a newer client is INVALID_ARGUMENT naming the field.

mod common;

use common::*;
use edkd_data::packing::{IdCoding, PACKINGS, Packing};
use edkd_teacher::proto::{ScoreRequest, ScoreResponse};
use edkd_teacher::wire::decode_response;
use edkd_teacher::{Error, ServerConfig};
use prost::Message;
use tonic::Code;

/// `ScoreRequest`, `ScoredSequence` and `ScoreResponse` as the first version of
/// teacher.proto declared them (before `packing`, `packed` and `vocab_size`).
mod v1_first {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sequence {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(uint32, repeated, tag = "2")]
        pub prompt_ids: Vec<u32>,
        #[prost(uint32, repeated, tag = "3")]
        pub target_ids: Vec<u32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScoreRequest {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        #[prost(message, repeated, tag = "2")]
        pub sequences: Vec<Sequence>,
        #[prost(uint32, tag = "3")]
        pub top_k: u32,
        #[prost(float, tag = "4")]
        pub temperature: f32,
        #[prost(int32, tag = "5")]
        pub value_format: i32,
        #[prost(string, tag = "6")]
        pub tokenizer_sha256: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScoredSequence {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(uint32, tag = "2")]
        pub num_positions: u32,
        #[prost(bytes = "vec", tag = "3")]
        pub topk_ids: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub topk_logprobs: Vec<u8>,
        #[prost(bytes = "vec", tag = "5")]
        pub tail_logmass: Vec<u8>,
        #[prost(bytes = "vec", tag = "6")]
        pub gold_logprob: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScoreResponse {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        #[prost(uint32, tag = "2")]
        pub top_k: u32,
        #[prost(int32, tag = "3")]
        pub value_format: i32,
        #[prost(message, repeated, tag = "4")]
        pub sequences: Vec<ScoredSequence>,
    }
}

const VOCAB: u32 = 160;

fn old_request() -> v1_first::ScoreRequest {
    v1_first::ScoreRequest {
        request_id: 3,
        sequences: vec![v1_first::Sequence {
            id: "old".into(),
            prompt_ids: tokens(1, 6, VOCAB),
            target_ids: tokens(2, 5, VOCAB),
        }],
        top_k: 8,
        temperature: 1.0,
        value_format: 2, // f16
        tokenizer_sha256: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_before_packing_gets_the_arrays_it_always_got() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    // The old client's bytes, read by today's server as today's message.
    let wire = old_request().encode_to_vec();
    let request = ScoreRequest::decode(wire.as_slice()).unwrap();
    assert_eq!(request.packing, 0);
    let response = client.score(request).await.unwrap();
    assert_eq!((response.packing, response.vocab_size), (0, 0));
    assert!(response.sequences.iter().all(|s| s.packed.is_empty()));
    // Today's answer, read back by the old client: no field it does not know, and every
    // array as the first version defined it (u32 ids, f16 values).
    let bytes = response.encode_to_vec();
    let old = v1_first::ScoreResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(old.encode_to_vec(), bytes, "nothing new on the wire");
    let s = &old.sequences[0];
    assert_eq!(s.num_positions, 5);
    assert_eq!(s.topk_ids.len(), 5 * 8 * 4);
    assert_eq!(s.topk_logprobs.len(), 5 * 8 * 2);
    assert_eq!(decode_response(&response).unwrap()[0].positions, 5);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_answers_match_the_f32_answer_within_the_packing_bounds() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let info = client.info().await.unwrap();
    // Every packing but the cache-only freq ones.
    let wire: Vec<Packing> = PACKINGS.into_iter().filter(|p| !p.needs_order()).collect();
    assert_eq!(
        info.packings,
        wire.iter().map(|p| p.code() as i32).collect::<Vec<_>>()
    );
    assert_eq!(wire.len(), 10);
    let seqs = || {
        vec![
            sequence("a", tokens(3, 7, VOCAB), tokens(4, 6, VOCAB)),
            sequence("b", tokens(5, 3, VOCAB), tokens(6, 9, VOCAB)),
        ]
    };
    let k = 16;
    let f32_answer = client.score(request(seqs(), k, 1.0)).await.unwrap();
    let exact = decode_response(&f32_answer).unwrap();
    for packing in wire {
        let request = ScoreRequest {
            packing: packing.code() as i32,
            ..request(seqs(), k, 1.0)
        };
        let response: ScoreResponse = client.score(request).await.unwrap();
        assert_eq!(response.packing, packing.code() as i32);
        assert_eq!(response.vocab_size, VOCAB);
        let packed_bytes: usize = response.sequences.iter().map(|s| s.packed.len()).sum();
        let f32_bytes: usize = f32_answer
            .sequences
            .iter()
            .map(|s| s.topk_ids.len() + s.topk_logprobs.len() + s.tail_logmass.len())
            .sum();
        assert!(
            packed_bytes * 3 < f32_bytes,
            "{packing:?}: {packed_bytes} vs {f32_bytes}"
        );
        for (got, want) in decode_response(&response).unwrap().iter().zip(&exact) {
            assert_eq!(
                (got.id.as_str(), got.positions),
                (want.id.as_str(), want.positions)
            );
            let k = k as usize;
            for p in 0..got.positions {
                let top = half::f16::from_f32(want.topk_logprobs[p * k]).to_f32();
                assert_eq!(got.topk_logprobs[p * k], top);
                for j in 0..k {
                    let id = want.topk_ids[p * k + j];
                    let at = (0..k)
                        .find(|&i| got.topk_ids[p * k + i] == id)
                        .expect("same id set");
                    if packing.ids == IdCoding::Bits {
                        assert_eq!(at, j);
                    }
                    let r = |lp: f32| ((lp - top).min(0.0) / 3.0).exp();
                    let err =
                        (r(got.topk_logprobs[p * k + at]) - r(want.topk_logprobs[p * k + j])).abs();
                    assert!(
                        err <= packing.r_error_bound() + 1e-6,
                        "{packing:?} p {p} j {j}: {err}"
                    );
                }
                assert!((got.tail_logmass[p] - want.tail_logmass[p]).abs() <= 1e-2);
            }
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_packing_from_a_newer_client_names_the_field() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let client = client(&server);
    let unknown = ScoreRequest {
        packing: 99,
        ..request(vec![sequence("n", vec![1, 2], vec![3, 4])], 4, 1.0)
    };
    match client.score(unknown).await.unwrap_err() {
        Error::Rpc(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(
                s.message().starts_with("packing: unknown value 99"),
                "{}",
                s.message()
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other}"),
    }
    // A cache-only packing is refused by name: its rows would need an id order.
    let cache_only = ScoreRequest {
        packing: Packing::from_name("freq-e5").unwrap().code() as i32,
        ..request(vec![sequence("n", vec![1, 2], vec![3, 4])], 4, 1.0)
    };
    match client.score(cache_only).await.unwrap_err() {
        Error::Rpc(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(
                s.message()
                    .starts_with("packing: 16 (freq-e5) needs an id order and is for caches only"),
                "{}",
                s.message()
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other}"),
    }
    // A response claiming a packing this client does not know is refused, not misread.
    let mut response = client
        .score(ScoreRequest {
            packing: Packing::new(IdCoding::Delta, 8).code() as i32,
            ..request(vec![sequence("n", vec![1, 2], vec![3, 4])], 4, 1.0)
        })
        .await
        .unwrap();
    response.packing = 42;
    let e = decode_response(&response).unwrap_err().to_string();
    assert!(e.contains("response packing 42 is unknown"), "{e}");
    // A corrupt packed row names its sequence.
    response.packing = Packing::new(IdCoding::Delta, 8).code() as i32;
    let mut bad = response.sequences[0].packed.to_vec();
    bad.truncate(bad.len() - 1);
    response.sequences[0].packed = bad.into();
    let e = decode_response(&response).unwrap_err().to_string();
    assert!(e.contains("sequence `n`: packed: corrupt row"), "{e}");
    server.shutdown().await.unwrap();
}
