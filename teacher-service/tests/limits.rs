//! Hardening of the service: rejected calls are counted and logged, `/metrics` wants the
//! token, both reflection versions answer, the connection limit holds, TLS files are checked
//! up front, and a teacher whose logits are not finite gets INTERNAL instead of NaN with OK.

mod common;

use std::time::Duration;

use common::*;
use edkd_teacher::{Client, ClientConfig, Error, ServerConfig, TlsPem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

fn good() -> edkd_teacher::proto::ScoreRequest {
    request(vec![sequence("g", vec![1, 2, 3], vec![4, 5, 6])], 4, 1.0)
}

fn code(e: Error) -> Code {
    match e {
        Error::Rpc(s) => s.code(),
        other => panic!("expected an rpc status, got {other}"),
    }
}

fn plain_client(addr: &str, token: Option<&str>) -> Client {
    let mut config = ClientConfig::new(addr);
    config.auth_token = token.map(str::to_owned);
    config.retries = 0;
    Client::connect(config).unwrap()
}

async fn http_get(addr: std::net::SocketAddr, header: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_are_counted_and_metrics_need_the_token() {
    let config = ServerConfig {
        auth_token: Some("s3cret".into()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        max_request_bytes: 2_000,
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let addr = server.addr.to_string();
    for token in [None, Some("wrong")] {
        let client = plain_client(&addr, token);
        assert_eq!(
            code(client.score(good()).await.unwrap_err()),
            Code::Unauthenticated
        );
        let err = client.score_all(vec![good()], 1).await.unwrap_err();
        assert_eq!(code(err), Code::Unauthenticated);
    }
    // A message over the size limit: OUT_OF_RANGE on both paths.
    let client = plain_client(&addr, Some("s3cret"));
    let big = request(vec![sequence("b", vec![1; 3_000], vec![2])], 4, 1.0);
    assert_eq!(
        code(client.score(big.clone()).await.unwrap_err()),
        Code::OutOfRange
    );
    let err = client.score_all(vec![big], 1).await.unwrap_err();
    assert_eq!(code(err), Code::OutOfRange);
    client.score(good()).await.unwrap();

    let metrics = server.metrics.render();
    for line in [
        "edkd_teacher_errors_total{code=\"Unauthenticated\"} 4",
        "edkd_teacher_errors_total{code=\"OutOfRange\"} 2",
    ] {
        assert!(metrics.contains(line), "`{line}` missing:\n{metrics}");
    }
    let metrics_addr = server.metrics_addr.unwrap();
    for header in ["", "Authorization: Bearer wrong\r\n"] {
        let answer = http_get(metrics_addr, header).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(!answer.contains("edkd_teacher_requests_total"), "{answer}");
    }
    let answer = http_get(metrics_addr, "Authorization: Bearer s3cret\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("edkd_teacher_requests_total"), "{answer}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha_clients() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = server("llama_linear", ServerConfig::default()).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let answer = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: {answer:?}");
    };
    let v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "edkd.teacher.v1.Teacher".into(),
            ),
        ),
    };
    let mut answers = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![
            request,
            v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            },
        ]))
        .await
        .expect("the server answers v1alpha reflection")
        .into_inner();
    let file = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(fd)) =
        file.message_response
    else {
        panic!("v1alpha: {file:?}");
    };
    assert!(!fd.file_descriptor_proto.is_empty());
    let list = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        list.message_response
    else {
        panic!("v1alpha: {list:?}");
    };
    let alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for names in [&v1_names, &alpha_names] {
        assert!(
            names.contains(&"edkd.teacher.v1.Teacher".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_until_a_slot_frees() {
    let config = ServerConfig {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let addr = server.addr.to_string();
    let a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the third connection is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(server.metrics.connections_refused.get() >= 1);
    // The silent two are closed by the handshake timeout; then a client gets in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut config = ClientConfig::new(addr);
    config.retries = 5;
    Client::connect(config)
        .unwrap()
        .score(good())
        .await
        .unwrap();
    drop((a, b));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_tls_key_is_refused_at_start() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsPem {
            cert: cert.cert.pem().into_bytes(),
            key: other.signing_key.serialize_pem().into_bytes(),
        }),
        ..ServerConfig::default()
    };
    let Err(err) = edkd_teacher::start(load("llama_linear"), config).await else {
        panic!("a server started with another certificate's key");
    };
    assert!(matches!(err, Error::Tls(_)), "{err}");
    assert!(
        err.to_string()
            .contains("TLS key is not the private key of the certificate in TLS certificate"),
        "{err}"
    );
}

/// The fixture teacher with its final norm set to NaN: every logit is NaN.
fn poisoned_teacher(dir: &std::path::Path) -> std::path::PathBuf {
    let src = fixture("llama_linear");
    let out = dir.join("poisoned");
    std::fs::create_dir(&out).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let tensors = tch::Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if name == "model.norm.weight" {
                t.full_like(f64::NAN)
            } else {
                t
            };
            (name, t)
        })
        .collect();
    tch::Tensor::write_safetensors(&tensors, out.join("model.safetensors")).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_logits_are_an_internal_error_not_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher =
        edkd_models::Teacher::load(&poisoned_teacher(tmp.path()), Default::default()).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = edkd_teacher::start(teacher, config).await.unwrap();
    let client = client(&server);
    let Error::Rpc(status) = client.score(good()).await.unwrap_err() else {
        panic!("not a status");
    };
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("its logits are not finite"),
        "{status:?}"
    );
    server.shutdown().await.unwrap();
}
