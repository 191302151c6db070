//! `edkd teacher`: serve a teacher over gRPC, query it, and annotate datasets with it.

mod annotate;
mod query;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Load a teacher and serve it over gRPC (Score, ScoreStream, Info, health, reflection).
    Serve(serve::Args),
    /// Score a text with a running teacher and print each target token's top-k.
    Query(query::Args),
    /// Score a prepared dataset through a running teacher into teacher-logit cache shards.
    Annotate(annotate::Args),
}

/// Connection flags shared by the client subcommands.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Teacher address: host:port, or an http:// / https:// URI.
    #[arg(
        long = "addr",
        alias = "teacher",
        default_value = "127.0.0.1:50051",
        env = "EDKD_TEACHER_ADDR"
    )]
    pub addr: String,
    /// PEM of the CA that signed the server's certificate (enables TLS).
    #[arg(long, env = "EDKD_TEACHER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Server name to verify the certificate against (default: the address's host).
    #[arg(long, env = "EDKD_TEACHER_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// File holding the bearer token the server expects.
    #[arg(long, env = "EDKD_TEACHER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Deadline of each call, in seconds (at most a day).
    #[arg(
        long,
        default_value_t = 120.0,
        env = "EDKD_TEACHER_TIMEOUT",
        allow_negative_numbers = true
    )]
    pub timeout: f64,
}

/// A time flag as a `Duration`: `value` (in seconds) must be finite and in `(0, max_s]`,
/// or `[0, max_s]` with `zero_ok`; the error names the flag, its unit and the range.
pub fn seconds_flag(
    flag: &str,
    value: f64,
    unit: &str,
    per_second: f64,
    zero_ok: bool,
    max_s: f64,
) -> anyhow::Result<Duration> {
    let s = value / per_second;
    let low_ok = if zero_ok { s >= 0.0 } else { s > 0.0 };
    anyhow::ensure!(
        value.is_finite() && low_ok && s <= max_s,
        "{flag} {value}: must be a finite number of {unit} in {}0, {}]",
        if zero_ok { "[" } else { "(" },
        max_s * per_second
    );
    Ok(Duration::from_secs_f64(s))
}

/// Longest client deadline per call, seconds (a day).
pub const MAX_TIMEOUT_S: f64 = 86_400.0;

/// Reads a token file, trimmed; an empty token is an error.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading auth token {}", path.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "auth token file {} is empty",
        path.display()
    );
    Ok(token)
}

impl ConnectArgs {
    pub fn client(&self) -> anyhow::Result<edkd_teacher::Client> {
        let mut config = edkd_teacher::ClientConfig::new(self.addr.clone());
        config.timeout = seconds_flag(
            "--timeout",
            self.timeout,
            "seconds",
            1.0,
            false,
            MAX_TIMEOUT_S,
        )?;
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            edkd_teacher::tls::check_ca(&pem, &ca.display().to_string())?;
            config.tls_ca_pem = Some(pem);
        }
        config.tls_domain = self.tls_domain.clone();
        if let Some(path) = &self.auth_token_file {
            config.auth_token = Some(read_token(path)?);
        }
        Ok(edkd_teacher::Client::connect(config)?)
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cmd {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Query(args) => runtime.block_on(query::run(args)),
        Command::Annotate(args) => runtime.block_on(annotate::run(args)),
    }
}
