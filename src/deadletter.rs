//! Dead letters: the JSON envelope published when a message cannot be processed.
//!
//! The envelope carries everything needed to understand and replay the message:
//! the route and function, the source topic, the payload in base64 (binary-safe)
//! with its size and sha256, what failed (`error_kind`, `error`, and the gRPC
//! code when the gateway failed), how many attempts were made, and when.
//!
//! A dead letter must always be publishable, or the message it stands for could
//! be neither processed nor put aside. [`envelope`] is given the largest
//! payload the broker accepts on the dead-letter topic and gives up detail,
//! step by step, until the envelope fits: first the payload (its size and hash
//! stay, `omitted` says so), then the user properties, then it shortens the
//! error text and the source topic (`truncated` says which).

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::message::{Message, QoS};

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
    /// MQTT 5: the payload format indicator says UTF-8 and the payload is not.
    PayloadFormatInvalid,
    /// A result is larger than the broker accepts (`mqtt.max_packet_size`, or
    /// under MQTT 5 the broker's Maximum Packet Size).
    ResultTooLarge,
    /// No route takes the message: its route was removed, or its filter was
    /// left subscribed by an earlier configuration.
    Unrouted,
    /// A plugin's result names a topic its route may not publish to
    /// (`republish.allow`, the loop and dead-letter guards, RETAIN).
    OutputRefused,
    /// A plugin returned more results, or more bytes, than its route allows.
    OutputLimit,
}

impl Stage {
    /// The name in the envelope's `error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Gateway => "gateway",
            Stage::TransformBefore => "transform-before",
            Stage::TransformAfter => "transform-after",
            Stage::Publish => "publish",
            Stage::Oversize => "oversize",
            Stage::PayloadFormatInvalid => "payload-format-invalid",
            Stage::ResultTooLarge => "result-too-large",
            Stage::Unrouted => "unrouted",
            Stage::OutputRefused => "output-refused",
            Stage::OutputLimit => "output-limit",
        }
    }
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

/// Where the message was when it failed: its route and function (none for an
/// unrouted message) and the message itself.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub route: Option<&'a str>,
    pub function: Option<&'a str>,
    pub msg: &'a Message,
}

#[derive(Serialize)]
struct Envelope<'a> {
    route: Option<&'a str>,
    function: Option<&'a str>,
    topic: &'a str,
    qos: u8,
    retain: bool,
    payload_base64: Option<String>,
    payload_size: usize,
    payload_sha256: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    user_properties: &'a [(String, String)],
    error_kind: Stage,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_error: Option<&'static str>,
    grpc_code: Option<String>,
    attempts: u32,
    timestamp: String,
    /// Fields left out so the envelope fits: `payload`, `user_properties`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    omitted: Vec<&'static str>,
    /// Fields shortened so the envelope fits: `error`, `topic`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    truncated: Vec<&'static str>,
}

/// At most this many bytes of the error and the source topic in an envelope
/// that had to be shortened.
const SHORT: usize = 256;

/// The longest prefix of `s` of at most `max` bytes that ends on a character.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Renders the envelope in at most `max_len` bytes, giving up detail until it
/// fits (see the module doc); `None` if even the shortest form does not.
pub fn envelope(source: Source<'_>, failure: &Failure, max_len: usize) -> Option<Vec<u8>> {
    let msg = source.msg;
    let mut env = Envelope {
        route: source.route,
        function: source.function,
        topic: &msg.topic,
        qos: u8::from(msg.qos),
        retain: msg.retain,
        payload_base64: None,
        payload_size: msg.payload.len(),
        payload_sha256: format!("{:x}", Sha256::digest(&msg.payload)),
        user_properties: &msg.user_properties,
        error_kind: failure.stage,
        error: &failure.error,
        plugin_error: failure.plugin_error,
        grpc_code: failure.grpc_code.map(code_name),
        attempts: failure.attempts,
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        omitted: Vec::new(),
        truncated: Vec::new(),
    };
    // Serialising plain strings and numbers cannot fail.
    let render = |env: &Envelope<'_>| serde_json::to_vec(env).unwrap_or_default();
    // Base64 takes 4 bytes per 3: skip encoding a payload that cannot fit anyway.
    if msg.payload.len().div_ceil(3) * 4 < max_len {
        env.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&msg.payload));
        let full = render(&env);
        if full.len() <= max_len {
            return Some(full);
        }
        env.payload_base64 = None;
    }
    env.omitted.push("payload");
    let without_payload = render(&env);
    if without_payload.len() <= max_len {
        return Some(without_payload);
    }
    if !env.user_properties.is_empty() {
        env.user_properties = &[];
        env.omitted.push("user_properties");
    }
    if env.error.len() > SHORT {
        env.error = prefix(env.error, SHORT);
        env.truncated.push("error");
    }
    if env.topic.len() > SHORT {
        env.topic = prefix(env.topic, SHORT);
        env.truncated.push("topic");
    }
    let shortest = render(&env);
    (shortest.len() <= max_len).then_some(shortest)
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
    fn stage_names_are_the_envelopes_error_kinds() {
        use Stage::*;
        for stage in [
            Gateway,
            TransformBefore,
            TransformAfter,
            Publish,
            Oversize,
            PayloadFormatInvalid,
            ResultTooLarge,
            Unrouted,
            OutputRefused,
            OutputLimit,
        ] {
            assert_eq!(serde_json::json!(stage), serde_json::json!(stage.as_str()));
        }
    }

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn source(msg: &Message) -> Source<'_> {
        Source {
            route: Some("r"),
            function: Some("f"),
            msg,
        }
    }

    #[test]
    fn the_envelope_carries_binary_payloads_in_base64() {
        let msg = Message::new(
            "s/1",
            Bytes::from_static(&[0xff, 0x00, 0xfe]),
            QoS::AtLeastOnce,
        );
        let mut f = Failure::new(Stage::Gateway, "could not invoke: f - boom");
        f.grpc_code = Some(tonic::Code::Internal);
        f.attempts = 3;
        let v = parse(&envelope(source(&msg), &f, 10_000).unwrap());
        assert_eq!(v["payload_base64"], "/wD+");
        assert_eq!(v["payload_size"], 3);
        assert_eq!(
            v["payload_sha256"],
            format!("{:x}", Sha256::digest([0xff, 0x00, 0xfe]))
        );
        assert_eq!(v["grpc_code"], "INTERNAL");
        assert_eq!(v["error_kind"], "gateway");
        assert_eq!(v["attempts"], 3);
        assert!(v.get("omitted").is_none());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn detail_is_given_up_step_by_step_until_the_envelope_fits() {
        let mut msg = Message::new("s/1", Bytes::from(vec![1u8; 3000]), QoS::AtLeastOnce);
        msg.user_properties = vec![("k".into(), "v".repeat(2000))];
        let f = Failure::new(Stage::ResultTooLarge, "e".repeat(3000));
        // Everything fits in a big budget.
        let all = envelope(source(&msg), &f, 100_000).unwrap();
        assert_eq!(parse(&all)["payload_size"], 3000);
        assert!(parse(&all)["payload_base64"].is_string());
        // Without the payload: 3000 + 2000 + JSON.
        let v = parse(&envelope(source(&msg), &f, 6000).unwrap());
        assert!(v["payload_base64"].is_null());
        assert_eq!(v["omitted"], serde_json::json!(["payload"]));
        assert_eq!(v["error"].as_str().unwrap().len(), 3000);
        assert_eq!(v["error_kind"], "result-too-large");
        // Shortest form: no user properties, short error.
        let short = envelope(source(&msg), &f, 1024).unwrap();
        assert!(short.len() <= 1024);
        let v = parse(&short);
        assert_eq!(
            v["omitted"],
            serde_json::json!(["payload", "user_properties"])
        );
        assert_eq!(v["truncated"], serde_json::json!(["error"]));
        assert_eq!(v["payload_size"], 3000);
        // Nothing fits in 100 bytes.
        assert!(envelope(source(&msg), &f, 100).is_none());
    }

    #[test]
    fn an_unrouted_message_has_no_route_and_a_cut_topic_stays_utf8() {
        let topic = format!("a/{}", "é".repeat(300));
        let msg = Message::new(topic, Bytes::from_static(b"x"), QoS::AtLeastOnce);
        let src = Source {
            route: None,
            function: None,
            msg: &msg,
        };
        let v = parse(&envelope(src, &Failure::new(Stage::Unrouted, "no route"), 900).unwrap());
        assert!(v["route"].is_null() && v["function"].is_null());
        assert_eq!(v["error_kind"], "unrouted");
        assert_eq!(v["truncated"], serde_json::json!(["topic"]));
        assert!(v["topic"].as_str().unwrap().len() <= SHORT);
    }
}
