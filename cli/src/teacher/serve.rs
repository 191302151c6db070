//! `edkd teacher serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use edkd_models::device::{parse_device, parse_dtype};
use edkd_models::{LoadOptions, Teacher};
use edkd_teacher::{ServerConfig, TlsPem};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher checkpoint folder (config.json, safetensors, tokenizer.json) or .gguf file.
    #[arg(long, env = "EDKD_TEACHER_MODEL")]
    model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "EDKD_TEACHER_DEVICE")]
    device: String,
    /// Weight dtype: f32 or bf16 (CPU); f32, f16 or bf16 (CUDA).
    #[arg(long, default_value = "f32", env = "EDKD_TEACHER_DTYPE")]
    dtype: String,
    /// gRPC listen address (loopback by default; TLS and a token are advised beyond it).
    #[arg(long, default_value = "127.0.0.1:50051", env = "EDKD_TEACHER_LISTEN")]
    listen: SocketAddr,
    /// Prometheus `/metrics` listen address (off if not given).
    #[arg(long, env = "EDKD_TEACHER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Model id reported by Info (default: the folder name).
    #[arg(long, env = "EDKD_TEACHER_MODEL_ID")]
    model_id: Option<String>,
    /// Largest top_k a request may ask for.
    #[arg(long, default_value_t = 256, env = "EDKD_TEACHER_MAX_TOP_K")]
    max_top_k: usize,
    /// Token budget: most prompt + target tokens per request and per forward pass.
    #[arg(long, default_value_t = 16384, env = "EDKD_TEACHER_MAX_BATCH_TOKENS")]
    max_batch_tokens: usize,
    /// Most sequences per request.
    #[arg(long, default_value_t = 1024, env = "EDKD_TEACHER_MAX_SEQUENCES")]
    max_sequences: usize,
    /// Requests waiting beyond this get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256, env = "EDKD_TEACHER_QUEUE_CAPACITY")]
    queue_capacity: usize,
    /// How long a batch waits for more requests, in milliseconds.
    #[arg(long, default_value_t = 2.0, env = "EDKD_TEACHER_MAX_WAIT_MS")]
    max_wait_ms: f64,
    /// Largest request message, in bytes.
    #[arg(long, default_value_t = 16 << 20, env = "EDKD_TEACHER_MAX_REQUEST_BYTES")]
    max_request_bytes: usize,
    /// Largest response message, in bytes.
    #[arg(long, default_value_t = 64 << 20, env = "EDKD_TEACHER_MAX_RESPONSE_BYTES")]
    max_response_bytes: usize,
    /// PEM certificate chain (with --tls-key: serve TLS).
    #[arg(long, requires = "tls_key", env = "EDKD_TEACHER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "EDKD_TEACHER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// File holding a bearer token every RPC must carry.
    #[arg(long, env = "EDKD_TEACHER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsPem {
            cert: read(cert)?,
            key: read(key)?,
        }),
        _ => None,
    };
    let auth_token = args
        .auth_token_file
        .as_deref()
        .map(super::read_token)
        .transpose()?;
    if !args.listen.ip().is_loopback() && (tls.is_none() || auth_token.is_none()) {
        tracing::warn!(listen = %args.listen, "serving beyond loopback without TLS and a token");
    }
    let options = LoadOptions {
        device: parse_device(&args.device)?,
        kind: parse_dtype(&args.dtype)?,
    };
    let teacher = Teacher::load(&args.model, options)
        .with_context(|| format!("loading teacher {}", args.model.display()))?;
    let config = ServerConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        model_id: args.model_id,
        max_top_k: args.max_top_k,
        max_request_tokens: args.max_batch_tokens,
        max_sequences: args.max_sequences,
        queue_capacity: args.queue_capacity,
        max_wait: Duration::from_secs_f64(args.max_wait_ms / 1000.0),
        max_request_bytes: args.max_request_bytes,
        max_response_bytes: args.max_response_bytes,
        tls,
        auth_token,
    };
    let server = edkd_teacher::start(teacher, config).await?;
    let info = &server.info;
    eprintln!(
        "serving {} ({}, vocab {}, {} on {}) at {}{}",
        info.model_id,
        info.architecture,
        info.vocab_size,
        info.dtype,
        info.device,
        server.addr,
        server
            .metrics_addr
            .map(|a| format!(", metrics at http://{a}/metrics"))
            .unwrap_or_default()
    );
    server.run_until(edkd_teacher::shutdown_signal()).await?;
    eprintln!("teacher service stopped");
    Ok(())
}
