//! The message types that travel between the stages of the pipeline.
//!
//! [`Inbound`] is a message as it arrived from the broker, independent of the MQTT
//! protocol version; [`PreDecision`] and [`OutMessage`] are what a transform (or the
//! default behaviour) decides before and after Invoke. Payloads are [`Bytes`] from
//! end to end: nothing here assumes UTF-8.

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

/// A message delivered by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 user properties, in order; empty under MQTT 3.1.1.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
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

/// A message to publish after Invoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// `None`: the route's republish topic template.
    pub topic: Option<String>,
    pub payload: Bytes,
    /// `None`: the route's republish QoS.
    pub qos: Option<QoS>,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
}
