//! Load check on loopback: 64 concurrent clients, 2,000 requests, zero errors, bounded RSS.

mod common;

use common::*;
use edkd_teacher::ServerConfig;

const CLIENTS: usize = 64;
const REQUESTS: usize = 2000;
/// RSS growth allowed between the warm-up and the end of the run.
const RSS_GROWTH_LIMIT_MIB: f64 = 150.0;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run_requests(server: &edkd_teacher::RunningServer, total: usize, offset: usize) -> usize {
    let per_client = total / CLIENTS;
    let extra = total % CLIENTS;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = client(server);
            let n = per_client + usize::from(c < extra);
            tokio::spawn(async move {
                let mut errors = 0;
                for r in 0..n {
                    let seed = (offset + c * 1000 + r) as u64;
                    let (p, t) = (1 + (seed % 31) as usize, 1 + (seed * 3 % 17) as usize);
                    let req = request(
                        vec![sequence(
                            "x",
                            tokens(seed, p, 160),
                            tokens(seed + 1, t, 160),
                        )],
                        8,
                        1.0,
                    );
                    match client.score(req).await {
                        Ok(resp) if resp.sequences[0].num_positions as usize == t => {}
                        Ok(_) => errors += 1,
                        Err(e) => {
                            eprintln!("client {c} request {r}: {e}");
                            errors += 1;
                        }
                    }
                }
                (n, errors)
            })
        })
        .collect();
    let (mut done, mut errors) = (0, 0);
    for t in tasks {
        let (n, e) = t.await.unwrap();
        done += n;
        errors += e;
    }
    assert_eq!(done, total);
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_two_thousand_requests_zero_errors_bounded_rss() {
    let server = server("llama_linear", ServerConfig::default()).await;
    let warmup = 200;
    assert_eq!(run_requests(&server, warmup, 0).await, 0);
    let rss_warm = rss_mib();
    assert_eq!(run_requests(&server, REQUESTS - warmup, 1_000_000).await, 0);
    let rss_end = rss_mib();
    assert!(
        rss_end - rss_warm < RSS_GROWTH_LIMIT_MIB,
        "RSS grew from {rss_warm:.0} to {rss_end:.0} MiB"
    );
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(&format!("edkd_teacher_requests_total {REQUESTS}")),
        "{metrics}"
    );
    assert!(!metrics.contains("edkd_teacher_errors_total{"), "{metrics}");
    eprintln!("RSS {rss_warm:.0} MiB after warm-up, {rss_end:.0} MiB after {REQUESTS} requests");
    server.shutdown().await.unwrap();
}
