//! The message types that travel between the stages of the pipeline.
//!
//! [`Message`] is one MQTT application message, independent of the protocol
//! version: what the broker delivered, and what the bridge publishes (results
//! and dead letters). [`PreDecision`] and [`OutMessage`] are what a transform
//! (or the default behaviour) decides before and after Invoke; an
//! [`OutMessage`] becomes a [`Message`] once the route fills in what it left
//! open. Payloads are [`Bytes`] from end to end: nothing here assumes UTF-8.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// MQTT quality of service, shared by config, transforms and the MQTT layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum QoS {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl TryFrom<u8> for QoS {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(format!("QoS must be 0, 1 or 2, not {other}")),
        }
    }
}

impl From<QoS> for u8 {
    fn from(q: QoS) -> u8 {
        match q {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
}

/// One MQTT application message: delivered by the broker, or to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 user properties, in order; empty under MQTT 3.1.1.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 payload format indicator 1: the payload is UTF-8 text.
    pub utf8: bool,
    /// MQTT 5 response topic: where the sender wants the reply (a request).
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data: the sender's tag, returned with the reply.
    pub correlation_data: Option<Bytes>,
    /// MQTT 5 message expiry interval in seconds, as delivered (the broker
    /// counts down the time it held the message). Never sent by the bridge.
    pub expiry_interval: Option<u32>,
}

impl Message {
    /// A message with no MQTT 5 properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            user_properties: Vec::new(),
            content_type: None,
            utf8: false,
            response_topic: None,
            correlation_data: None,
            expiry_interval: None,
        }
    }
}

/// What happens to a message before the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreDecision {
    /// Invoke `function` (the route's own when `None`) with `input`.
    Invoke {
        input: Bytes,
        function: Option<String>,
    },
    /// Do not invoke; the source is acknowledged. `reason` goes to the log.
    Skip { reason: String },
}

/// A result to publish after Invoke, as a transform (or the default) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// `None`: the route's republish topic template.
    pub topic: Option<String>,
    pub payload: Bytes,
    /// `None`: the route's republish QoS.
    pub qos: Option<QoS>,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type; on a reply to a request, `None` keeps the
    /// request's.
    pub content_type: Option<String>,
    /// MQTT 5 payload format indicator: the payload is UTF-8 text.
    pub utf8: bool,
    /// MQTT 5 correlation data; on a reply to a request, `None` keeps the
    /// request's.
    pub correlation_data: Option<Bytes>,
}

impl OutMessage {
    /// The function's reply as a result to the route's target: UTF-8 text
    /// (`Message.Msg` is a string), with `user_properties`.
    pub fn reply(reply: String, user_properties: Vec<(String, String)>) -> OutMessage {
        OutMessage {
            topic: None,
            payload: Bytes::from(reply.into_bytes()),
            qos: None,
            retain: false,
            user_properties,
            content_type: None,
            utf8: true,
            correlation_data: None,
        }
    }
}
