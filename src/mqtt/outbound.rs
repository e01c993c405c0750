//! The publisher connection: results and dead letters, each confirmed by the broker.
//!
//! rumqttc reports the packet id it gave a publish only as an event
//! (`Outgoing::Publish(pkid)`), in the order the requests were queued. This task
//! is the only one that queues publishes on its connection, so it keeps the
//! waiting callers in that same order: each `PublishSent` event pairs the oldest
//! waiting caller with its packet id, and the matching PUBACK (QoS 1) or PUBCOMP
//! (QoS 2) resolves it. QoS 0 resolves when written.
//!
//! **Every connection is new.** The connection uses a clean session, and when it
//! drops, the task throws the whole rumqttc client away and opens a new one:
//! every caller still waiting is told `ConnectionLost` and publishes again (the
//! source message is not acknowledged meanwhile), and nothing of the old
//! connection (a request still in rumqttc's channel, a `PublishSent` event
//! buffered before the failure, a packet id collision) can reach the new one,
//! where it would pair a PUBACK with the wrong caller. That can duplicate a
//! result whose PUBACK was lost, never lose one.
//!
//! **Sizes are checked first.** A packet larger than the broker accepts would
//! be refused by rumqttc after it was queued (or make the broker drop the
//! connection), and the retry would do the same forever. Every publish is
//! measured before it is handed over: against `mqtt.max_packet_size` and,
//! under MQTT 5, the Maximum Packet Size the broker announced in CONNACK.
//! Requests are taken only while connected, so the broker's limit is known.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{publish_packet_size, Client, Connection, Endpoint, Event, Reconnect};
use crate::config::{Backoff, Protocol};
use crate::message::{Message, QoS};

/// Why a publish was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The connection dropped before the broker confirmed; worth publishing again.
    #[error("the connection to the broker was lost before it confirmed the publish")]
    ConnectionLost,
    /// The broker refused it (MQTT 5 reason code); publishing again will not help.
    #[error("the broker refused the publish: {0}")]
    Refused(String),
    /// The packet is larger than the broker accepts; it was not sent.
    #[error("a packet of {size} bytes; the broker accepts at most {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The publisher is shutting down.
    #[error("the publisher has stopped")]
    Closed,
}

impl PublishError {
    /// Whether publishing the same message again could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::ConnectionLost)
    }
}

type Reply = oneshot::Sender<Result<(), PublishError>>;

/// The largest packet the broker accepts now.
#[derive(Debug)]
struct Limits {
    protocol: Protocol,
    /// `mqtt.max_packet_size`.
    configured: usize,
    /// The broker's Maximum Packet Size from the last CONNACK (MQTT 5); 0 when
    /// it announced none.
    announced: AtomicUsize,
    /// `mqtt.max_qos`.
    max_qos: QoS,
    /// The broker's Maximum QoS from the last CONNACK (MQTT 5); 2 when it
    /// announced none.
    announced_qos: AtomicU8,
}

impl Limits {
    fn current(&self) -> usize {
        match self.announced.load(Ordering::Acquire) {
            0 => self.configured,
            broker => broker.min(self.configured),
        }
    }

    /// The highest QoS a PUBLISH may have now.
    fn qos(&self) -> QoS {
        let broker =
            QoS::try_from(self.announced_qos.load(Ordering::Acquire)).unwrap_or(QoS::ExactlyOnce);
        self.max_qos.min(broker)
    }

    fn check(&self, msg: &Message) -> Result<(), PublishError> {
        let size = publish_packet_size(self.protocol, msg);
        let limit = self.current();
        if size > limit {
            return Err(PublishError::TooLarge { size, limit });
        }
        Ok(())
    }
}

/// Publishes and waits for the broker's confirmation. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(Message, Reply)>,
    limits: Arc<Limits>,
}

impl Publisher {
    /// Publishes `msg`; returns once the broker has accepted it.
    /// A QoS above what the bridge may publish at (`mqtt.max_qos`, the
    /// broker's Maximum QoS) is lowered to it.
    pub async fn publish(&self, mut msg: Message) -> Result<(), PublishError> {
        msg.qos = msg.qos.min(self.limits.qos());
        self.limits.check(&msg)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((msg, reply))
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.unwrap_or(Err(PublishError::Closed))
    }

    /// Whether `msg` fits the largest packet the broker accepts now.
    pub fn check(&self, msg: &Message) -> Result<(), PublishError> {
        self.limits.check(msg)
    }

    /// The largest packet the broker accepts now, in bytes.
    pub fn max_packet_size(&self) -> usize {
        self.limits.current()
    }

    /// The size `msg` has on the wire as a PUBLISH packet.
    pub fn packet_size(&self, msg: &Message) -> usize {
        publish_packet_size(self.limits.protocol, msg)
    }
}

/// The publisher connection's task: opens connections and serves them.
pub struct PublisherTask {
    endpoint: Endpoint,
    capacity: usize,
    requests: mpsc::Receiver<(Message, Reply)>,
    limits: Arc<Limits>,
    reconnect: Reconnect,
}

/// Callers waiting on one connection.
#[derive(Default)]
struct Waiting {
    /// Queued to rumqttc, packet id not yet known; oldest first.
    queued: VecDeque<Reply>,
    /// Sent with a packet id, waiting for PUBACK/PUBCOMP.
    inflight: HashMap<u16, Reply>,
}

impl Waiting {
    fn fail_all(&mut self, error: &PublishError) -> usize {
        let n = self.queued.len() + self.inflight.len();
        for reply in self
            .queued
            .drain(..)
            .chain(self.inflight.drain().map(|(_, r)| r))
        {
            let _ = reply.send(Err(error.clone()));
        }
        n
    }
}

/// How serving one connection ended.
enum End {
    Lost(String),
    Closed,
}

impl PublisherTask {
    /// `max_packet_size` and `max_qos` are `mqtt.max_packet_size` and
    /// `mqtt.max_qos`; `capacity` bounds the publishes queued to rumqttc at
    /// once.
    pub fn new(
        endpoint: Endpoint,
        max_packet_size: usize,
        max_qos: QoS,
        capacity: usize,
        backoff: Backoff,
    ) -> (PublisherTask, Publisher) {
        let (tx, requests) = mpsc::channel(capacity);
        let limits = Arc::new(Limits {
            protocol: endpoint.protocol(),
            configured: max_packet_size,
            announced: AtomicUsize::new(0),
            max_qos,
            announced_qos: AtomicU8::new(2),
        });
        let task = PublisherTask {
            endpoint,
            capacity,
            requests,
            limits: Arc::clone(&limits),
            reconnect: Reconnect::new(backoff),
        };
        (task, Publisher { tx, limits })
    }

    /// Runs until `close`; callers still waiting then get `Closed`.
    pub async fn run(mut self, close: CancellationToken) {
        loop {
            let (client, mut conn) = self.endpoint.open(self.capacity);
            let mut waiting = Waiting::default();
            let end = self.serve(&client, &mut conn, &mut waiting, &close).await;
            match end {
                End::Closed => {
                    waiting.fail_all(&PublishError::Closed);
                    if client.try_disconnect().is_ok() {
                        conn.flush(Duration::from_secs(1)).await;
                    }
                    return;
                }
                End::Lost(e) => {
                    let lost = waiting.fail_all(&PublishError::ConnectionLost);
                    if lost > 0 {
                        warn!(error = %e, unconfirmed = lost, "publisher lost the broker; reconnecting");
                    } else {
                        warn!(error = %e, "publisher cannot reach the broker");
                    }
                    let delay = self.reconnect.next_delay();
                    tokio::select! {
                        () = close.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Serves one connection until it fails or `close` fires.
    async fn serve(
        &mut self,
        client: &Client,
        conn: &mut Connection,
        waiting: &mut Waiting,
        close: &CancellationToken,
    ) -> End {
        let mut connected = false;
        loop {
            let event = {
                let poll = conn.poll();
                tokio::pin!(poll);
                loop {
                    let room = connected && waiting.queued.len() < self.capacity;
                    tokio::select! {
                        biased;
                        () = close.cancelled() => return End::Closed,
                        ev = &mut poll => break ev,
                        Some((msg, reply)) = self.requests.recv(), if room => {
                            self.queue(client, waiting, &msg, reply);
                            // Take what else is waiting in one go rather than one
                            // request per turn of this loop.
                            while waiting.queued.len() < self.capacity {
                                match self.requests.try_recv() {
                                    Ok((msg, reply)) => self.queue(client, waiting, &msg, reply),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            };
            match event {
                Ok(Event::Connected {
                    max_packet_size,
                    max_qos,
                    ..
                }) => {
                    let announced = max_packet_size
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(0);
                    self.limits.announced.store(announced, Ordering::Release);
                    let qos = max_qos.unwrap_or(QoS::ExactlyOnce);
                    self.limits
                        .announced_qos
                        .store(u8::from(qos), Ordering::Release);
                    connected = true;
                    self.reconnect.reset();
                    if qos == QoS::AtMostOnce {
                        warn!("the broker takes only QoS 0 publishes (its Maximum QoS): results and dead letters go out unconfirmed and can be lost");
                    }
                    info!(
                        max_packet_size = self.limits.current(),
                        max_qos = u8::from(self.limits.qos()),
                        "publisher connected to the broker"
                    );
                }
                Ok(Event::PublishSent { pkid }) => match waiting.queued.pop_front() {
                    Some(reply) if pkid == 0 => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(reply) => {
                        waiting.inflight.insert(pkid, reply);
                    }
                    // Cannot happen on a connection of its own; kept loud in case.
                    None => warn!(pkid, "a publish left that nobody waits for"),
                },
                Ok(Event::PubAck { pkid, refused } | Event::PubComp { pkid, refused }) => {
                    if let Some(reply) = waiting.inflight.remove(&pkid) {
                        let _ = reply.send(match refused {
                            None => Ok(()),
                            Some(reason) => Err(PublishError::Refused(reason)),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => return End::Lost(e),
            }
        }
    }

    /// Hands one publish to rumqttc; its reply waits for the broker's answer.
    fn queue(&self, client: &Client, waiting: &mut Waiting, msg: &Message, reply: Reply) {
        // The broker's limit may have shrunk since the caller checked.
        if let Err(e) = self.limits.check(msg) {
            let _ = reply.send(Err(e));
            return;
        }
        match client.try_publish(msg) {
            Ok(()) => waiting.queued.push_back(reply),
            // `queued` stays below the channel's capacity, so this means the
            // event loop is gone: the connection is ending.
            Err(_) => {
                let _ = reply.send(Err(PublishError::ConnectionLost));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    #[test]
    fn the_smaller_of_the_configured_and_the_announced_limit_applies() {
        let limits = Limits {
            protocol: Protocol::V5,
            configured: 1000,
            announced: AtomicUsize::new(0),
            max_qos: QoS::ExactlyOnce,
            announced_qos: AtomicU8::new(2),
        };
        assert_eq!(limits.current(), 1000, "no announced limit");
        limits.announced.store(500, Ordering::Release);
        assert_eq!(limits.current(), 500);
        limits.announced.store(5000, Ordering::Release);
        assert_eq!(limits.current(), 1000);

        limits.announced.store(500, Ordering::Release);
        // Topic "t", QoS 1, no properties: 1 + 2 + (2 + 1 + 2 + 1) + payload.
        let fits = Message::new("t", vec![0u8; 491], QoS::AtLeastOnce);
        assert_eq!(publish_packet_size(Protocol::V5, &fits), 500);
        assert_eq!(limits.check(&fits), Ok(()));
        let over = Message::new("t", vec![0u8; 492], QoS::AtLeastOnce);
        assert_eq!(
            limits.check(&over),
            Err(PublishError::TooLarge {
                size: 501,
                limit: 500
            })
        );
        assert!(!PublishError::TooLarge { size: 1, limit: 0 }.is_transient());
    }

    #[test]
    fn the_lower_of_the_configured_and_the_announced_qos_applies() {
        let limits = |configured: QoS| Limits {
            protocol: Protocol::V5,
            configured: 1000,
            announced: AtomicUsize::new(0),
            max_qos: configured,
            announced_qos: AtomicU8::new(2),
        };
        let l = limits(QoS::ExactlyOnce);
        assert_eq!(l.qos(), QoS::ExactlyOnce, "nothing announced");
        l.announced_qos.store(1, Ordering::Release);
        assert_eq!(l.qos(), QoS::AtLeastOnce, "the broker's Maximum QoS");
        let l = limits(QoS::AtLeastOnce);
        assert_eq!(l.qos(), QoS::AtLeastOnce, "mqtt.max_qos");
        l.announced_qos.store(0, Ordering::Release);
        assert_eq!(l.qos(), QoS::AtMostOnce);
    }
}
