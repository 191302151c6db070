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
    /// Deadline of each call, in seconds.
    #[arg(long, default_value_t = 120.0, env = "EDKD_TEACHER_TIMEOUT")]
    pub timeout: f64,
}

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
        config.timeout = Duration::from_secs_f64(self.timeout);
        if let Some(ca) = &self.tls_ca {
            config.tls_ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
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
