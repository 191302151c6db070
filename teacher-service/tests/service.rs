//! Service plumbing: bearer token on every RPC, TLS, health, reflection, metrics endpoint,
//! graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use edkd_teacher::{Client, ClientConfig, Error, ServerConfig, TlsPem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn good() -> edkd_teacher::proto::ScoreRequest {
    request(vec![sequence("g", vec![1, 2, 3], vec![4, 5, 6])], 4, 1.0)
}

fn code(e: Error) -> Code {
    match e {
        Error::Rpc(s) => s.code(),
        other => panic!("expected an rpc status, got {other}"),
    }
}

fn with_token(addr: &str, token: Option<&str>) -> Client {
    let mut config = ClientConfig::new(addr);
    config.auth_token = token.map(str::to_owned);
    config.retries = 0;
    Client::connect(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_checked_on_every_rpc() {
    let config = ServerConfig {
        auth_token: Some("s3cret-token".into()),
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let addr = server.addr.to_string();
    for token in [None, Some("wrong"), Some("s3cret-toke")] {
        let client = with_token(&addr, token);
        assert_eq!(
            code(client.info().await.unwrap_err()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(client.score(good()).await.unwrap_err()),
            Code::Unauthenticated
        );
        let err = client.score_all(vec![good()], 1).await.unwrap_err();
        assert_eq!(code(err), Code::Unauthenticated);
    }
    // Health is an RPC too.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let client = with_token(&addr, Some("s3cret-token"));
    client.info().await.unwrap();
    client.score(good()).await.unwrap();
    client.score_all(vec![good()], 1).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let config = ServerConfig {
        tls: Some(TlsPem {
            cert: cert_pem.clone().into_bytes(),
            key: key_pem.into_bytes(),
        }),
        auth_token: Some("tok".into()),
        ..ServerConfig::default()
    };
    let server = server("qwen2_tied", config).await;
    let mut config = ClientConfig::new(server.addr.to_string());
    config.tls_ca_pem = Some(cert_pem.into_bytes());
    config.tls_domain = Some("localhost".into());
    config.auth_token = Some("tok".into());
    let client = Client::connect(config).unwrap();
    let response = client.score(good()).await.unwrap();
    assert_eq!(response.sequences[0].num_positions, 3);
    // A plaintext client gets no answer from a TLS server.
    let plain = with_token(&server.addr.to_string(), Some("tok"));
    assert!(plain.info().await.is_err());
    server.shutdown().await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_endpoints() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let config = ServerConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "edkd.teacher.v1.Teacher".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"edkd.teacher.v1.Teacher".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let client = client(&server);
    client.score(good()).await.unwrap();
    let body = http_get(server.metrics_addr.unwrap(), "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for name in [
        "edkd_teacher_queue_depth 0",
        "edkd_teacher_scored_tokens_total 3",
        "edkd_teacher_requests_total 1",
        "edkd_teacher_request_seconds_bucket",
        "edkd_teacher_batch_tokens_bucket",
    ] {
        assert!(body.contains(name), "`{name}` missing from:\n{body}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    // A long batching wait keeps the request in flight while shutdown starts.
    let config = ServerConfig {
        max_wait: Duration::from_millis(400),
        ..ServerConfig::default()
    };
    let server = server("llama_linear", config).await;
    let addr = server.addr.to_string();
    let client = client(&server);
    client.info().await.unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.score(good()).await }
    });
    // Shut down only once the request is being handled (a fixed sleep raced under load).
    let seen = tokio::time::Instant::now();
    while server.metrics.in_flight.get() < 1 && !in_flight.is_finished() {
        assert!(
            seen.elapsed() < Duration::from_secs(30),
            "the request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.shutdown().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request finished");
    assert_eq!(response.sequences[0].num_positions, 3);
    let after = with_token(&addr, None);
    assert_eq!(code(after.info().await.unwrap_err()), Code::Unavailable);
}
