//! The publisher connection: results and dead letters, each confirmed by the broker.
//!
//! rumqttc reports the packet id it gave a publish only as an event
//! (`Outgoing::Publish(pkid)`), in the order the requests were queued. This task
//! is the only one that queues publishes on its connection, so it keeps the
//! waiting callers in that same order: each `PublishSent` event pairs the oldest
//! waiting caller with its packet id, and the matching PUBACK (QoS 1) or PUBCOMP
//! (QoS 2) resolves it. QoS 0 resolves when written.
//!
//! The connection uses a clean session: when it drops, rumqttc forgets the
//! requests it held, so every caller still waiting is told `ConnectionLost` and
//! publishes again (the source message is not acknowledged meanwhile). That can
//! duplicate a result whose PUBACK was lost, never lose one.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Client, Connection, Event, Publish, Reconnect};
use crate::config::Backoff;

/// Why a publish was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The connection dropped before the broker confirmed; worth publishing again.
    #[error("the connection to the broker was lost before it confirmed the publish")]
    ConnectionLost,
    /// The broker refused it (MQTT 5 reason code); publishing again will not help.
    #[error("the broker refused the publish: {0}")]
    Refused(String),
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

/// Publishes and waits for the broker's confirmation. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(Publish, Reply)>,
}

impl Publisher {
    /// Publishes `msg`; returns once the broker has accepted it.
    pub async fn publish(&self, msg: Publish) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((msg, reply))
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.unwrap_or(Err(PublishError::Closed))
    }
}

/// The publisher connection's task: the event loop and everything around it.
pub struct PublisherTask {
    conn: Connection,
    state: State,
}

/// What the task keeps besides the event loop.
struct State {
    client: Client,
    requests: mpsc::Receiver<(Publish, Reply)>,
    /// Queued to rumqttc, packet id not yet known; oldest first.
    queued: VecDeque<Reply>,
    /// Sent with a packet id, waiting for PUBACK/PUBCOMP.
    inflight: HashMap<u16, Reply>,
    /// rumqttc's request channel capacity; `queued` never exceeds it.
    capacity: usize,
    reconnect: Reconnect,
    connected: bool,
}

impl PublisherTask {
    pub fn new(
        client: Client,
        conn: Connection,
        capacity: usize,
        backoff: Backoff,
    ) -> (PublisherTask, Publisher) {
        let (tx, requests) = mpsc::channel(capacity);
        let state = State {
            client,
            requests,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            capacity,
            reconnect: Reconnect::new(backoff),
            connected: false,
        };
        (PublisherTask { conn, state }, Publisher { tx })
    }

    /// Runs until `close`; callers still waiting then get `Closed`.
    pub async fn run(self, close: CancellationToken) {
        let PublisherTask {
            mut conn,
            mut state,
        } = self;
        state.run(&mut conn, close).await;
    }
}

impl State {
    /// Hands one publish to rumqttc; its reply waits for the broker's answer.
    fn queue(&mut self, msg: &Publish, reply: Reply) {
        match self.client.try_publish(msg) {
            Ok(()) => self.queued.push_back(reply),
            Err(e) => {
                warn!(error = %e, topic = %msg.topic, "cannot queue a publish");
                let _ = reply.send(Err(PublishError::Refused(e.to_string())));
            }
        }
    }

    async fn run(&mut self, conn: &mut Connection, close: CancellationToken) {
        loop {
            let event = {
                let poll = conn.poll();
                tokio::pin!(poll);
                loop {
                    let room = self.queued.len() < self.capacity;
                    tokio::select! {
                        biased;
                        () = close.cancelled() => break None,
                        ev = &mut poll => break Some(ev),
                        Some((msg, reply)) = self.requests.recv(), if room => {
                            self.queue(&msg, reply);
                            // Take what else is waiting in one go rather than one
                            // request per turn of this loop.
                            while self.queued.len() < self.capacity {
                                match self.requests.try_recv() {
                                    Ok((msg, reply)) => self.queue(&msg, reply),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            };
            let Some(event) = event else { break };
            match event {
                Ok(Event::Connected { .. }) => {
                    self.connected = true;
                    self.reconnect.reset();
                    info!("publisher connected to the broker");
                }
                Ok(Event::PublishSent { pkid }) => match self.queued.pop_front() {
                    Some(reply) if pkid == 0 => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(reply) => {
                        self.inflight.insert(pkid, reply);
                    }
                    None => warn!(pkid, "a publish left that nobody waits for"),
                },
                Ok(Event::PubAck { pkid, refused } | Event::PubComp { pkid, refused }) => {
                    if let Some(reply) = self.inflight.remove(&pkid) {
                        let _ = reply.send(match refused {
                            None => Ok(()),
                            Some(reason) => Err(PublishError::Refused(reason)),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if self.connected {
                        // rumqttc moved what it held to its pending queue, which a
                        // clean session discards on reconnect: fail every waiter.
                        self.connected = false;
                        let lost = self.queued.len() + self.inflight.len();
                        for reply in self
                            .queued
                            .drain(..)
                            .chain(self.inflight.drain().map(|(_, r)| r))
                        {
                            let _ = reply.send(Err(PublishError::ConnectionLost));
                        }
                        warn!(error = %e, unconfirmed = lost, "publisher lost the broker; reconnecting");
                    } else {
                        warn!(error = %e, "publisher cannot reach the broker");
                    }
                    let delay = self.reconnect.next_delay();
                    tokio::select! {
                        () = close.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        for reply in self
            .queued
            .drain(..)
            .chain(self.inflight.drain().map(|(_, r)| r))
        {
            let _ = reply.send(Err(PublishError::Closed));
        }
        if self.connected && self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while conn.poll().await.is_ok() {}
            })
            .await;
        }
    }
}
