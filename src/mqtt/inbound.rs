//! The subscriber connection: reads messages, hands them to the router, and sends
//! their acknowledgements in arrival order once they are finished.
//!
//! One task owns the rumqttc event loop. Because `poll` is not cancel-safe, the
//! task keeps a single `poll` future alive until it completes and serves the
//! other inputs (finished deliveries, subscription changes, shutdown) around it.
//! That also makes the connection epoch exact: rumqttc drops queued acks when the
//! connection fails (`EventLoop::clean`), and this task switches to a new epoch in
//! the same step, before any later ack could be queued.
//!
//! Redeliveries: the deliveries still held when a connection is lost are
//! remembered by packet id (with their topic and a hash of the payload). When
//! the broker resends one after the reconnect (DUP set, same packet id, topic
//! and payload), it is settled against the copy from before ([`crate::ack`]): a
//! copy no route has started is dropped and the redelivery processed; a copy
//! that was processed completely only needs the redelivery acknowledged. A copy
//! the broker does not resend (a broker that lost its session) is processed as
//! usual, so nothing depends on the broker having kept it. Packet ids identify
//! the message because a broker that keeps the session cannot reuse one that is
//! not acknowledged; without a session (`session_present` false) nothing earlier
//! is remembered.
//!
//! Backpressure: at most `mqtt.max_pending` deliveries are held at once (a
//! semaphore permit travels with each one). At the limit the task stops polling,
//! so the broker stops sending (TCP flow control, and under MQTT 5 also Receive
//! Maximum); nothing is buffered without bound.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Client, Connection, Event, Received, Reconnect, Subscription};
use crate::ack::{AckTracker, Completion, Finished, Redelivery, Superseder};
use crate::config::Backoff;
use crate::message::{self, QoS};
use crate::metrics::Metrics;

/// Receives every message the broker delivers.
pub trait Dispatch: Send + Sync + 'static {
    /// Hands `msg` to the routes it belongs to. `completion` is called once with
    /// the number of routes that took it and returns the shared completion whose
    /// per-route handles travel with the work.
    fn dispatch(
        &self,
        msg: message::Inbound,
        subscription_ids: &[usize],
        completion: &mut dyn FnMut(usize) -> Completion,
    );
}

/// Changes to the set of subscriptions, applied while running.
#[derive(Debug)]
pub enum Command {
    Subscribe(Vec<Subscription>),
    Unsubscribe(Vec<String>),
}

/// A handle to change what the running connection subscribes to.
#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::UnboundedSender<Command>,
}

impl Subscriptions {
    pub fn subscribe(&self, subs: Vec<Subscription>) {
        if !subs.is_empty() {
            let _ = self.tx.send(Command::Subscribe(subs));
        }
    }
    pub fn unsubscribe(&self, filters: Vec<String>) {
        if !filters.is_empty() {
            let _ = self.tx.send(Command::Unsubscribe(filters));
        }
    }
}

/// The subscriber connection's task: the event loop and everything around it.
pub struct SubscriberTask {
    conn: Connection,
    state: State,
}

/// A QoS 1/2 delivery of the current connection that the routes still hold.
struct Held {
    topic: String,
    payload: Bytes,
    superseder: Superseder,
}

/// A delivery of an earlier connection that the broker may redeliver.
struct Earlier {
    topic: String,
    payload_len: usize,
    payload_hash: u64,
    superseder: Superseder,
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// What the task keeps besides the event loop (borrowed while a poll is pending).
struct State {
    client: Client,
    dispatch: Arc<dyn Dispatch>,
    subs: Vec<Subscription>,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    tracker: AckTracker,
    reconnect: Reconnect,
    metrics: Arc<Metrics>,
    connected: bool,
    /// Subscribed after connecting; ready once the SUBACKs are in.
    awaiting_suback: bool,
    subacks_due: usize,
    /// The broker may not have `subs` yet, even in a resumed session: true until
    /// the first complete subscription of this process (the config may have
    /// changed while the bridge was down).
    must_subscribe: bool,
    /// This connection's QoS 1/2 deliveries not yet finished, by packet id.
    held: HashMap<u16, Held>,
    /// Earlier connections' deliveries that a redelivery may settle, by packet id.
    earlier: HashMap<u16, Earlier>,
    /// At most this many `earlier` entries are kept (finished ones go first).
    earlier_limit: usize,
}

impl SubscriberTask {
    pub fn new(
        client: Client,
        conn: Connection,
        dispatch: Arc<dyn Dispatch>,
        subs: Vec<Subscription>,
        max_pending: usize,
        backoff: Backoff,
        metrics: Arc<Metrics>,
    ) -> (SubscriberTask, Subscriptions) {
        let (tx, commands) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let state = State {
            client,
            dispatch,
            subs,
            commands,
            pending: Arc::new(Semaphore::new(max_pending)),
            done_tx,
            done_rx,
            tracker: AckTracker::new(),
            reconnect: Reconnect::new(backoff),
            metrics,
            connected: false,
            awaiting_suback: false,
            subacks_due: 0,
            must_subscribe: true,
            held: HashMap::new(),
            earlier: HashMap::new(),
            earlier_limit: max_pending.saturating_mul(2).saturating_add(64),
        };
        (SubscriberTask { conn, state }, Subscriptions { tx })
    }

    /// Runs until `close`. After `stop_reading`, messages that still arrive are
    /// left unacknowledged (the broker keeps them for the next session) while the
    /// ones in progress finish and are acknowledged.
    pub async fn run(self, stop_reading: CancellationToken, close: CancellationToken) {
        let SubscriberTask {
            mut conn,
            mut state,
        } = self;
        state.run(&mut conn, stop_reading, close).await;
    }
}

impl State {
    async fn run(
        &mut self,
        conn: &mut Connection,
        stop_reading: CancellationToken,
        close: CancellationToken,
    ) {
        loop {
            let event = {
                let poll = conn.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        biased;
                        Some(done) = self.done_rx.recv() => self.finished(done),
                        Some(cmd) = self.commands.recv() => self.command(cmd),
                        () = close.cancelled() => break None,
                        ev = &mut poll => break Some(ev),
                    }
                }
            };
            let Some(event) = event else {
                self.close(conn).await;
                return;
            };
            match event {
                Ok(Event::Connected { session_present }) => self.connected(session_present),
                Ok(Event::Publish(received)) => {
                    if stop_reading.is_cancelled() {
                        debug!(topic = %received.msg.topic, "stopping: left for the next session");
                        continue;
                    }
                    if !self.receive(received, &close).await {
                        self.close(conn).await;
                        return;
                    }
                }
                Ok(Event::SubAck { results }) => {
                    for r in results {
                        if let Err(reason) = r {
                            error!(%reason, "the broker refused a subscription");
                            self.metrics.subscription_refused();
                        }
                    }
                    // Under MQTT 5 each filter has its own SUBACK; the last one
                    // answers the last SUBSCRIBE, which the broker handles in order.
                    self.subacks_due = self.subacks_due.saturating_sub(1);
                    if self.awaiting_suback && self.subacks_due == 0 {
                        self.awaiting_suback = false;
                        self.must_subscribe = false;
                        self.metrics.set_ready();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if self.connected {
                        self.connected = false;
                        let lost = self.tracker.len();
                        self.tracker.new_epoch();
                        self.remember_for_redelivery();
                        self.metrics.set_connected(false);
                        warn!(error = %e, unacknowledged = lost, "lost the broker; reconnecting (unacknowledged messages will be redelivered)");
                    } else {
                        warn!(error = %e, "cannot reach the broker");
                    }
                    let delay = self.reconnect.next_delay();
                    if !self.wait(delay, &close).await {
                        self.close(conn).await;
                        return;
                    }
                }
            }
        }
    }

    fn connected(&mut self, session_present: bool) {
        self.connected = true;
        self.reconnect.reset();
        self.metrics.set_connected(true);
        info!(
            session_present,
            subscriptions = self.subs.len(),
            "connected to the broker"
        );
        if !session_present {
            // No session: the broker redelivers nothing and its packet ids start
            // afresh, so no earlier delivery can be recognised any more.
            self.earlier.clear();
        }
        // With a resumed session the broker still has our subscriptions; without
        // one (clean session, or a broker that lost it) rumqttc does not
        // resubscribe by itself. The first connection of a process always
        // subscribes: the session may hold an older config's filters.
        if (session_present && !self.must_subscribe) || self.subs.is_empty() {
            self.metrics.set_ready();
        } else {
            self.awaiting_suback = true;
            match self.client.try_subscribe(&self.subs) {
                Ok(n) => self.subacks_due = n,
                Err(e) => error!(error = %e, "cannot subscribe"),
            }
        }
    }

    /// Holds `received` against the pending limit and dispatches it. Returns
    /// false if `close` fired while waiting for room.
    async fn receive(&mut self, received: Received, close: &CancellationToken) -> bool {
        let Received {
            msg,
            pkid,
            dup,
            subscription_ids,
        } = received;
        self.metrics.received();
        if dup
            && msg.qos != QoS::AtMostOnce
            && self.settle_redelivery(pkid, &msg) == Redelivery::AlreadyDone
        {
            // Processed completely before the reconnect: only the ack was lost.
            self.metrics.redelivery_already_done();
            let token = self.tracker.register(msg.qos, pkid);
            self.finished(Finished {
                token: Some(token),
                ack: true,
            });
            return true;
        }
        let permit = loop {
            if let Ok(p) = Arc::clone(&self.pending).try_acquire_owned() {
                break p;
            }
            self.metrics.backpressure();
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => self.finished(done),
                Some(cmd) = self.commands.recv() => self.command(cmd),
                () = close.cancelled() => return false,
                p = Arc::clone(&self.pending).acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => return false,
                },
            }
        };
        let token = (msg.qos != QoS::AtMostOnce).then(|| self.tracker.register(msg.qos, pkid));
        let held = token.map(|_| (msg.topic.clone(), msg.payload.clone()));
        let done_tx = self.done_tx.clone();
        let mut permit = Some(permit);
        let mut superseder = None;
        self.dispatch
            .dispatch(msg, &subscription_ids, &mut |routes| {
                let completion = Completion::new(routes, token, done_tx.clone(), permit.take());
                superseder = Some(completion.superseder());
                completion
            });
        if let (Some((topic, payload)), Some(superseder)) = (held, superseder) {
            if superseder.is_held() {
                let held = Held {
                    topic,
                    payload,
                    superseder,
                };
                self.held.insert(pkid, held);
            }
        }
        true
    }

    /// After a lost connection: what the routes still hold may come back as
    /// redeliveries; keep enough to recognise them (not the payloads).
    fn remember_for_redelivery(&mut self) {
        for (pkid, h) in self.held.drain() {
            let earlier = Earlier {
                payload_len: h.payload.len(),
                payload_hash: payload_hash(&h.payload),
                topic: h.topic,
                superseder: h.superseder,
            };
            self.earlier.insert(pkid, earlier);
        }
        self.earlier.retain(|_, e| e.superseder.is_settleable());
        if self.earlier.len() > self.earlier_limit {
            self.earlier.retain(|_, e| e.superseder.is_held());
        }
    }

    /// A redelivery of `pkid`: settles it against an earlier connection's copy
    /// of the same message, if there is one.
    fn settle_redelivery(&mut self, pkid: u16, msg: &message::Inbound) -> Redelivery {
        let Some(earlier) = self.earlier.remove(&pkid) else {
            return Redelivery::Process;
        };
        if earlier.topic != msg.topic
            || earlier.payload_len != msg.payload.len()
            || earlier.payload_hash != payload_hash(&msg.payload)
        {
            return Redelivery::Process;
        }
        let outcome = earlier.superseder.settle();
        debug!(pkid, topic = %msg.topic, ?outcome, "redelivery of a message held before the reconnect");
        outcome
    }

    fn finished(&mut self, done: Finished) {
        let Some(token) = done.token else { return };
        if token.epoch == self.tracker.epoch() {
            self.held.remove(&token.pkid);
        }
        for (qos, pkid) in self.tracker.finish(token, done.ack) {
            match self.client.try_ack(qos, pkid) {
                Ok(()) => self.metrics.acked(),
                Err(e) => error!(error = %e, pkid, "cannot queue an acknowledgement"),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(new) => {
                info!(filters = ?new.iter().map(|s| &s.filter).collect::<Vec<_>>(), "subscribing");
                match self.client.try_subscribe(&new) {
                    Ok(n) => self.subacks_due += n,
                    Err(e) => error!(error = %e, "cannot subscribe"),
                }
                let mut by_filter: HashMap<String, Subscription> =
                    self.subs.drain(..).map(|s| (s.filter.clone(), s)).collect();
                for s in new {
                    by_filter.insert(s.filter.clone(), s);
                }
                self.subs = by_filter.into_values().collect();
                self.subs.sort_by_key(|s| s.id);
            }
            Command::Unsubscribe(filters) => {
                info!(?filters, "unsubscribing");
                for f in &filters {
                    if let Err(e) = self.client.try_unsubscribe(f) {
                        error!(error = %e, filter = %f, "cannot unsubscribe");
                    }
                }
                self.subs.retain(|s| !filters.contains(&s.filter));
            }
        }
    }

    /// Sleeps before reconnecting while still taking in finished deliveries.
    async fn wait(&mut self, delay: Duration, close: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => self.finished(done),
                Some(cmd) = self.commands.recv() => self.command(cmd),
                () = close.cancelled() => return false,
                () = &mut sleep => return true,
            }
        }
    }

    /// Sends the acks that are due and a DISCONNECT, keeping the session.
    async fn close(&mut self, conn: &mut Connection) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.finished(done);
        }
        if !self.connected {
            return;
        }
        if let Err(e) = self.client.try_disconnect() {
            warn!(error = %e, "cannot disconnect cleanly");
            return;
        }
        // Let the event loop write the queued acks and the DISCONNECT.
        let flush = async { while conn.poll().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        self.metrics.set_connected(false);
        info!("disconnected from the broker; the session stays with it");
    }
}
