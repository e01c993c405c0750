//! A subscriber connection: reads one session's messages, hands them to the
//! router, and sends their acknowledgements in arrival order once finished.
//!
//! One task owns the rumqttc event loop of a session. Because `poll` is not
//! cancel-safe, the task keeps a single `poll` future alive until it completes
//! and serves the other inputs (finished deliveries, subscription changes, stop
//! and close) around it. The protocol state (acknowledgement order, redelivery
//! settling, subscriptions, the outbox of control packets) is a
//! [`Session`](super::session::Session); this module only moves packets between
//! it, the network and the router.
//!
//! Backpressure: at most `mqtt.max_pending` deliveries of the session are held
//! at once (a semaphore permit travels with each one). At the limit the task
//! stops polling, so the broker stops sending (TCP flow control, and under MQTT
//! 5 also Receive Maximum); nothing is buffered without bound. Control packets
//! never wait for a permit, and none is ever dropped: when rumqttc's request
//! channel has no room, they wait in the session's outbox, in order.
//!
//! Acknowledgements under MQTT 3.1.1 are written by this task itself, between
//! polls ([`Connection::write_acks`]): through rumqttc's request channel they
//! fall behind a steady stream without bound (measured: 1,200 of 3,000 sent
//! while the broker kept sending). One acknowledgement at a time still goes
//! through the channel, so an idle connection's poll wakes up and the rest
//! follow at once, in order.
//!
//! Stopping: once its [`Shutdown`] stops reading, the task hands nothing more to the
//! router; a message that arrives, or that was waiting for room, is left
//! unacknowledged for the broker to redeliver in the next session. The task
//! then says so (`reading_stopped`), and only after that may the bridge close
//! its routes: a message is never routed against a table that is being torn
//! down (where it would find no route and be acknowledged as unrouted).
//!
//! Retiring: a session whose routes were all removed (by a reload, or while the
//! bridge was down) unsubscribes its filters, dead-letters what the broker
//! still delivers as unrouted, and ends once nothing arrived for [`QUIET`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::session::{Control, Session};
use super::state_file::StateFile;
use super::{Client, Connection, Endpoint, Event, Received, Reconnect, Subscription};
use crate::ack::{Completion, Finished};
use crate::config::Backoff;
use crate::message::Message;
use crate::metrics::{Metrics, SessionStatus};
use crate::shutdown::Shutdown;

/// A retiring session ends after this long without a message.
pub const QUIET: Duration = Duration::from_secs(2);

/// Requests that may wait in rumqttc's channel. Acknowledgements never exceed
/// what the broker may send unacknowledged; the outbox takes any overflow.
const CHANNEL_CAPACITY: usize = 1024;

/// What a delivery carries besides the message, for the router.
pub struct Delivery<'a> {
    /// The session that received it.
    pub session: &'a str,
    /// MQTT 5 subscription identifiers of the subscriptions that matched.
    pub subscription_ids: &'a [usize],
    /// Whether `filter` was subscribed before by this session (a retained
    /// message on it is then a replay).
    pub subscribed_before: &'a dyn Fn(&str) -> bool,
}

/// The router stopped taking messages: the bridge is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Receives every message the broker delivers.
pub trait Dispatch: Send + Sync + 'static {
    /// Hands `msg` to every route of `delivery.session` that takes it, each
    /// with its own [`Completion::route`] handle; a message no route takes goes
    /// to the unrouted dead letter. Returns how many took it, or `Closed`.
    fn dispatch(
        &self,
        msg: Message,
        delivery: &Delivery<'_>,
        completion: &Completion,
    ) -> Result<usize, Closed>;
}

/// Changes to a running session.
#[derive(Debug)]
pub enum Command {
    Subscribe(Vec<Subscription>),
    Unsubscribe(Vec<String>),
    /// Every route of the session was removed: unsubscribe everything,
    /// dead-letter what still arrives, end when quiet.
    Retire,
    /// The bridge is stopping and leaves its shared-subscription groups:
    /// unsubscribe the `$share/...` filters, go on processing what the broker
    /// still delivers, and say `left` once that is confirmed and quiet.
    LeaveShared,
}

/// A running session's task and the means to change and stop it.
pub struct SessionHandle {
    pub name: String,
    commands: mpsc::UnboundedSender<Command>,
    /// This session's own shutdown (a child of the core's).
    shutdown: Shutdown,
    reading_stopped: watch::Receiver<bool>,
    left: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl SessionHandle {
    /// Starts leaving the session's shared-subscription groups (see
    /// [`Command::LeaveShared`]); [`SessionHandle::left`] completes when done.
    pub fn leave_shared(&self) {
        let _ = self.commands.send(Command::LeaveShared);
    }

    /// Completes once the session left its shared groups (or had none, or
    /// could not: disconnected), or has ended.
    pub async fn left(&mut self) {
        let _ = self.left.wait_for(|left| *left).await;
    }

    pub fn subscribe(&self, subs: Vec<Subscription>) {
        if !subs.is_empty() {
            let _ = self.commands.send(Command::Subscribe(subs));
        }
    }

    pub fn unsubscribe(&self, filters: Vec<String>) {
        if !filters.is_empty() {
            let _ = self.commands.send(Command::Unsubscribe(filters));
        }
    }

    pub fn retire(&self) {
        let _ = self.commands.send(Command::Retire);
    }

    /// Completes once the task hands no more messages to the router (after
    /// its shutdown's first phase), or has ended.
    pub async fn reading_stopped(&mut self) {
        let _ = self.reading_stopped.wait_for(|stopped| *stopped).await;
    }

    /// Completes once the task has ended (after its shutdown's close phase:
    /// the acknowledgements due sent, disconnected, the session kept).
    pub async fn closed(self) {
        let _ = self.task.await;
    }

    /// Closes this session alone, and waits for it.
    pub async fn close(self) {
        self.shutdown.close();
        self.closed().await;
    }

    /// Whether the task has ended (a retired session that went quiet).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// How the task was started.
pub struct SessionSpec {
    /// The session's name: a route group, or the client id of a retired session.
    pub name: String,
    pub endpoint: Endpoint,
    pub subscriptions: Vec<Subscription>,
    pub max_pending: usize,
    pub reconnect: Backoff,
    /// True for a session that is only being retired.
    pub retire: bool,
    /// How long writing acknowledgements may take before the connection is
    /// given up (`mqtt.connect_timeout`).
    pub write_timeout: Duration,
    /// The session's shutdown: a child of the core's, so it stops with it.
    pub shutdown: Shutdown,
    /// `buffer: {kind: disk}`: messages go to the journal and are
    /// acknowledged once durable there ([`crate::journal::replay`] feeds the
    /// router). A retiring session does not use it.
    pub journal: Option<crate::journal::Journal>,
}

/// Starts the task of one session.
pub fn spawn(
    spec: SessionSpec,
    dispatch: Arc<dyn Dispatch>,
    record: Arc<StateFile>,
    metrics: Arc<Metrics>,
) -> SessionHandle {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (stopped_tx, reading_stopped) = watch::channel(false);
    let (left_tx, left) = watch::channel(false);
    let shutdown = spec.shutdown.clone();
    let client_id = spec.endpoint.client_id().to_string();
    let previous = record.filters(&client_id);
    let status = metrics.session(&spec.name, !spec.retire);
    let pending = Arc::new(Semaphore::new(spec.max_pending));
    status.watch_pending(Arc::clone(&pending), spec.max_pending);
    let session = Session::new(spec.subscriptions, previous, spec.max_pending);
    let task = Task {
        name: spec.name.clone(),
        client_id,
        session,
        dispatch,
        commands,
        pending,
        done_tx,
        done_rx,
        reconnect: Reconnect::new(spec.reconnect),
        metrics,
        status,
        record,
        recorded: BTreeSet::new(),
        retiring: spec.retire,
        reading: true,
        reading_stopped: stopped_tx,
        leaving: false,
        left: left_tx,
        direct_acks: false,
        acks_in_channel: 0,
        write_timeout: spec.write_timeout,
        went_quiet: false,
        journal: if spec.retire { None } else { spec.journal },
    };
    let handle = tokio::spawn(task.run(spec.endpoint, shutdown.clone()));
    SessionHandle {
        name: spec.name,
        commands: commands_tx,
        shutdown,
        reading_stopped,
        left,
        task: handle,
    }
}

struct Task {
    name: String,
    client_id: String,
    session: Session,
    dispatch: Arc<dyn Dispatch>,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    reconnect: Reconnect,
    metrics: Arc<Metrics>,
    status: Arc<SessionStatus>,
    record: Arc<StateFile>,
    /// What was last written to the record for this session.
    recorded: BTreeSet<String>,
    retiring: bool,
    /// False once reading stopped: nothing more goes to the router.
    reading: bool,
    reading_stopped: watch::Sender<bool>,
    /// Leaving the shared groups: their UNSUBSCRIBEs are out or confirmed.
    leaving: bool,
    /// Says the shared groups are left (confirmed, and nothing arrived since
    /// for [`QUIET`]).
    left: watch::Sender<bool>,
    /// The connection writes acknowledgements itself (MQTT 3.1.1).
    direct_acks: bool,
    /// Acknowledgements handed to rumqttc's channel and not yet sent.
    acks_in_channel: usize,
    /// How long a direct write of acknowledgements may take.
    write_timeout: Duration,
    /// A retired session that ended because nothing more arrived.
    went_quiet: bool,
    journal: Option<crate::journal::Journal>,
}

/// What became of a message taken from the connection.
enum Taken {
    Handled,
    /// `close` fired while it waited for room.
    Closing,
}

impl Task {
    async fn run(mut self, endpoint: Endpoint, shutdown: Shutdown) {
        let (client, mut conn) = endpoint.open(CHANNEL_CAPACITY);
        self.direct_acks = conn.writes_acks();
        self.write_record();
        // A retiring session ends once quiet; this timer restarts on every message.
        let quiet = tokio::time::sleep(QUIET);
        tokio::pin!(quiet);
        loop {
            if let Err(e) = self.write_acks(&mut conn).await {
                conn.reset();
                if !self.connection_failed(&e, &shutdown).await {
                    self.close(&client, &mut conn).await;
                    return;
                }
                continue;
            }
            self.flush_controls(&client);
            let event = {
                let poll = conn.poll();
                tokio::pin!(poll);
                loop {
                    let retired = self.retiring
                        && self.session.is_connected()
                        && self.session.unsubscribed()
                        && self.session.held() == 0;
                    let left = self.leaving
                        && !*self.left.borrow()
                        && self.session.is_connected()
                        && self.session.unsubscribed();
                    tokio::select! {
                        biased;
                        Some(done) = self.done_rx.recv() => {
                            self.finished(done);
                            self.flush_controls(&client);
                        }
                        Some(cmd) = self.commands.recv() => {
                            self.command(cmd);
                            self.flush_controls(&client);
                        }
                        () = shutdown.reading_stopped(), if self.reading => self.stop(),
                        () = shutdown.closing() => break None,
                        () = &mut quiet, if retired || left => {
                            if retired {
                                info!(session = %self.name, "retired session is quiet: leaving it");
                                self.went_quiet = true;
                                break None;
                            }
                            info!(session = %self.name, "left the shared subscription groups; the broker sends nothing more to this session");
                            let _ = self.left.send(true);
                        }
                        ev = &mut poll => break Some(ev),
                    }
                }
            };
            let Some(event) = event else {
                self.close(&client, &mut conn).await;
                return;
            };
            match event {
                Ok(Event::Connected {
                    session_present, ..
                }) => {
                    self.reconnect.reset();
                    self.session.connected(session_present);
                    self.status.set_connected(true);
                    self.status.set_ready(self.session.is_ready());
                    info!(session = %self.name, client_id = %self.client_id, session_present, "connected to the broker");
                }
                Ok(Event::Publish(received)) => {
                    quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
                    if !self.reading {
                        debug!(topic = %received.msg.topic, "stopping: left for the next session");
                        continue;
                    }
                    if let Taken::Closing = self.take(received, &client, &mut conn, &shutdown).await
                    {
                        self.close(&client, &mut conn).await;
                        return;
                    }
                }
                Ok(Event::SubAck { results }) => {
                    for r in results {
                        if let Err(reason) = r {
                            error!(session = %self.name, %reason, "the broker refused a subscription");
                            self.metrics.subscription_refused();
                        }
                    }
                    self.session.suback();
                    self.status.set_ready(self.session.is_ready());
                    self.write_record();
                }
                Ok(Event::UnsubAck) => {
                    self.session.unsuback();
                    self.write_record();
                    quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
                }
                Ok(Event::AckSent) => {
                    self.acks_in_channel = self.acks_in_channel.saturating_sub(1);
                    self.metrics.acked();
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.connection_failed(&e, &shutdown).await {
                        self.close(&client, &mut conn).await;
                        return;
                    }
                }
            }
        }
    }

    /// The connection failed: acknowledgements of it are void. Waits before
    /// the next attempt; false if `close` fired meanwhile.
    async fn connection_failed(&mut self, error: &str, shutdown: &Shutdown) -> bool {
        self.acks_in_channel = 0;
        if self.session.is_connected() {
            let lost = self.session.lost();
            self.status.set_connected(false);
            warn!(session = %self.name, %error, unacknowledged = lost, "lost the broker; reconnecting (unacknowledged messages will be redelivered)");
        } else {
            warn!(session = %self.name, %error, "cannot reach the broker");
        }
        let delay = self.reconnect.next_delay();
        self.wait(delay, shutdown).await
    }

    /// Writes the acknowledgements at the front of the outbox straight to the
    /// connection (MQTT 3.1.1), once none is left in rumqttc's channel (they
    /// leave in order). Only between polls.
    async fn write_acks(&mut self, conn: &mut Connection) -> Result<(), String> {
        if !self.direct_acks || self.acks_in_channel > 0 || !self.session.is_connected() {
            return Ok(());
        }
        let pkids: Vec<u16> = self.session.front_acks(256);
        if pkids.is_empty() {
            return Ok(());
        }
        if conn.write_acks(&pkids, self.write_timeout).await? {
            for _ in &pkids {
                self.session.control_taken();
                self.metrics.acked();
            }
        }
        Ok(())
    }

    /// Reading stopped: nothing more goes to the router.
    fn stop(&mut self) {
        self.reading = false;
        let _ = self.reading_stopped.send(true);
    }

    /// Holds `received` against the pending limit and dispatches it.
    async fn take(
        &mut self,
        received: Received,
        client: &Client,
        conn: &mut Connection,
        shutdown: &Shutdown,
    ) -> Taken {
        let Received {
            msg,
            pkid,
            dup,
            subscription_ids,
        } = received;
        self.metrics.received();
        if self.session.already_done(pkid, dup, &msg) {
            self.metrics.redelivery_already_done();
            self.flush_controls(client);
            return Taken::Handled;
        }
        let permit = loop {
            if let Ok(p) = Arc::clone(&self.pending).try_acquire_owned() {
                break p;
            }
            self.metrics.backpressure();
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => {
                    self.finished(done);
                    // Not polling now: the acknowledgements go out directly.
                    if let Err(e) = self.write_acks(conn).await {
                        // Seen as a lost connection by the next poll.
                        warn!(session = %self.name, error = %e, "cannot write acknowledgements; reconnecting");
                        conn.reset();
                        self.acks_in_channel = 0;
                        if self.session.is_connected() {
                            self.session.lost();
                            self.status.set_connected(false);
                        }
                        return Taken::Handled;
                    }
                    self.flush_controls(client);
                }
                Some(cmd) = self.commands.recv() => {
                    self.command(cmd);
                    self.flush_controls(client);
                }
                () = shutdown.reading_stopped(), if self.reading => {
                    // Not admitted: the broker redelivers it next session.
                    self.stop();
                    debug!(topic = %msg.topic, "stopping: left for the next session");
                    return Taken::Handled;
                }
                () = shutdown.closing() => return Taken::Closing,
                p = Arc::clone(&self.pending).acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => return Taken::Closing,
                },
            }
        };
        if let Some(journal) = &self.journal {
            // Store and forward: acknowledged once durable in the journal.
            let token = self.session.admit(pkid, &msg);
            let completion = Completion::new(token, self.done_tx.clone(), Some(permit));
            let replayed: Vec<String> = if msg.retain {
                self.session
                    .recorded_filters()
                    .into_iter()
                    .filter(|f| self.session.subscribed_before(f))
                    .collect()
            } else {
                Vec::new()
            };
            let record = crate::journal::codec::record(
                &self.name,
                crate::metrics::now_ms(),
                &msg,
                subscription_ids,
                replayed,
            );
            // Submitted here, in arrival order; durable (and acknowledged) later.
            let durable = journal.submit(record);
            let done = completion.route();
            let close = shutdown.close_token();
            tokio::spawn(async move {
                tokio::select! {
                    // Not acknowledged: the broker redelivers it.
                    () = close.cancelled() => {}
                    stored = durable => match stored {
                        Ok(_) => done.success(),
                        Err(e) => error!(error = %e, "not in the journal, so not acknowledged (the broker redelivers it)"),
                    },
                }
            });
            return Taken::Handled;
        }
        let token = self.session.admit(pkid, &msg);
        let completion = Completion::new(token, self.done_tx.clone(), Some(permit));
        if token.is_some() {
            self.session.hold(pkid, &msg, completion.superseder());
        }
        let session = &self.session;
        let subscribed_before = |filter: &str| session.subscribed_before(filter);
        let delivery = Delivery {
            session: &self.name,
            subscription_ids: &subscription_ids,
            subscribed_before: &subscribed_before,
        };
        if self.dispatch.dispatch(msg, &delivery, &completion) == Err(Closed) {
            // Only while stopping, after `reading_stopped`; kept as a guard.
            completion.refuse();
        }
        Taken::Handled
    }

    fn finished(&mut self, done: Finished) {
        self.session.finished(done);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(subs) => {
                info!(session = %self.name, filters = ?subs.iter().map(|s| &s.filter).collect::<Vec<_>>(), "subscribing");
                self.session.subscribe(subs);
                self.status.set_ready(self.session.is_ready());
            }
            Command::Unsubscribe(filters) => {
                info!(session = %self.name, ?filters, "unsubscribing");
                self.session.unsubscribe(filters);
            }
            Command::Retire => {
                info!(session = %self.name, "no route uses this session any more: retiring it");
                self.retiring = true;
                self.status.set_serving(false);
                let all: Vec<String> = self.session.recorded_filters().into_iter().collect();
                self.session.unsubscribe(all);
            }
            Command::LeaveShared => {
                let shared: Vec<String> = self
                    .session
                    .recorded_filters()
                    .into_iter()
                    .filter(|f| f.starts_with("$share/"))
                    .collect();
                if shared.is_empty() || !self.session.is_connected() {
                    if !shared.is_empty() {
                        warn!(session = %self.name, filters = ?shared, "stopping while disconnected: the broker may go on queueing shares to this session until it returns");
                    }
                    let _ = self.left.send(true);
                } else {
                    info!(session = %self.name, filters = ?shared, "leaving the shared subscription groups before stopping");
                    self.leaving = true;
                    self.session.unsubscribe(shared);
                }
            }
        }
        // Record a new filter before its SUBSCRIBE leaves.
        self.write_record();
    }

    /// Hands waiting control packets to the client while it has room.
    fn flush_controls(&mut self, client: &Client) {
        if !self.session.is_connected() {
            return;
        }
        while let Some(control) = self.session.next_control() {
            let is_ack = matches!(control, Control::Ack { .. });
            let taken = match control {
                // Written directly between polls; one in the channel at a time
                // wakes an idle poll (and keeps the order).
                Control::Ack { .. } if self.direct_acks && self.acks_in_channel > 0 => false,
                Control::Ack { qos, pkid } => {
                    let ok = client.try_ack(*qos, *pkid).is_ok();
                    if ok {
                        self.acks_in_channel += 1;
                    }
                    ok
                }
                Control::Subscribe(subs) => match client.try_subscribe(subs) {
                    Ok(packets) => {
                        self.session.subscribe_sent(packets);
                        true
                    }
                    Err((sent, _)) => {
                        self.session.subscribe_partly_sent(sent);
                        false
                    }
                },
                Control::Unsubscribe(filter) => {
                    let ok = client.try_unsubscribe(filter).is_ok();
                    if ok {
                        self.session.unsubscribe_sent();
                    }
                    ok
                }
            };
            if !taken {
                if !is_ack || !self.direct_acks {
                    self.metrics.control_waited();
                }
                break;
            }
            self.session.control_taken();
        }
        self.status.set_ready(self.session.is_ready());
    }

    /// Writes the session's filters to the record when they changed.
    fn write_record(&mut self) {
        let now = self.session.recorded_filters();
        if now != self.recorded {
            self.record.record(&self.client_id, now.clone());
            self.recorded = now;
        }
    }

    /// Sleeps before reconnecting while still taking in finished deliveries.
    async fn wait(&mut self, delay: Duration, shutdown: &Shutdown) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => self.finished(done),
                Some(cmd) = self.commands.recv() => self.command(cmd),
                () = shutdown.reading_stopped(), if self.reading => self.stop(),
                () = shutdown.closing() => return false,
                () = &mut sleep => return true,
            }
        }
    }

    /// Sends the acks that are due and a DISCONNECT, keeping the session.
    async fn close(&mut self, client: &Client, conn: &mut Connection) {
        self.stop();
        while let Ok(done) = self.done_rx.try_recv() {
            self.finished(done);
        }
        self.flush_controls(client);
        // A retired session that went quiet holds nothing at the broker.
        if self.went_quiet {
            self.record.forget(&self.client_id);
            self.metrics.remove_session(&self.name);
        }
        self.status.set_connected(false);
        if !self.session.is_connected() {
            return;
        }
        // Let the event loop write the queued acks (and what still waits in the
        // outbox) and the DISCONNECT.
        let flushed = async {
            loop {
                if self.write_acks(conn).await.is_err() {
                    return;
                }
                self.flush_controls(client);
                if self.session.outbox_len() == 0 && self.acks_in_channel == 0 {
                    break;
                }
                match conn.poll().await {
                    Ok(Event::AckSent) => {
                        self.acks_in_channel = self.acks_in_channel.saturating_sub(1);
                        self.metrics.acked();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            if client.try_disconnect().is_err() {
                return;
            }
            conn.flush(Duration::from_secs(2)).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        info!(session = %self.name, "disconnected from the broker; the session stays with it");
    }
}
