//! The HTTP/2 connection under the gateway client, held by hand.
//!
//! tonic's own `Channel` puts a tower `Buffer` (a queue and a task) in front of
//! hyper's HTTP/2 client, and hyper spawns one more task per call to stream the
//! request body. Both are a thread hop per message that the profile showed
//! (BENCHMARKS.md, fixes 2 and 3). Here tonic's generated client still encodes
//! and decodes every call, but it talks straight to a cloneable hyper
//! `SendRequest`, and the request (one small protobuf message) is sent as a
//! complete body, so a call costs no task of its own.
//!
//! The connection is opened on first use and again after it closes; while the
//! gateway is unreachable every call fails fast with `UNAVAILABLE`, which the
//! route's retry policy handles. While calls are in flight, HTTP/2 PINGs
//! (`gateway.keep_alive`) find a connection that went silent (a black-holed
//! route, a peer that vanished without a reset): it is closed, its calls fail
//! with `UNAVAILABLE`, and the next call opens a new one. No PINGs are sent on
//! an idle connection: gRPC servers (grpc-go's default enforcement policy)
//! answer pings without calls with GOAWAY. Connecting is serialised, and a call that
//! waited while another call's attempt failed takes that failure instead of
//! trying again: a burst of calls against an unreachable gateway (a black-holed
//! address that only times out, say) costs one attempt, not one each in turn.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::Status;

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;

type Sender = SendRequest<Full<Bytes>>;

/// Marks an UNAVAILABLE status of a call whose request had been sent.
pub const SENT: &str = "x-fxbridge-request-sent";
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A cloneable handle on one HTTP/2 connection to the gateway; a `tower`
/// service that tonic's generated client accepts.
#[derive(Clone)]
pub struct H2Channel {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`, for connecting and for messages.
    addr: String,
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    /// HTTP/2 PING interval and timeout while calls are in flight; `None`: off.
    keep_alive: Option<(Duration, Duration)>,
    /// The open connection, if any; replaced when it has closed.
    current: ArcSwapOption<Sender>,
    /// Held while connecting, so concurrent calls share one attempt.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts finished so far, and why the last one failed.
    attempts: AtomicU64,
    last_failure: Mutex<String>,
    metrics: Arc<GatewayMetrics>,
}

impl H2Channel {
    /// Prepares a channel to `cfg.url` without connecting; `base` anchors
    /// relative TLS paths; connections and failures are counted in `metrics`.
    pub fn new(
        cfg: &GatewayConfig,
        base: &Path,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<H2Channel> {
        let uri: http::Uri = cfg
            .url
            .parse()
            .with_context(|| format!("invalid gateway URL {:?}", cfg.url))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!(
                "gateway URL {:?} must start with http:// or https://",
                cfg.url
            ),
        };
        let Some(host) = uri.host() else {
            bail!("gateway URL {:?} has no host", cfg.url);
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let mut config = crate::tls::client_config(cfg.tls.as_ref(), base, "gateway")?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = cfg
                .tls
                .as_ref()
                .and_then(|t| t.server_name.clone())
                .unwrap_or_else(|| host.clone());
            let name = rustls::pki_types::ServerName::try_from(name.clone())
                .with_context(|| format!("invalid gateway TLS server name {name:?}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(H2Channel {
            inner: Arc::new(Inner {
                addr: format!("{host}:{port}"),
                host,
                port,
                tls,
                connect_timeout: cfg.connect_timeout,
                keep_alive: (!cfg.keep_alive.interval.is_zero())
                    .then_some((cfg.keep_alive.interval, cfg.keep_alive.timeout)),
                current: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                last_failure: Mutex::new(String::new()),
                metrics,
            }),
        })
    }
}

impl Inner {
    /// The open connection, opening one first when there is none.
    async fn sender(&self) -> Result<Sender, Status> {
        if let Some(open) = self.open() {
            return Ok(open);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        if let Some(open) = self.open() {
            return Ok(open);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // An attempt failed while this call waited for it: share its outcome.
            let reason = self
                .last_failure
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            return Err(Status::unavailable(reason));
        }
        let outcome = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(Ok(sender)) => Ok(sender),
            Ok(Err(e)) => Err(format!(
                "cannot connect to the gateway at {}: {e:#}",
                self.addr
            )),
            Err(_) => Err(format!(
                "cannot connect to the gateway at {}: no connection within {}",
                self.addr,
                humantime::format_duration(self.connect_timeout)
            )),
        };
        let result = match outcome {
            Ok(sender) => {
                self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(gateway = %self.addr, "connected to the gateway");
                self.current.store(Some(Arc::new(sender.clone())));
                Ok(sender)
            }
            Err(reason) => {
                self.metrics
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_failure.lock() {
                    last.clone_from(&reason);
                }
                Err(Status::unavailable(reason))
            }
        };
        self.attempts.fetch_add(1, Ordering::Release);
        result
    }

    fn open(&self) -> Option<Sender> {
        let current = self.current.load();
        current
            .as_ref()
            .filter(|s| !s.is_closed())
            .map(|s| Sender::clone(s))
    }

    async fn connect(&self) -> Result<Sender> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        match &self.tls {
            None => handshake(tcp, self.keep_alive, &self.metrics).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?;
                handshake(stream, self.keep_alive, &self.metrics).await
            }
        }
    }
}

/// The HTTP/2 handshake; the connection runs on its own task until every
/// sender is gone, the peer closes it, or a PING goes unanswered.
async fn handshake<T>(
    io: T,
    keep_alive: Option<(Duration, Duration)>,
    metrics: &Arc<GatewayMetrics>,
) -> Result<Sender>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some((interval, timeout)) = keep_alive {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(false);
    }
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake")?;
    let metrics = Arc::clone(metrics);
    metrics.open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        match connection.await {
            Ok(()) => tracing::debug!("gateway connection closed"),
            Err(e) => tracing::warn!(error = %e, "gateway connection lost"),
        }
        metrics.open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(sender)
}

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per call: `call` waits for the connection (and for a
        // free HTTP/2 stream) itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // A unary request is one encoded message: collecting it here is a
            // poll or two, and a complete body needs no pipe task in hyper.
            let body = body
                .collect()
                .await
                .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?
                .to_bytes();
            parts.headers.insert(
                http::header::USER_AGENT,
                http::HeaderValue::from_static(concat!("fxbridge/", env!("CARGO_PKG_VERSION"))),
            );
            let request = http::Request::from_parts(parts, Full::new(body));
            let mut sender = inner.sender().await?;
            let lost = |e: hyper::Error| {
                Status::unavailable(format!("gateway connection to {} failed: {e}", inner.addr))
            };
            sender.ready().await.map_err(lost)?;
            // Once the request is on the connection the function may run: a
            // connection lost now is marked, so the retry counts as an attempt
            // (UNAVAILABLE alone means the gateway was not reached).
            let response = sender.send_request(request).await.map_err(|e| {
                let mut status = lost(e);
                status
                    .metadata_mut()
                    .insert(SENT, tonic::metadata::MetadataValue::from_static("1"));
                status
            })?;
            Ok(response)
        })
    }
}
