//! Dead letters: the JSON envelope published when a message cannot be processed.
//!
//! The envelope carries everything needed to understand and replay the message:
//! the route and function, the source topic, the payload in base64 (binary-safe),
//! what failed (`error_kind`, `error`, and the gRPC code when the gateway failed),
//! how many attempts were made, and when.

use base64::Engine as _;
use serde::Serialize;

use crate::message::{Inbound, QoS};

/// The stage that failed, as `error_kind` in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Invoke failed permanently, or its retries were used up.
    Gateway,
    /// The plugin's before-invoke hook failed (error, trap, timeout, memory).
    TransformBefore,
    /// The plugin's after-invoke hook failed.
    TransformAfter,
    /// A result could not be published (refused, or no valid topic).
    Publish,
    /// The payload is larger than `mqtt.max_packet_size`.
    Oversize,
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    /// Human-readable reason, self-contained.
    pub error: String,
    /// The plugin's failure class (`guest_error`, `trap`, `timeout`, `memory_limit`, ...), if any.
    pub plugin_error: Option<&'static str>,
    /// The gateway's gRPC status code, e.g. `Internal`.
    pub grpc_code: Option<tonic::Code>,
    /// Invoke attempts made (0 when Invoke was never reached).
    pub attempts: u32,
}

impl Failure {
    pub fn new(stage: Stage, error: impl Into<String>) -> Failure {
        Failure {
            stage,
            error: error.into(),
            plugin_error: None,
            grpc_code: None,
            attempts: 0,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    route: &'a str,
    function: &'a str,
    topic: &'a str,
    qos: u8,
    retain: bool,
    payload_base64: Option<String>,
    payload_size: usize,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    user_properties: &'a [(String, String)],
    error_kind: Stage,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_error: Option<&'static str>,
    grpc_code: Option<String>,
    attempts: u32,
    timestamp: String,
}

/// Renders the envelope. An oversized payload is left out (`payload_base64: null`)
/// so the dead letter itself stays publishable; its size is still given.
pub fn envelope(route: &str, function: &str, msg: &Inbound, failure: &Failure) -> Vec<u8> {
    let include_payload = failure.stage != Stage::Oversize;
    let env = Envelope {
        route,
        function,
        topic: &msg.topic,
        qos: u8::from(msg.qos),
        retain: msg.retain,
        payload_base64: include_payload
            .then(|| base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
        payload_size: msg.payload.len(),
        user_properties: &msg.user_properties,
        error_kind: failure.stage,
        error: &failure.error,
        plugin_error: failure.plugin_error,
        grpc_code: failure.grpc_code.map(code_name),
        attempts: failure.attempts,
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// The canonical upper-case name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> String {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
    .to_string()
}

/// The dead letter's QoS: confirmed by the broker before the source is acked.
pub const QOS: QoS = QoS::AtLeastOnce;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_envelope_carries_binary_payloads_in_base64() {
        let msg = Inbound {
            topic: "s/1".into(),
            payload: Bytes::from_static(&[0xff, 0x00, 0xfe]),
            qos: QoS::AtLeastOnce,
            retain: false,
            user_properties: vec![],
            content_type: None,
        };
        let mut f = Failure::new(Stage::Gateway, "could not invoke: f - boom");
        f.grpc_code = Some(tonic::Code::Internal);
        f.attempts = 3;
        let v: serde_json::Value = serde_json::from_slice(&envelope("r", "f", &msg, &f)).unwrap();
        assert_eq!(v["payload_base64"], "/wD+");
        assert_eq!(v["payload_size"], 3);
        assert_eq!(v["grpc_code"], "INTERNAL");
        assert_eq!(v["error_kind"], "gateway");
        assert_eq!(v["attempts"], 3);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn oversized_payloads_are_left_out() {
        let msg = Inbound {
            topic: "s/1".into(),
            payload: Bytes::from(vec![1u8; 10]),
            qos: QoS::AtLeastOnce,
            retain: false,
            user_properties: vec![],
            content_type: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&envelope(
            "r",
            "f",
            &msg,
            &Failure::new(Stage::Oversize, "too big"),
        ))
        .unwrap();
        assert!(v["payload_base64"].is_null());
        assert_eq!(v["payload_size"], 10);
    }
}
