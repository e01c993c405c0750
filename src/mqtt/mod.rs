//! The MQTT side of the bridge, over rumqttc, for MQTT 3.1.1 and 5 alike.
//!
//! The bridge holds two connections to the broker:
//! - [`inbound`]: the subscriber. Stable client id, persistent session, manual
//!   acknowledgements released in arrival order (MQTT-4.6.0-2), resubscription
//!   when the broker has lost the session, and backpressure.
//! - [`outbound`]: the publisher (client id `<client_id>-pub`, clean session) for
//!   results and dead letters. Each publish resolves only when the broker has
//!   accepted it (PUBACK/PUBCOMP), which is what lets the inbound side acknowledge
//!   the source message.
//!
//! This module hides the two rumqttc APIs (v4 and v5) behind [`Client`],
//! [`Connection`] and [`Event`], so the rest of the bridge is version-free.

pub mod inbound;
pub mod outbound;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{TlsConfiguration, Transport};

use crate::config::{Config, Protocol};
use crate::message::{Inbound, QoS};

/// MQTT's largest packet: what the 3.1.1 reader accepts, so an oversized message
/// can be dead-lettered instead of breaking the connection on every redelivery.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// Which of the two connections is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
}

/// A message received from the broker, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Received {
    pub msg: Inbound,
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
    Other,
}

fn to_v4(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn from_v4(q: rumqttc::QoS) -> QoS {
    match q {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn to_v5(q: QoS) -> v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn from_v5(q: v5::mqttbytes::QoS) -> QoS {
    match q {
        v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Host, port and whether TLS is wanted, from an `mqtt://` or `mqtts://` URL.
fn endpoint(url: &str) -> Result<(String, u16, bool)> {
    let (scheme, rest) = url.split_once("://").context("MQTT URL has no scheme")?;
    let tls = match scheme {
        "mqtt" => false,
        "mqtts" => true,
        other => bail!("unsupported MQTT scheme {other:?}"),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').context("MQTT URL has no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((
        host.to_string(),
        port.parse().context("invalid MQTT port")?,
        tls,
    ))
}

/// The sending half of a connection (requests to the event loop).
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop of a connection; only its owner task polls it.
pub enum Connection {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// Builds a connection of the given role; nothing connects until it is polled.
/// `capacity` sizes the request channel, which the owner keeps from filling.
pub fn connect(cfg: &Config, role: Role, capacity: usize) -> Result<(Client, Connection)> {
    let (host, port, tls) = endpoint(&cfg.mqtt_url)?;
    let m = &cfg.mqtt;
    let (client_id, persistent) = match role {
        Role::Subscriber => (m.client_id.clone(), m.persistent_session),
        Role::Publisher => (format!("{}-pub", m.client_id), false),
    };
    let transport = if tls {
        Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
            crate::tls::client_config(m.tls.as_ref(), &cfg.base_dir, "MQTT")?,
        )))
    } else {
        Transport::tcp()
    };
    let timeout_secs = m.connect_timeout.as_secs().max(1);
    let max_packet = m.max_packet_size.as_usize();
    match m.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, host, port);
            o.set_keep_alive(m.keep_alive)
                .set_clean_session(!persistent)
                .set_manual_acks(role == Role::Subscriber)
                .set_max_packet_size(MQTT_MAX_PACKET, max_packet.max(64 * 1024) + 64 * 1024)
                .set_request_channel_capacity(capacity)
                .set_transport(transport);
            if let Some(c) = &cfg.credentials {
                o.set_credentials(c.username.clone(), c.password.clone().unwrap_or_default());
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, capacity);
            let mut net = eventloop.network_options();
            net.set_connection_timeout(timeout_secs);
            eventloop.set_network_options(net);
            Ok((Client::V4(client), Connection::V4(Box::new(eventloop))))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(client_id, host, port);
            o.set_keep_alive(m.keep_alive)
                .set_clean_start(!persistent)
                .set_manual_acks(role == Role::Subscriber)
                .set_request_channel_capacity(capacity)
                .set_connection_timeout(timeout_secs)
                .set_transport(transport);
            // Advertised to the broker and enforced by rumqttc when reading. A
            // broker discards (without a trace) a message larger than what the
            // client advertises (MQTT-3.1.2-25), so advertising
            // `mqtt.max_packet_size` would lose oversize messages instead of
            // dead-lettering them. As under 3.1.1, accept MQTT's largest packet;
            // the pipeline dead-letters what exceeds `max_packet_size`.
            o.set_max_packet_size(Some(u32::try_from(MQTT_MAX_PACKET).unwrap_or(u32::MAX)));
            if persistent {
                let secs = u32::try_from(m.session_expiry.as_secs()).unwrap_or(u32::MAX);
                o.set_session_expiry_interval(Some(secs));
            }
            if role == Role::Subscriber {
                // Flow control: the broker sends at most this many unacknowledged messages.
                o.set_receive_maximum(Some(u16::try_from(m.max_pending).unwrap_or(u16::MAX)));
            }
            if let Some(c) = &cfg.credentials {
                o.set_credentials(c.username.clone(), c.password.clone().unwrap_or_default());
            }
            let (client, eventloop) = v5::AsyncClient::new(o, capacity);
            Ok((Client::V5(client), Connection::V5(Box::new(eventloop))))
        }
    }
}

/// A subscription as sent to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    pub filter: String,
    pub qos: QoS,
    /// MQTT 5 subscription identifier (1..); ignored under 3.1.1.
    pub id: usize,
}

impl Client {
    /// Queues the acknowledgement of a received QoS 1/2 message.
    pub fn try_ack(&self, qos: QoS, pkid: u16) -> Result<()> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", to_v4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).context("MQTT request channel full")
            }
            Client::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", to_v5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).context("MQTT request channel full")
            }
        }
    }

    /// Queues SUBSCRIBE packets and returns how many. Under MQTT 5 each filter
    /// gets its own packet, because a subscription identifier applies to a whole
    /// packet.
    ///
    /// Subscriptions are made at QoS 1 at most: the bridge's guarantee is at
    /// least once, and rumqttc cannot resume an inbound QoS 2 handshake. It
    /// forgets the packet ids of received QoS 2 messages on every disconnect,
    /// treats the PUBREL the broker resends on the resumed session as
    /// unsolicited and drops the connection, forever. A message published at
    /// QoS 2 reaches the bridge at QoS 1.
    pub fn try_subscribe(&self, subs: &[Subscription]) -> Result<usize> {
        if subs.is_empty() {
            return Ok(0);
        }
        let qos = |s: &Subscription| s.qos.min(QoS::AtLeastOnce);
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| rumqttc::SubscribeFilter::new(s.filter.clone(), to_v4(qos(s)))),
                )
                .map(|()| 1)
                .context("cannot queue SUBSCRIBE"),
            Client::V5(c) => {
                for s in subs {
                    let props = v5::mqttbytes::v5::SubscribeProperties {
                        id: Some(s.id),
                        user_properties: Vec::new(),
                    };
                    c.try_subscribe_with_properties(s.filter.clone(), to_v5(qos(s)), props)
                        .context("cannot queue SUBSCRIBE")?;
                }
                Ok(subs.len())
            }
        }
    }

    /// Queues an UNSUBSCRIBE.
    pub fn try_unsubscribe(&self, filter: &str) -> Result<()> {
        match self {
            Client::V4(c) => c
                .try_unsubscribe(filter)
                .context("cannot queue UNSUBSCRIBE"),
            Client::V5(c) => c
                .try_unsubscribe(filter)
                .context("cannot queue UNSUBSCRIBE"),
        }
    }

    /// Queues a PUBLISH. User properties and content type exist only under MQTT 5.
    pub fn try_publish(&self, p: &Publish) -> Result<()> {
        match self {
            Client::V4(c) => c
                .try_publish(p.topic.clone(), to_v4(p.qos), p.retain, p.payload.to_vec())
                .context("cannot queue PUBLISH"),
            Client::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    user_properties: p.user_properties.clone(),
                    content_type: p.content_type.clone(),
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    p.topic.clone(),
                    to_v5(p.qos),
                    p.retain,
                    p.payload.clone(),
                    props,
                )
                .context("cannot queue PUBLISH")
            }
        }
    }

    /// Queues a DISCONNECT (the session stays with the broker).
    pub fn try_disconnect(&self) -> Result<()> {
        match self {
            Client::V4(c) => c.try_disconnect().context("cannot queue DISCONNECT"),
            Client::V5(c) => c.try_disconnect().context("cannot queue DISCONNECT"),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

impl Connection {
    /// Next event; reconnects when polled after an error. Not cancel-safe:
    /// owners keep one `poll` future alive until it completes.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Connection::V4(el) => el.poll().await.map(event_v4).map_err(|e| e.to_string()),
            Connection::V5(el) => el.poll().await.map(event_v5).map_err(|e| e.to_string()),
        }
    }
}

fn event_v4(ev: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Outgoing, Packet};
    match ev {
        E::Incoming(Packet::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
        },
        E::Incoming(Packet::Publish(p)) => Event::Publish(Received {
            pkid: p.pkid,
            dup: p.dup,
            subscription_ids: Vec::new(),
            msg: Inbound {
                topic: p.topic,
                payload: p.payload,
                qos: from_v4(p.qos),
                retain: p.retain,
                user_properties: Vec::new(),
                content_type: None,
            },
        }),
        E::Incoming(Packet::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            refused: None,
        },
        E::Incoming(Packet::PubComp(c)) => Event::PubComp {
            pkid: c.pkid,
            refused: None,
        },
        E::Incoming(Packet::SubAck(s)) => Event::SubAck {
            results: s
                .return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(_) => Ok(()),
                    rumqttc::SubscribeReasonCode::Failure => {
                        Err("refused by the broker".to_string())
                    }
                })
                .collect(),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::PublishSent { pkid },
        _ => Event::Other,
    }
}

fn event_v5(ev: v5::Event) -> Event {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
    match ev {
        v5::Event::Incoming(Packet::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
        },
        v5::Event::Incoming(Packet::Publish(p)) => {
            let (user_properties, content_type, subscription_ids) = match p.properties {
                Some(props) => (
                    props.user_properties,
                    props.content_type,
                    props.subscription_identifiers,
                ),
                None => (Vec::new(), None, Vec::new()),
            };
            Event::Publish(Received {
                pkid: p.pkid,
                dup: p.dup,
                subscription_ids,
                msg: Inbound {
                    // MQTT 5 topics are UTF-8 by the spec; a broker that breaks it
                    // still gets its message processed, under a lossy topic.
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    qos: from_v5(p.qos),
                    retain: p.retain,
                    user_properties,
                    content_type,
                },
            })
        }
        v5::Event::Incoming(Packet::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            refused: match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                other => Some(format!("{other:?}")),
            },
        },
        v5::Event::Incoming(Packet::PubRec(r)) => match r.reason {
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Event::Other,
            other => Event::PubComp {
                pkid: r.pkid,
                refused: Some(format!("{other:?}")),
            },
        },
        v5::Event::Incoming(Packet::PubComp(c)) => Event::PubComp {
            pkid: c.pkid,
            refused: None,
        },
        v5::Event::Incoming(Packet::SubAck(s)) => Event::SubAck {
            results: s
                .return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(_) => Ok(()),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        },
        v5::Event::Outgoing(Outgoing::Publish(pkid)) => Event::PublishSent { pkid },
        _ => Event::Other,
    }
}

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

    #[test]
    fn endpoints_parse_scheme_host_and_port() {
        assert_eq!(
            endpoint("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            endpoint("mqtts://broker.local:8883/").unwrap(),
            ("broker.local".into(), 8883, true)
        );
        assert_eq!(
            endpoint("mqtt://[::1]:1883").unwrap(),
            ("::1".into(), 1883, false)
        );
        assert!(endpoint("ws://x:1").is_err());
    }
}
