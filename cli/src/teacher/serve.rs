//! `edkd teacher serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use edkd_models::LoadOptions;
use edkd_models::device::{parse_device, parse_dtype};
use edkd_teacher::{ServedTeacher, ServerConfig, TlsPem};

use super::seconds_flag;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher checkpoint folder (config.json, safetensors, tokenizer.json) or .gguf file;
    /// a vision-language twin folder (`edkd_vision_decoder`) serves images too.
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
    /// How long a batch waits for more requests, in milliseconds (0 to 10000).
    #[arg(
        long,
        default_value_t = 2.0,
        env = "EDKD_TEACHER_MAX_WAIT_MS",
        allow_negative_numbers = true
    )]
    max_wait_ms: f64,
    /// Largest request message, in bytes.
    #[arg(long, default_value_t = 16 << 20, env = "EDKD_TEACHER_MAX_REQUEST_BYTES")]
    max_request_bytes: usize,
    /// Largest response message, in bytes.
    #[arg(long, default_value_t = 64 << 20, env = "EDKD_TEACHER_MAX_RESPONSE_BYTES")]
    max_response_bytes: usize,
    /// Largest encoded image in a request (vision-language teachers), in bytes.
    #[arg(
        long,
        default_value_t = edkd_teacher::config::DEFAULT_MAX_IMAGE_BYTES,
        env = "EDKD_TEACHER_MAX_IMAGE_BYTES"
    )]
    max_image_bytes: usize,
    /// PEM certificate chain (with --tls-key: serve TLS).
    #[arg(long, requires = "tls_key", env = "EDKD_TEACHER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "EDKD_TEACHER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// File holding a bearer token every RPC (and every `/metrics` scrape) must carry.
    #[arg(long, env = "EDKD_TEACHER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// libtorch intra-op threads (0: libtorch's default, one per core; at most 4 per core).
    #[arg(long, default_value_t = 0, env = "EDKD_TEACHER_THREADS")]
    threads: usize,
    /// Most open connections; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 256, env = "EDKD_TEACHER_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection.
    #[arg(
        long,
        default_value_t = 32,
        env = "EDKD_TEACHER_MAX_STREAMS_PER_CONNECTION"
    )]
    max_streams_per_connection: u32,
    /// Bytes of request messages being received at once, over all connections (at least
    /// --max-request-bytes + 5); a message beyond it gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64 << 20, env = "EDKD_TEACHER_MAX_INFLIGHT_REQUEST_BYTES")]
    max_inflight_request_bytes: usize,
    /// Seconds a new connection has to send its first bytes (HTTP/2 preface or TLS hello)
    /// and to finish a TLS handshake.
    #[arg(
        long,
        default_value_t = 10.0,
        env = "EDKD_TEACHER_HANDSHAKE_TIMEOUT",
        allow_negative_numbers = true
    )]
    handshake_timeout_s: f64,
    /// Seconds a connection may stay open with no call in flight.
    #[arg(
        long,
        default_value_t = 300.0,
        env = "EDKD_TEACHER_IDLE_TIMEOUT",
        allow_negative_numbers = true
    )]
    idle_timeout_s: f64,
    /// Seconds of silence before an HTTP/2 keepalive ping; an unanswered ping closes the
    /// connection after --keepalive-timeout-s.
    #[arg(
        long,
        default_value_t = 30.0,
        env = "EDKD_TEACHER_KEEPALIVE",
        allow_negative_numbers = true
    )]
    keepalive_s: f64,
    /// Seconds a keepalive ping may go unanswered.
    #[arg(
        long,
        default_value_t = 20.0,
        env = "EDKD_TEACHER_KEEPALIVE_TIMEOUT",
        allow_negative_numbers = true
    )]
    keepalive_timeout_s: f64,
}

/// Longest batching wait, milliseconds.
const MAX_WAIT_MS: f64 = 10_000.0;
/// Longest connection timeouts (handshake, keepalive: an hour; idle: a week), seconds.
const MAX_CONNECTION_TIMEOUT_S: f64 = 3_600.0;
const MAX_IDLE_TIMEOUT_S: f64 = 7.0 * 86_400.0;

/// The libtorch thread count, checked against this machine's cores.
fn threads(requested: usize) -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = edkd_trainer::config::MAX_THREADS_PER_CORE * cores;
    anyhow::ensure!(
        requested <= max,
        "--threads {requested}: more than {} x the {cores} cores of this machine ({max}); \
         0 uses libtorch's default (one per core)",
        edkd_trainer::config::MAX_THREADS_PER_CORE
    );
    Ok(requested)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let max_wait = seconds_flag(
        "--max-wait-ms",
        args.max_wait_ms,
        "milliseconds",
        1000.0,
        true,
        MAX_WAIT_MS / 1000.0,
    )?;
    let second = |flag: &str, v: f64, max: f64| seconds_flag(flag, v, "seconds", 1.0, false, max);
    let handshake_timeout = second(
        "--handshake-timeout-s",
        args.handshake_timeout_s,
        MAX_CONNECTION_TIMEOUT_S,
    )?;
    let idle_timeout = second("--idle-timeout-s", args.idle_timeout_s, MAX_IDLE_TIMEOUT_S)?;
    let keepalive_interval = second("--keepalive-s", args.keepalive_s, MAX_CONNECTION_TIMEOUT_S)?;
    let keepalive_timeout = second(
        "--keepalive-timeout-s",
        args.keepalive_timeout_s,
        MAX_CONNECTION_TIMEOUT_S,
    )?;
    let threads = threads(args.threads)?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let pem = TlsPem {
                cert: read(cert)?,
                key: read(key)?,
            };
            edkd_teacher::tls::check_identity(
                &pem.cert,
                &pem.key,
                &cert.display().to_string(),
                &key.display().to_string(),
            )?;
            Some(pem)
        }
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
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let options = LoadOptions {
        device: parse_device(&args.device)?,
        kind: parse_dtype(&args.dtype)?,
    };
    if let Some(w) = edkd_models::device::slow_bf16_warning(options.device, options.kind) {
        tracing::warn!("{w}");
    }
    let teacher = ServedTeacher::load(&args.model, options)
        .with_context(|| format!("loading teacher {}", args.model.display()))?;
    let config = ServerConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        model_id: args.model_id,
        max_top_k: args.max_top_k,
        max_request_tokens: args.max_batch_tokens,
        max_sequences: args.max_sequences,
        queue_capacity: args.queue_capacity,
        max_wait,
        max_request_bytes: args.max_request_bytes,
        max_response_bytes: args.max_response_bytes,
        max_image_bytes: args.max_image_bytes,
        tls,
        auth_token,
        max_connections: args.max_connections,
        max_streams_per_connection: args.max_streams_per_connection,
        max_inflight_request_bytes: args.max_inflight_request_bytes,
        handshake_timeout,
        idle_timeout,
        keepalive_interval,
        keepalive_timeout,
        threads,
    };
    let server = edkd_teacher::start(teacher, config).await?;
    let info = &server.info;
    eprintln!(
        "serving {} ({}{}, vocab {}, {} on {}) at {}{}",
        info.model_id,
        info.architecture,
        if info.accepts_images {
            format!(
                " with images: token {}, {} positions each",
                info.image_token_id, info.tokens_per_image
            )
        } else {
            String::new()
        },
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
