//! A teacher folder served over gRPC on a free loopback port, in this process: a real
//! `edkd teacher` server for measurements and the demo.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::error::{Error, Result};

/// Serves the teacher folder `dir` on a free loopback port, on a runtime of its own with
/// `workers` threads (the caller shuts the server down on that runtime); its forward passes
/// run on `threads` libtorch threads (0: the process-wide count), apart from whatever else
/// this process computes.
pub fn serve_on_loopback(
    dir: &Path,
    model_id: &str,
    workers: usize,
    threads: usize,
) -> Result<(tokio::runtime::Runtime, edkd_teacher::RunningServer)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(Error::io(dir))?;
    let teacher = edkd_models::Teacher::load(dir, Default::default())?;
    let server = rt.block_on(edkd_teacher::start(
        teacher,
        edkd_teacher::ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            model_id: Some(model_id.into()),
            threads,
            ..Default::default()
        },
    ))?;
    Ok((rt, server))
}
