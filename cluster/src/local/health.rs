//! gRPC health checks (`grpc.health.v1.Health/Check`, service "") of teacher replicas.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Longest a single connect + Check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `addr` once whether it is SERVING. `Err` carries a one-line reason for error
/// messages (connection refused, NOT_SERVING, ...).
pub async fn check(addr: SocketAddr) -> Result<(), String> {
    let probe = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CHECK_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {}", error_chain(&e)))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| format!("health check: {}", status.message()))?;
        match ServingStatus::try_from(response.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(format!("status {}", other.as_str_name())),
            Err(_) => Err("unknown serving status".to_owned()),
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
