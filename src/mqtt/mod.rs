//! The MQTT side of the bridge, over rumqttc, for MQTT 3.1.1 and 5 alike.
//!
//! The bridge holds several connections to the broker:
//! - [`inbound`]: one subscriber per *session* (a group of routes; by default
//!   every route has its own, so one slow route cannot hold back another's
//!   acknowledgements). Stable client id, persistent session, manual
//!   acknowledgements released in arrival order (MQTT-4.6.0-2), resubscription
//!   when the broker has lost the session, and backpressure. The protocol state
//!   of a session lives in [`session`], apart from the network loop.
//! - [`outbound`]: the publisher (client id `<client_id>-pub`, clean session) for
//!   results and dead letters. Each publish resolves only when the broker has
//!   accepted it (PUBACK/PUBCOMP), which is what lets the inbound side acknowledge
//!   the source message. It checks every packet against the size the broker
//!   accepts before handing it over.
//!
//! This module hides the two rumqttc APIs (v4 and v5) behind [`Endpoint`],
//! [`Client`], [`Connection`] and [`Event`], so the rest of the bridge is
//! version-free. An [`Endpoint`] is prepared once (TLS files read, URL parsed)
//! and can open any number of connections without failing.

mod connection;
pub mod inbound;
pub mod outbound;
pub mod session;
pub mod state_file;

use std::time::Duration;

pub use self::connection::{Client, Connection, Endpoint};
use crate::config::Protocol;
use crate::message::{Message, QoS};

/// MQTT's largest packet: what the bridge accepts when reading, so an oversized
/// message can be dead-lettered instead of breaking the connection on every
/// redelivery.
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// A message received from the broker, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Received {
    pub msg: Message,
    pub pkid: u16,
    /// The broker's DUP flag: a redelivery of a message it sent before.
    pub dup: bool,
    /// MQTT 5 subscription identifiers of the subscriptions that matched.
    pub subscription_ids: Vec<usize>,
}

/// A connection event, common to both protocol versions.
#[derive(Debug)]
pub enum Event {
    Connected {
        session_present: bool,
        /// MQTT 5: the largest packet the broker accepts (CONNACK Maximum
        /// Packet Size), if it announced one.
        max_packet_size: Option<u32>,
        /// MQTT 5: the highest QoS the broker takes in a PUBLISH (CONNACK
        /// Maximum QoS), if it announced one.
        max_qos: Option<QoS>,
    },
    Publish(Received),
    /// The broker accepted (or, under MQTT 5, refused) one of our QoS 1 publishes.
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    /// Our QoS 2 publish is complete (or was refused at PUBREC).
    PubComp {
        pkid: u16,
        refused: Option<String>,
    },
    /// A publish request left the client with this packet id (0 for QoS 0).
    PublishSent {
        pkid: u16,
    },
    /// Subscription results, one per filter; `Err` holds the broker's reason.
    SubAck {
        results: Vec<Result<(), String>>,
    },
    /// The broker confirmed an UNSUBSCRIBE.
    UnsubAck,
    /// An acknowledgement of a received message left the client.
    AckSent,
    Other,
}

/// The size of a PUBLISH packet of `msg` as it goes on the wire (fixed header
/// included), which is what a broker compares with its Maximum Packet Size.
/// Only the properties the bridge sends under MQTT 5 are counted: payload
/// format, content type, response topic, correlation data and user properties.
pub fn publish_packet_size(protocol: Protocol, msg: &Message) -> usize {
    let mut remaining = 2 + msg.topic.len() + msg.payload.len();
    if msg.qos != QoS::AtMostOnce {
        remaining += 2; // packet id
    }
    if protocol == Protocol::V5 {
        let mut props = 0;
        if msg.utf8 {
            props += 2;
        }
        if let Some(ct) = &msg.content_type {
            props += 1 + 2 + ct.len();
        }
        if let Some(rt) = &msg.response_topic {
            props += 1 + 2 + rt.len();
        }
        if let Some(cd) = &msg.correlation_data {
            props += 1 + 2 + cd.len();
        }
        for (k, v) in &msg.user_properties {
            props += 1 + 2 + k.len() + 2 + v.len();
        }
        remaining += varint_len(props) + props;
    }
    1 + varint_len(remaining) + remaining
}

/// Bytes of MQTT's variable-length integer encoding of `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A subscription as sent to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subscription {
    pub filter: String,
    pub qos: QoS,
    /// MQTT 5 subscription identifier (1..); ignored under 3.1.1.
    pub id: usize,
}

/// The request channel had no room (or the event loop is gone); the request
/// was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MQTT request channel has no room")]
pub struct NoRoom;

/// Exponential reconnect delays, reset after a successful connection.
#[derive(Debug)]
pub(crate) struct Reconnect {
    policy: crate::config::Backoff,
    failures: u32,
}

impl Reconnect {
    pub(crate) fn new(policy: crate::config::Backoff) -> Self {
        Reconnect {
            policy,
            failures: 0,
        }
    }
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.policy.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        d
    }
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use rumqttc::v5;

    /// The packet size the bridge computes is what rumqttc's encoder writes,
    /// for both versions, at the boundaries of the length encoding.
    #[test]
    fn publish_packet_sizes_match_the_encoder() {
        for payload_len in [0usize, 1, 100, 122, 123, 16_000, 16_380, 70_000, 2_097_140] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let mut m = Message::new("a/b/c", Bytes::from(vec![7u8; payload_len]), qos);
                let mut v4 = rumqttc::Publish::new(&m.topic, qos.into(), m.payload.to_vec());
                v4.pkid = u16::from(qos != QoS::AtMostOnce);
                let mut buf = BytesMut::new();
                let written = v4.write(&mut buf).unwrap();
                assert_eq!(written, buf.len());
                assert_eq!(publish_packet_size(Protocol::V311, &m), buf.len());

                for props in [false, true] {
                    if props {
                        m.content_type = Some("application/json".into());
                        m.utf8 = true;
                        m.user_properties = vec![("k".into(), "v".repeat(300))];
                        m.response_topic = Some("resp/dev-1".into());
                        m.correlation_data = Some(Bytes::from_static(b"\x00id-42"));
                    }
                    let p = v5::mqttbytes::v5::PublishProperties {
                        user_properties: m.user_properties.clone(),
                        content_type: m.content_type.clone(),
                        payload_format_indicator: m.utf8.then_some(1),
                        response_topic: m.response_topic.clone(),
                        correlation_data: m.correlation_data.clone(),
                        ..Default::default()
                    };
                    let mut v5p = v5::mqttbytes::v5::Publish::new(
                        m.topic.as_str(),
                        qos.into(),
                        m.payload.clone(),
                        Some(p),
                    );
                    v5p.pkid = u16::from(qos != QoS::AtMostOnce);
                    let mut buf = BytesMut::new();
                    v5p.write(&mut buf).unwrap();
                    assert_eq!(
                        publish_packet_size(Protocol::V5, &m),
                        buf.len(),
                        "v5, payload {payload_len}, props {props}"
                    );
                }
            }
        }
    }
}
