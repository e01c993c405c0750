//! The admin HTTP listener (`admin.listen`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process is up) and `/readyz` (connected to the broker
//! with every subscription in place), for Kubernetes probes and dashboards, and
//! `/reload` (the outcome of the last config reload, as text).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn reload_status(State(m): State<Arc<Metrics>>) -> String {
    let (ok, failed, last) = m.reloads();
    let last = last.unwrap_or_else(|| "no reload yet".into());
    format!("reloads: {ok} applied, {failed} rejected\nlast: {last}\n")
}

async fn readyz(State(m): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
    }
}

/// Binds `addr` (so a taken port fails the start) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin endpoint cannot listen on {addr}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/reload", get(reload_status))
        .with_state(metrics);
    tracing::info!(%addr, "admin endpoint: /metrics /healthz /readyz /reload");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    }))
}
