//! The OpenFx gateway client: one long-lived HTTP/2 connection, many concurrent calls.
//!
//! Every Invoke carries its own deadline (the gateway's is minutes long), the
//! number of calls in flight is capped by a semaphore shared by all routes, and
//! the connection is opened lazily ([`channel`]), so the bridge starts (and keeps
//! its MQTT session) while the gateway is still down. TLS is used for `https://`
//! URLs; the config loader refuses TLS settings with an `http://` URL.
//!
//! A reply that is not a valid protobuf `Message` is reported apart from the
//! gateway's own errors ([`InvokeError::InvalidReply`]): asking again would get
//! the same reply, so it is not retried.

pub mod channel;
pub mod standin;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::config::GatewayConfig;
use crate::proto::fx_gateway_client::FxGatewayClient;
use crate::proto::{InvokeServiceRequest, Message};
use channel::H2Channel;

/// Why an Invoke did not return a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// The call failed with this status: the gateway's, or the bridge's own
    /// (deadline, unreachable gateway).
    #[error("{0}")]
    Status(Status),
    /// The gateway answered, but its reply is not a protobuf `Message`.
    #[error("{0}")]
    InvalidReply(Status),
}

impl InvokeError {
    pub fn status(&self) -> &Status {
        match self {
            InvokeError::Status(s) | InvokeError::InvalidReply(s) => s,
        }
    }

    pub fn code(&self) -> Code {
        self.status().code()
    }

    pub fn message(&self) -> &str {
        self.status().message()
    }

    /// Whether the gateway could not be reached at all (nothing was sent), as
    /// opposed to a call that failed after its request went out.
    pub fn unreachable(&self) -> bool {
        matches!(self, InvokeError::Status(s) if s.code() == Code::Unavailable && !s.metadata().contains_key(channel::SENT))
    }
}

/// Marks a status made from a reply that did not decode.
const INVALID_REPLY: &str = "x-fxbridge-invalid-reply";

/// tonic's protobuf codec, with decoding failures marked as [`INVALID_REPLY`]
/// (tonic reports them as plain INTERNAL, like a gateway's own failure).
#[derive(Default)]
struct InvokeCodec(ProstCodec<InvokeServiceRequest, Message>);

struct MarkingDecoder<D>(D);

impl Codec for InvokeCodec {
    type Encode = InvokeServiceRequest;
    type Decode = Message;
    type Encoder = <ProstCodec<InvokeServiceRequest, Message> as Codec>::Encoder;
    type Decoder = MarkingDecoder<<ProstCodec<InvokeServiceRequest, Message> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MarkingDecoder(self.0.decoder())
    }
}

impl<D: Decoder<Item = Message, Error = Status>> Decoder for MarkingDecoder<D> {
    type Item = Message;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Message>, Status> {
        self.0.decode(buf).map_err(|s| {
            let mut s = Status::internal(format!(
                "the gateway's reply is not a valid Message: {}",
                s.message()
            ));
            s.metadata_mut().insert(
                INVALID_REPLY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// A cloneable handle on the gateway; clones share the connection and the call limit.
#[derive(Clone)]
pub struct Gateway {
    client: FxGatewayClient<H2Channel>,
    grpc: tonic::client::Grpc<H2Channel>,
    slots: Arc<Semaphore>,
    /// `gateway.forward_user_properties`, lowercased: metadata keys.
    forward: Arc<[MetadataKey<Ascii>]>,
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
        let channel = H2Channel::new(cfg, base, metrics)?;
        let client = FxGatewayClient::with_origin(channel.clone(), origin.clone())
            .max_decoding_message_size(cfg.max_message_size.as_usize());
        let grpc = tonic::client::Grpc::with_origin(channel, origin)
            .max_decoding_message_size(cfg.max_message_size.as_usize());
        let forward = cfg
            .forward_user_properties
            .iter()
            .map(|name| {
                MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .with_context(|| format!("{name:?} cannot be a gRPC metadata key"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gateway {
            client,
            grpc,
            slots: Arc::new(Semaphore::new(cfg.max_concurrent)),
            forward: forward.into(),
        })
    }

    /// Calls `FxGateway.Invoke(function, input)` within `deadline`.
    ///
    /// The deadline is sent to the gateway (`grpc-timeout`) and also enforced
    /// here, so a gateway that ignores it cannot hold a call forever. Time spent
    /// waiting for a free call slot does not count against it.
    ///
    /// Of `properties` (a message's MQTT 5 user properties), those named in
    /// `gateway.forward_user_properties` go along as metadata, in order; a
    /// value that is not visible ASCII (what gRPC metadata can carry) is left
    /// out.
    pub async fn invoke(
        &self,
        function: &str,
        input: Bytes,
        deadline: Duration,
        properties: &[(String, String)],
    ) -> Result<String, InvokeError> {
        let _slot = self.slots.acquire().await.map_err(|_| {
            InvokeError::Status(Status::new(Code::Cancelled, "gateway client closed"))
        })?;
        let mut request = tonic::Request::new(InvokeServiceRequest {
            service: function.to_string(),
            input,
        });
        request.set_timeout(deadline);
        for (name, value) in properties {
            let key = self
                .forward
                .iter()
                .find(|k| k.as_str().eq_ignore_ascii_case(name));
            if let (Some(key), Ok(value)) = (key, MetadataValue::try_from(value.as_str())) {
                request.metadata_mut().append(key.clone(), value);
            }
        }
        let mut grpc = self.grpc.clone();
        let started = tokio::time::Instant::now();
        let call = async move {
            // The channel is always ready: it waits for the connection per call.
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("gateway not ready: {e}")))?;
            let path = http::uri::PathAndQuery::from_static("/pb.FxGateway/Invoke");
            grpc.unary(request, path, InvokeCodec::default()).await
        };
        let status = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(reply)) => return Ok(reply.into_inner().msg),
            Ok(Err(status)) if status.metadata().contains_key(INVALID_REPLY) => {
                return Err(InvokeError::InvalidReply(status))
            }
            // A server that enforces `grpc-timeout` itself (tonic does) ends the
            // expired call with CANCELLED, which retry policies do not list: for
            // the bridge it is its deadline that passed.
            Ok(Err(status))
                if status.code() == Code::Cancelled && started.elapsed() >= deadline =>
            {
                Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "no reply within {} ({})",
                        humantime::format_duration(deadline),
                        status.message()
                    ),
                )
            }
            Ok(Err(status)) => status,
            Err(_) => Status::new(
                Code::DeadlineExceeded,
                format!("no reply within {}", humantime::format_duration(deadline)),
            ),
        };
        Err(InvokeError::Status(status))
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
