//! The admin HTTP listener (`admin.listen`, loopback by default): `/metrics`
//! in the Prometheus text format, `/healthz` (the process is up) and `/readyz`
//! (every session connected with its subscriptions in place), for Kubernetes
//! probes and dashboards, `/reload` (the outcome of the last config reload, as
//! text), and the operator's view: the status page at `/` and the JSON it
//! polls at `/api/status` (built in [`crate::status`]).
//!
//! Nothing outside may exhaust the bridge through it: at most
//! `admin.max_connections` connections are served at once (beyond that the
//! endpoint stops accepting, so waiting clients sit in the kernel's queue and
//! not in the bridge's file descriptors, which the broker and gateway
//! connections need); a request's headers must arrive within
//! `admin.header_timeout`; one request per connection. With `admin.token`,
//! every path but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::status::{Sampler, PAGE};

/// What the handlers read.
#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    sampler: Arc<Sampler>,
}

async fn metrics_text(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        a.metrics.render(),
    )
}

async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

async fn status_json(State(a): State<Admin>) -> Response {
    match serde_json::to_string(&a.sampler.status()) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn reload_status(State(a): State<Admin>) -> String {
    let (ok, failed, last) = a.metrics.reloads();
    let last = last.unwrap_or_else(|| "no reload yet".into());
    format!("reloads: {ok} applied, {failed} rejected\nlast: {last}\n")
}

async fn readyz(State(a): State<Admin>) -> (StatusCode, &'static str) {
    if a.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
    }
}

/// Refuses a request without the bearer token (probes excepted).
async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let open = matches!(request.uri().path(), "/healthz" | "/readyz" | "/");
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if open || presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response()
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds `cfg.listen` (so a taken port fails the start) and serves until
/// `shutdown`.
pub async fn serve(
    cfg: &AdminConfig,
    token: Option<&str>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let addr = cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin endpoint cannot listen on {addr}"))?;
    let sampler = Sampler::new(Arc::clone(&metrics));
    let mut app = Router::new()
        .route("/", get(status_page))
        .route("/api/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/reload", get(reload_status))
        .with_state(Admin {
            metrics,
            sampler: Arc::clone(&sampler),
        });
    if let Some(token) = token {
        app = app.layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            require_token,
        ));
    }
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let header_timeout = cfg.header_timeout;
    tracing::info!(%addr, max_connections = cfg.max_connections, token = token.is_some(), "admin endpoint: status page at http://{addr}/, /api/status /metrics /healthz /readyz /reload");
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sampler.run(stop_sampling.clone()));
    Ok(tokio::spawn(async move {
        let _stop_sampling = stop_sampling.drop_guard();
        tokio::pin!(shutdown);
        loop {
            // At the limit, stop accepting until a connection ends.
            let permit = tokio::select! {
                () = &mut shutdown => return,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: wait instead of spinning.
                        tracing::warn!(error = %e, "admin endpoint cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(header_timeout * 10, connection).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
