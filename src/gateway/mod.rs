//! The OpenFx gateway client: one long-lived HTTP/2 connection, many concurrent calls.
//!
//! Every Invoke carries its own deadline (the gateway's is minutes long), the
//! number of calls in flight is capped by a semaphore shared by all routes, and
//! the connection is opened lazily ([`channel`]), so the bridge starts (and keeps
//! its MQTT session) while the gateway is still down. TLS is used for `https://`
//! URLs; the config loader refuses TLS settings with an `http://` URL.

pub mod channel;
pub mod standin;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::config::GatewayConfig;
use crate::proto::fx_gateway_client::FxGatewayClient;
use crate::proto::InvokeServiceRequest;
use channel::H2Channel;

/// A cloneable handle on the gateway; clones share the connection and the call limit.
#[derive(Clone)]
pub struct Gateway {
    client: FxGatewayClient<H2Channel>,
    slots: Arc<Semaphore>,
}

impl Gateway {
    /// Prepares the connection without connecting; `base` anchors relative TLS paths.
    pub fn new(cfg: &GatewayConfig, base: &Path) -> Result<Gateway> {
        Gateway::with_metrics(cfg, base, Arc::default())
    }

    /// As [`Gateway::new`], counting connections in `metrics`.
    pub fn with_metrics(
        cfg: &GatewayConfig,
        base: &Path,
        metrics: Arc<crate::metrics::GatewayMetrics>,
    ) -> Result<Gateway> {
        let origin: http::Uri = cfg
            .url
            .parse()
            .with_context(|| format!("invalid gateway URL {:?}", cfg.url))?;
        let client = FxGatewayClient::with_origin(H2Channel::new(cfg, base, metrics)?, origin)
            .max_decoding_message_size(cfg.max_message_size.as_usize());
        Ok(Gateway {
            client,
            slots: Arc::new(Semaphore::new(cfg.max_concurrent)),
        })
    }

    /// Calls `FxGateway.Invoke(function, input)` within `deadline`.
    ///
    /// The deadline is sent to the gateway (`grpc-timeout`) and also enforced
    /// here, so a gateway that ignores it cannot hold a call forever. Time spent
    /// waiting for a free call slot does not count against it.
    pub async fn invoke(
        &self,
        function: &str,
        input: Bytes,
        deadline: Duration,
    ) -> Result<String, Status> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Status::new(Code::Cancelled, "gateway client closed"))?;
        let mut request = tonic::Request::new(InvokeServiceRequest {
            service: function.to_string(),
            input,
        });
        request.set_timeout(deadline);
        let mut client = self.client.clone();
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(deadline, client.invoke(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().msg),
            // A server that enforces `grpc-timeout` itself (tonic does) ends the
            // expired call with CANCELLED, which retry policies do not list: for
            // the bridge it is its deadline that passed.
            Ok(Err(status))
                if status.code() == Code::Cancelled && started.elapsed() >= deadline =>
            {
                Err(Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "no reply within {} ({})",
                        humantime::format_duration(deadline),
                        status.message()
                    ),
                ))
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::new(
                Code::DeadlineExceeded,
                format!("no reply within {}", humantime::format_duration(deadline)),
            )),
        }
    }

    /// Calls `FxGateway.HealthCheck`; used for readiness.
    pub async fn health_check(&self, deadline: Duration) -> Result<String, Status> {
        let mut request = tonic::Request::new(crate::proto::Empty {});
        request.set_timeout(deadline);
        let mut client = self.client.clone();
        match tokio::time::timeout(deadline, client.health_check(request)).await {
            Ok(r) => r.map(|m| m.into_inner().msg),
            Err(_) => Err(Status::new(
                Code::DeadlineExceeded,
                "health check timed out",
            )),
        }
    }
}
