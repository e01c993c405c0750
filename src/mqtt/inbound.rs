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
//! Backpressure: at most `mqtt.max_pending` deliveries are held at once (a
//! semaphore permit travels with each one). At the limit the task stops polling,
//! so the broker stops sending (TCP flow control, and under MQTT 5 also Receive
//! Maximum); nothing is buffered without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Client, Connection, Event, Received, Reconnect, Subscription};
use crate::ack::{AckTracker, Completion, Finished};
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
            subscription_ids,
        } = received;
        self.metrics.received();
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
        let done_tx = self.done_tx.clone();
        let mut permit = Some(permit);
        self.dispatch
            .dispatch(msg, &subscription_ids, &mut |routes| {
                Completion::new(routes, token, done_tx.clone(), permit.take())
            });
        true
    }

    fn finished(&mut self, done: Finished) {
        let Some(token) = done.token else { return };
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
