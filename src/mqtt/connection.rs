//! The two rumqttc APIs (v4 for MQTT 3.1.1, v5) behind one face:
//! [`Endpoint`] (settings prepared once, opening connections without failing),
//! [`Client`] (requests to a connection), [`Connection`] (its event loop,
//! turned into version-free [`Event`]s), and the QoS conversions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::v5;
use rumqttc::{TlsConfiguration, Transport};

use super::{Event, NoRoom, Received, Subscription, MQTT_MAX_PACKET};
use crate::config::{Config, Protocol};
use crate::message::{Message, QoS};

impl From<QoS> for rumqttc::QoS {
    fn from(q: QoS) -> Self {
        match q {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::QoS> for QoS {
    fn from(q: rumqttc::QoS) -> Self {
        match q {
            rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

impl From<QoS> for v5::mqttbytes::QoS {
    fn from(q: QoS) -> Self {
        match q {
            QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
        }
    }
}

impl From<v5::mqttbytes::QoS> for QoS {
    fn from(q: v5::mqttbytes::QoS) -> Self {
        match q {
            v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
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

/// The settings of one connection, checked once (URL parsed, TLS files read),
/// from which connections are opened without failing.
#[derive(Clone)]
pub struct Endpoint {
    options: Options,
    client_id: String,
}

#[derive(Clone)]
enum Options {
    V4 {
        options: Box<rumqttc::MqttOptions>,
        connect_timeout_secs: u64,
    },
    V5(Box<v5::MqttOptions>),
}

impl Endpoint {
    /// A subscriber of one session: client id `client_id`, the config's
    /// persistence, manual acknowledgements; under MQTT 5 the broker sends at
    /// most `receive_maximum` unacknowledged messages.
    pub fn subscriber(cfg: &Config, client_id: &str, receive_maximum: usize) -> Result<Endpoint> {
        let receive_maximum = u16::try_from(receive_maximum.max(1)).unwrap_or(u16::MAX);
        Self::build(
            cfg,
            client_id,
            cfg.mqtt.persistent_session,
            Some(receive_maximum),
        )
    }

    /// The publisher: client id `<client_id>-pub`, clean session.
    pub fn publisher(cfg: &Config) -> Result<Endpoint> {
        Self::build(cfg, &format!("{}-pub", cfg.mqtt.client_id), false, None)
    }

    /// `manual_acks` is `receive_maximum.is_some()`: only subscribers acknowledge.
    fn build(
        cfg: &Config,
        client_id: &str,
        persistent: bool,
        receive_maximum: Option<u16>,
    ) -> Result<Endpoint> {
        let (host, port, tls) = endpoint(&cfg.mqtt_url)?;
        let m = &cfg.mqtt;
        let transport = if tls {
            Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
                crate::tls::client_config(m.tls.as_ref(), &cfg.base_dir, "MQTT")?,
            )))
        } else {
            Transport::tcp()
        };
        let connect_timeout_secs = m.connect_timeout.as_secs().max(1);
        let manual_acks = receive_maximum.is_some();
        let options = match m.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, host, port);
                // Outgoing packets are checked against `mqtt.max_packet_size`
                // before they reach rumqttc (outbound), so its own limit never
                // refuses one after it was queued.
                o.set_keep_alive(m.keep_alive)
                    .set_clean_session(!persistent)
                    .set_manual_acks(manual_acks)
                    .set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET)
                    .set_transport(transport);
                if let Some(c) = &cfg.credentials {
                    o.set_credentials(c.username.clone(), c.password.clone().unwrap_or_default());
                }
                Options::V4 {
                    options: Box::new(o),
                    connect_timeout_secs,
                }
            }
            Protocol::V5 => {
                let mut o = v5::MqttOptions::new(client_id, host, port);
                o.set_keep_alive(m.keep_alive)
                    .set_clean_start(!persistent)
                    .set_manual_acks(manual_acks)
                    .set_connection_timeout(connect_timeout_secs)
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
                // Flow control: the broker sends at most this many unacknowledged
                // messages (MQTT-3.3.4-9).
                o.set_receive_maximum(receive_maximum);
                if let Some(c) = &cfg.credentials {
                    o.set_credentials(c.username.clone(), c.password.clone().unwrap_or_default());
                }
                Options::V5(Box::new(o))
            }
        };
        Ok(Endpoint {
            options,
            client_id: client_id.to_string(),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The same settings under another client id (another session).
    pub fn with_client_id(&self, client_id: &str) -> Endpoint {
        let mut options = self.options.clone();
        match &mut options {
            Options::V4 { options, .. } => {
                options.set_client_id(client_id.to_string());
            }
            Options::V5(options) => {
                options.set_client_id(client_id.to_string());
            }
        }
        Endpoint {
            options,
            client_id: client_id.to_string(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.options {
            Options::V4 { .. } => Protocol::V311,
            Options::V5(_) => Protocol::V5,
        }
    }

    /// A new client and event loop; nothing connects until the loop is polled.
    /// `capacity` sizes the request channel.
    pub fn open(&self, capacity: usize) -> (Client, Connection) {
        match &self.options {
            Options::V4 {
                options,
                connect_timeout_secs,
            } => {
                let mut options = options.as_ref().clone();
                options.set_request_channel_capacity(capacity);
                let (client, mut eventloop) = rumqttc::AsyncClient::new(options, capacity);
                let mut net = eventloop.network_options();
                net.set_connection_timeout(*connect_timeout_secs);
                eventloop.set_network_options(net);
                (Client::V4(client), Connection::V4(Box::new(eventloop)))
            }
            Options::V5(options) => {
                let mut options = options.as_ref().clone();
                options.set_request_channel_capacity(capacity);
                let (client, eventloop) = v5::AsyncClient::new(options, capacity);
                (Client::V5(client), Connection::V5(Box::new(eventloop)))
            }
        }
    }
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

impl Client {
    /// Queues the acknowledgement of a received QoS 1/2 message.
    pub fn try_ack(&self, qos: QoS, pkid: u16) -> Result<(), NoRoom> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos.into(), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| NoRoom)
            }
            Client::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", qos.into(), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| NoRoom)
            }
        }
    }

    /// Queues the SUBSCRIBE packets of `subs`. Under MQTT 5 each filter gets its
    /// own packet (a subscription identifier applies to a whole packet), so
    /// this returns how many SUBACKs to expect. All or nothing: on `NoRoom`
    /// under MQTT 5 the filters queued before the failure are returned too, so
    /// the caller can retry only the rest.
    ///
    /// Subscriptions are made at QoS 1 at most: the bridge's guarantee is at
    /// least once, and rumqttc cannot resume an inbound QoS 2 handshake. It
    /// forgets the packet ids of received QoS 2 messages on every disconnect,
    /// treats the PUBREL the broker resends on the resumed session as
    /// unsolicited and drops the connection, forever. A message published at
    /// QoS 2 reaches the bridge at QoS 1.
    pub fn try_subscribe(&self, subs: &[Subscription]) -> Result<usize, (usize, NoRoom)> {
        if subs.is_empty() {
            return Ok(0);
        }
        let qos = |s: &Subscription| s.qos.min(QoS::AtLeastOnce);
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| rumqttc::SubscribeFilter::new(s.filter.clone(), qos(s).into())),
                )
                .map(|()| 1)
                .map_err(|_| (0, NoRoom)),
            Client::V5(c) => {
                for (i, s) in subs.iter().enumerate() {
                    let props = v5::mqttbytes::v5::SubscribeProperties {
                        id: Some(s.id),
                        user_properties: Vec::new(),
                    };
                    c.try_subscribe_with_properties(s.filter.clone(), qos(s).into(), props)
                        .map_err(|_| (i, NoRoom))?;
                }
                Ok(subs.len())
            }
        }
    }

    /// Queues an UNSUBSCRIBE of one filter.
    pub fn try_unsubscribe(&self, filter: &str) -> Result<(), NoRoom> {
        match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|_| NoRoom),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|_| NoRoom),
        }
    }

    /// Queues a PUBLISH. Properties exist only under MQTT 5.
    pub fn try_publish(&self, m: &Message) -> Result<(), NoRoom> {
        match self {
            Client::V4(c) => c
                .try_publish(m.topic.clone(), m.qos.into(), m.retain, m.payload.clone())
                .map_err(|_| NoRoom),
            Client::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    user_properties: m.user_properties.clone(),
                    content_type: m.content_type.clone(),
                    payload_format_indicator: m.utf8.then_some(1),
                    response_topic: m.response_topic.clone(),
                    correlation_data: m.correlation_data.clone(),
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    m.topic.clone(),
                    m.qos.into(),
                    m.retain,
                    m.payload.clone(),
                    props,
                )
                .map_err(|_| NoRoom)
            }
        }
    }

    /// Queues a DISCONNECT (the session stays with the broker).
    pub fn try_disconnect(&self) -> Result<(), NoRoom> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|_| NoRoom),
            Client::V5(c) => c.try_disconnect().map_err(|_| NoRoom),
        }
    }
}

impl Connection {
    /// Next event; reconnects when polled after an error. Not cancel-safe:
    /// owners keep one `poll` future alive until it completes.
    ///
    /// On an error, rumqttc keeps the events it had buffered from the broken
    /// connection and would return them after the reconnect: publishes whose
    /// packet ids belong to the old connection, or a `PublishSent` for a publish
    /// that never left. They are dropped here, so every event after an error
    /// belongs to the new connection (the broker redelivers what was not
    /// acknowledged).
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Connection::V4(el) => match el.poll().await {
                Ok(ev) => Ok(event_v4(ev)),
                Err(e) => {
                    el.state.events.clear();
                    Err(e.to_string())
                }
            },
            Connection::V5(el) => match el.poll().await {
                Ok(ev) => Ok(event_v5(ev)),
                Err(e) => {
                    el.state.events.clear();
                    Err(e.to_string())
                }
            },
        }
    }

    /// Whether [`Connection::write_acks`] can write acknowledgements itself.
    pub fn writes_acks(&self) -> bool {
        matches!(self, Connection::V4(_))
    }

    /// Writes PUBACKs for `pkids` straight to the connection and flushes, in
    /// order, for up to `timeout`. Only between polls (the poll future holds
    /// the event loop otherwise), and only under MQTT 3.1.1: rumqttc takes one
    /// request from its channel per turn of its loop but reads up to ten
    /// packets from the network, so under a steady stream its PUBACKs fall
    /// behind without bound, and a 3.1.1 broker may not limit what it sends
    /// unacknowledged (mosquitto 2.0.11 does not, observed here). MQTT 5 has no
    /// such gap: the broker stops at the Receive Maximum, and the channel
    /// drains. Returns false when there is no connection to write to.
    pub async fn write_acks(&mut self, pkids: &[u16], timeout: Duration) -> Result<bool, String> {
        let Connection::V4(el) = self else {
            return Ok(false);
        };
        let Some(network) = el.network.as_mut() else {
            return Ok(false);
        };
        let write = async {
            for pkid in pkids {
                network
                    .write(rumqttc::Packet::PubAck(rumqttc::PubAck::new(*pkid)))
                    .await?;
            }
            network.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(format!("cannot write acknowledgements: {e}")),
            Err(_) => Err(format!(
                "cannot write acknowledgements: no progress within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Drops the connection after a failure seen outside `poll` (a failed
    /// [`Connection::write_acks`]); the next poll reconnects.
    pub fn reset(&mut self) {
        match self {
            Connection::V4(el) => {
                el.clean();
                el.state.events.clear();
            }
            Connection::V5(el) => {
                el.clean();
                el.state.events.clear();
            }
        }
    }

    /// Lets the event loop write what is queued (acknowledgements, a DISCONNECT)
    /// for up to `timeout`, until the connection closes.
    pub async fn flush(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async { while self.poll().await.is_ok() {} }).await;
    }
}

fn event_v4(ev: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Outgoing, Packet};
    match ev {
        E::Incoming(Packet::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
            max_packet_size: None,
            max_qos: None,
        },
        E::Incoming(Packet::Publish(p)) => Event::Publish(Received {
            pkid: p.pkid,
            dup: p.dup,
            subscription_ids: Vec::new(),
            msg: Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos.into(),
                retain: p.retain,
                user_properties: Vec::new(),
                content_type: None,
                utf8: false,
                response_topic: None,
                correlation_data: None,
                expiry_interval: None,
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
        E::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck,
        E::Outgoing(Outgoing::Publish(pkid)) => Event::PublishSent { pkid },
        E::Outgoing(Outgoing::PubAck(_)) => Event::AckSent,
        _ => Event::Other,
    }
}

fn event_v5(ev: v5::Event) -> Event {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
    match ev {
        v5::Event::Incoming(Packet::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
            max_packet_size: c.properties.as_ref().and_then(|p| p.max_packet_size),
            max_qos: c
                .properties
                .as_ref()
                .and_then(|p| p.max_qos)
                .and_then(|q| QoS::try_from(q).ok()),
        },
        v5::Event::Incoming(Packet::Publish(p)) => {
            let props = p.properties.unwrap_or_default();
            Event::Publish(Received {
                pkid: p.pkid,
                dup: p.dup,
                subscription_ids: props.subscription_identifiers,
                msg: Message {
                    // MQTT 5 topics are UTF-8 by the spec; a broker that breaks it
                    // still gets its message processed, under a lossy topic.
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    qos: p.qos.into(),
                    retain: p.retain,
                    user_properties: props.user_properties,
                    content_type: props.content_type,
                    utf8: props.payload_format_indicator == Some(1),
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    expiry_interval: props.message_expiry_interval,
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
        v5::Event::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck,
        v5::Event::Outgoing(Outgoing::Publish(pkid)) => Event::PublishSent { pkid },
        v5::Event::Outgoing(Outgoing::PubAck(_)) => Event::AckSent,
        _ => Event::Other,
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
