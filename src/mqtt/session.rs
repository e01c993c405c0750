//! The protocol state of one subscriber session, apart from the network loop
//! ([`super::inbound`]) so it can be tested alone.
//!
//! A [`Session`] knows:
//! - which deliveries wait for their acknowledgement, in arrival order, per
//!   connection epoch ([`AckTracker`]);
//! - which deliveries the routes still hold, so a broker's redelivery after a
//!   reconnect can be settled against the copy from before
//!   ([`crate::ack::Superseder`]);
//! - which filters the configuration wants, and which ones the broker may
//!   still hold from before (an earlier configuration, a removed route), which
//!   it unsubscribes;
//! - the *outbox*: acknowledgements, SUBSCRIBEs and UNSUBSCRIBEs waiting to be
//!   handed to the client. Nothing is ever dropped for lack of room: a control
//!   packet waits in the outbox, in order, until the client's request channel
//!   takes it. Only acknowledgements of a lost connection are discarded, because
//!   their packet ids mean nothing on the next one (the broker redelivers those
//!   messages instead).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use super::Subscription;
use crate::ack::{AckToken, AckTracker, Finished, Redelivery, Superseder};
use crate::message::{Message, QoS};

/// A control packet waiting for room in the client's request channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Ack { qos: QoS, pkid: u16 },
    Subscribe(Vec<Subscription>),
    Unsubscribe(String),
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

/// The state of one subscriber session.
pub struct Session {
    tracker: AckTracker,
    connected: bool,
    /// This connection's QoS 1/2 deliveries not yet finished, by packet id.
    held: HashMap<u16, Held>,
    /// Earlier connections' deliveries that a redelivery may settle, by packet id.
    earlier: HashMap<u16, Earlier>,
    /// At most this many `earlier` entries are kept (finished ones go first).
    earlier_limit: usize,
    /// The subscriptions the configuration wants, by filter.
    wanted: BTreeMap<String, Subscription>,
    /// Filters the broker may hold although nothing wants them any more.
    stale: BTreeSet<String>,
    /// Filters this client id has subscribed (in an earlier run, or earlier
    /// in this one).
    seen: BTreeSet<String>,
    /// Filters whose last SUBSCRIBE was not their first: the retained
    /// messages the broker sends for it are replays.
    replayed: BTreeSet<String>,
    outbox: VecDeque<Control>,
    /// True until the wanted filters were subscribed once in this process (the
    /// broker's session may hold an older configuration's filters), and again
    /// after a connection was lost while a SUBSCRIBE was unconfirmed.
    must_subscribe: bool,
    subacks_due: usize,
    unsubacks_due: usize,
    ready: bool,
}

impl Session {
    /// A session that wants `wanted`; the broker may also hold `previous` (the
    /// filters recorded for this client id by an earlier run).
    pub fn new(wanted: Vec<Subscription>, previous: BTreeSet<String>, max_pending: usize) -> Self {
        let wanted: BTreeMap<String, Subscription> =
            wanted.into_iter().map(|s| (s.filter.clone(), s)).collect();
        let stale = previous
            .iter()
            .filter(|f| !wanted.contains_key(*f))
            .cloned()
            .collect();
        Session {
            tracker: AckTracker::new(),
            connected: false,
            held: HashMap::new(),
            earlier: HashMap::new(),
            earlier_limit: max_pending.saturating_mul(2).saturating_add(64),
            wanted,
            stale,
            seen: previous,
            replayed: BTreeSet::new(),
            outbox: VecDeque::new(),
            must_subscribe: true,
            subacks_due: 0,
            unsubacks_due: 0,
            ready: false,
        }
    }

    /// The broker accepted the connection.
    pub fn connected(&mut self, session_present: bool) {
        self.connected = true;
        if !session_present {
            // No session: the broker redelivers nothing and its packet ids start
            // afresh, so no earlier delivery can be recognised any more; and it
            // holds no subscriptions, not even stale ones.
            self.earlier.clear();
            self.stale.clear();
        }
        // With a resumed session the broker still has our subscriptions; without
        // one (clean session, or a broker that lost it) rumqttc does not
        // resubscribe by itself.
        if self.must_subscribe || !session_present {
            let all: Vec<Subscription> = self.wanted.values().cloned().collect();
            self.queue_subscribe(all);
        }
        for f in &self.stale {
            self.outbox.push_back(Control::Unsubscribe(f.clone()));
        }
        self.update_ready();
    }

    /// The connection was lost: nothing tracked so far may be acknowledged any
    /// more. Returns how many deliveries were waiting for their acknowledgement.
    pub fn lost(&mut self) -> usize {
        self.connected = false;
        self.ready = false;
        let unacknowledged = self.tracker.len();
        self.tracker.new_epoch();
        self.outbox.retain(|c| !matches!(c, Control::Ack { .. }));
        // A SUBSCRIBE may have been lost with the connection, or not sent yet:
        // the next connection subscribes everything again (idempotent). Stale
        // filters stay stale until an UNSUBACK, so they are sent again too.
        if self.subacks_due > 0 || self.outbox_has_subscribe() {
            self.must_subscribe = true;
        }
        self.outbox
            .retain(|c| !matches!(c, Control::Subscribe(_) | Control::Unsubscribe(_)));
        self.subacks_due = 0;
        self.unsubacks_due = 0;
        // What the routes still hold may come back as redeliveries; keep
        // enough to recognise them (not the payloads).
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
        unacknowledged
    }

    /// A message arrived on this connection. If it is the broker's redelivery
    /// of a copy processed completely before a reconnect, its acknowledgement
    /// is queued and this returns true: there is nothing else to do.
    pub fn already_done(&mut self, pkid: u16, dup: bool, msg: &Message) -> bool {
        if !dup
            || msg.qos == QoS::AtMostOnce
            || self.settle_redelivery(pkid, msg) != Redelivery::AlreadyDone
        {
            return false;
        }
        // Processed completely before the reconnect: only the ack was lost.
        let token = self.tracker.register(msg.qos, pkid);
        self.finished(Finished {
            token: Some(token),
            ack: true,
        });
        true
    }

    /// Takes a message in: its place in the acknowledgement order (`None` for
    /// QoS 0, which has nothing to acknowledge).
    pub fn admit(&mut self, pkid: u16, msg: &Message) -> Option<AckToken> {
        (msg.qos != QoS::AtMostOnce).then(|| self.tracker.register(msg.qos, pkid))
    }

    /// The routes took the delivery `pkid` of this connection; `superseder`
    /// lets a redelivery settle against it after a reconnect.
    pub fn hold(&mut self, pkid: u16, msg: &Message, superseder: Superseder) {
        if superseder.is_held() {
            self.held.insert(
                pkid,
                Held {
                    topic: msg.topic.clone(),
                    payload: msg.payload.clone(),
                    superseder,
                },
            );
        }
    }

    /// A redelivery of `pkid`: settles it against an earlier connection's copy
    /// of the same message, if there is one.
    fn settle_redelivery(&mut self, pkid: u16, msg: &Message) -> Redelivery {
        let Some(earlier) = self.earlier.remove(&pkid) else {
            return Redelivery::Process;
        };
        if earlier.topic != msg.topic
            || earlier.payload_len != msg.payload.len()
            || earlier.payload_hash != payload_hash(&msg.payload)
        {
            return Redelivery::Process;
        }
        earlier.superseder.settle()
    }

    /// A delivery finished; queues the acknowledgements now due, in order.
    /// Returns how many were queued.
    pub fn finished(&mut self, done: Finished) -> usize {
        let Some(token) = done.token else { return 0 };
        if token.epoch == self.tracker.epoch() {
            self.held.remove(&token.pkid);
        }
        let due = self.tracker.finish(token, done.ack);
        let n = due.len();
        self.outbox.extend(
            due.into_iter()
                .map(|(qos, pkid)| Control::Ack { qos, pkid }),
        );
        n
    }

    /// The configuration now also wants `subs` (new filters, or new settings).
    pub fn subscribe(&mut self, subs: Vec<Subscription>) {
        for s in &subs {
            self.stale.remove(&s.filter);
            self.wanted.insert(s.filter.clone(), s.clone());
        }
        if self.connected {
            self.queue_subscribe(subs);
            self.update_ready();
        }
    }

    /// Queues a SUBSCRIBE of `subs`, noting for each filter whether the
    /// retained messages it brings are replays (the filter was subscribed
    /// before) or new.
    fn queue_subscribe(&mut self, subs: Vec<Subscription>) {
        if subs.is_empty() {
            return;
        }
        for s in &subs {
            if self.seen.insert(s.filter.clone()) {
                self.replayed.remove(&s.filter);
            } else {
                self.replayed.insert(s.filter.clone());
            }
        }
        self.outbox.push_back(Control::Subscribe(subs));
    }

    /// The configuration no longer wants `filters`.
    pub fn unsubscribe(&mut self, filters: Vec<String>) {
        for f in filters {
            if self.wanted.remove(&f).is_some() || self.seen.contains(&f) {
                self.stale.insert(f.clone());
                if self.connected {
                    self.outbox.push_back(Control::Unsubscribe(f));
                }
            }
        }
    }

    /// The client took a SUBSCRIBE from the outbox: `packets` SUBACKs will follow.
    pub fn subscribe_sent(&mut self, packets: usize) {
        self.subacks_due += packets;
        self.update_ready();
    }

    /// The client took the first `n` filters of the SUBSCRIBE at the front of
    /// the outbox (one packet each, MQTT 5) before it ran out of room.
    pub fn subscribe_partly_sent(&mut self, n: usize) {
        if let Some(Control::Subscribe(subs)) = self.outbox.front_mut() {
            subs.drain(..n.min(subs.len()));
        }
        self.subacks_due += n;
    }

    /// The client took an UNSUBSCRIBE from the outbox.
    pub fn unsubscribe_sent(&mut self) {
        self.unsubacks_due += 1;
    }

    /// A SUBACK arrived. Under MQTT 5 each filter has its own; the broker
    /// answers SUBSCRIBEs in order.
    pub fn suback(&mut self) {
        self.subacks_due = self.subacks_due.saturating_sub(1);
        if self.subacks_due == 0 && !self.outbox_has_subscribe() {
            self.must_subscribe = false;
        }
        self.update_ready();
    }

    /// An UNSUBACK arrived: the oldest unconfirmed UNSUBSCRIBE is done. Once
    /// all are, no stale filter is left with the broker.
    pub fn unsuback(&mut self) {
        self.unsubacks_due = self.unsubacks_due.saturating_sub(1);
        if self.unsubacks_due == 0 && !self.outbox_has_unsubscribe() {
            for f in std::mem::take(&mut self.stale) {
                self.seen.remove(&f);
                self.replayed.remove(&f);
            }
        }
    }

    fn outbox_has_subscribe(&self) -> bool {
        self.outbox
            .iter()
            .any(|c| matches!(c, Control::Subscribe(_)))
    }

    fn outbox_has_unsubscribe(&self) -> bool {
        self.outbox
            .iter()
            .any(|c| matches!(c, Control::Unsubscribe(_)))
    }

    fn update_ready(&mut self) {
        self.ready = self.connected && self.subacks_due == 0 && !self.outbox_has_subscribe();
    }

    /// Connected, with every wanted subscription confirmed.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Every UNSUBSCRIBE confirmed and nothing stale left.
    pub fn unsubscribed(&self) -> bool {
        self.unsubacks_due == 0 && self.stale.is_empty() && !self.outbox_has_unsubscribe()
    }

    /// Whether a retained message on `filter` is a replay: the filter's last
    /// SUBSCRIBE was not its first for this client id.
    pub fn subscribed_before(&self, filter: &str) -> bool {
        self.replayed.contains(filter)
    }

    /// The filters the broker may hold for this session: what to record, so a
    /// later run can unsubscribe what its configuration no longer has.
    pub fn recorded_filters(&self) -> BTreeSet<String> {
        self.wanted
            .keys()
            .chain(self.stale.iter())
            .cloned()
            .collect()
    }

    /// The next control packet to hand to the client.
    pub fn next_control(&self) -> Option<&Control> {
        self.outbox.front()
    }

    /// The packet ids of the QoS 1 acknowledgements at the front of the
    /// outbox, at most `max`, in order (they are taken with
    /// [`Session::control_taken`] once written).
    pub fn front_acks(&self, max: usize) -> Vec<u16> {
        self.outbox
            .iter()
            .take(max)
            .map_while(|c| match c {
                Control::Ack {
                    qos: QoS::AtLeastOnce,
                    pkid,
                } => Some(*pkid),
                _ => None,
            })
            .collect()
    }

    /// The client took the front control packet.
    pub fn control_taken(&mut self) -> Option<Control> {
        self.outbox.pop_front()
    }

    /// Control packets waiting for room.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Deliveries waiting for their acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.tracker.len()
    }

    /// Deliveries the routes still hold on this connection.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Completion;
    use tokio::sync::mpsc;

    fn sub(f: &str, id: usize) -> Subscription {
        Subscription {
            filter: f.into(),
            qos: QoS::AtLeastOnce,
            id,
        }
    }

    fn msg(topic: &str, payload: &'static [u8]) -> Message {
        Message::new(topic, Bytes::from_static(payload), QoS::AtLeastOnce)
    }

    fn drain(s: &mut Session) -> Vec<Control> {
        std::iter::from_fn(|| s.control_taken()).collect()
    }

    #[test]
    fn a_first_connection_subscribes_and_unsubscribes_what_an_earlier_run_left() {
        let previous = ["a/+".to_string(), "old/#".to_string()].into();
        let mut s = Session::new(vec![sub("a/+", 1), sub("b", 2)], previous, 10);
        s.connected(true);
        assert!(!s.is_ready());
        assert_eq!(
            drain(&mut s),
            vec![
                Control::Subscribe(vec![sub("a/+", 1), sub("b", 2)]),
                Control::Unsubscribe("old/#".into())
            ]
        );
        s.subscribe_sent(1);
        s.unsubscribe_sent();
        assert_eq!(s.recorded_filters().len(), 3, "old/# until its UNSUBACK");
        s.suback();
        assert!(s.is_ready());
        s.unsuback();
        assert!(s.unsubscribed());
        assert_eq!(
            s.recorded_filters(),
            ["a/+".to_string(), "b".to_string()].into()
        );
        // a/+ was subscribed by an earlier run: its retained messages are
        // replays; b is new. After the next SUBSCRIBE both are replays.
        assert!(s.subscribed_before("a/+") && !s.subscribed_before("b"));
        assert!(!s.subscribed_before("old/#"));
        s.lost();
        s.connected(false);
        assert!(s.subscribed_before("a/+") && s.subscribed_before("b"));
    }

    #[test]
    fn a_resumed_session_is_not_subscribed_again_after_the_first_time() {
        let mut s = Session::new(vec![sub("a", 1)], BTreeSet::new(), 10);
        s.connected(false);
        assert_eq!(drain(&mut s).len(), 1);
        s.subscribe_sent(1);
        s.suback();
        s.lost();
        s.connected(true);
        assert!(drain(&mut s).is_empty());
        assert!(s.is_ready());
        // A broker that lost the session gets the subscriptions again.
        s.lost();
        s.connected(false);
        assert_eq!(drain(&mut s), vec![Control::Subscribe(vec![sub("a", 1)])]);
    }

    #[test]
    fn acks_wait_in_order_and_only_a_lost_connection_drops_them() {
        let mut s = Session::new(vec![], BTreeSet::new(), 10);
        s.connected(false);
        let tokens: Vec<_> = (1..=3)
            .map(|pkid| s.admit(pkid, &msg("t", b"x")).unwrap())
            .collect();
        assert_eq!(
            s.finished(Finished {
                token: Some(tokens[2]),
                ack: true
            }),
            0
        );
        assert_eq!(
            s.finished(Finished {
                token: Some(tokens[0]),
                ack: true
            }),
            1
        );
        // No room in the client: the acks wait, in order.
        assert_eq!(
            s.next_control(),
            Some(&Control::Ack {
                qos: QoS::AtLeastOnce,
                pkid: 1
            })
        );
        assert_eq!(
            s.finished(Finished {
                token: Some(tokens[1]),
                ack: true
            }),
            2
        );
        assert_eq!(
            drain(&mut s),
            (1..=3)
                .map(|pkid| Control::Ack {
                    qos: QoS::AtLeastOnce,
                    pkid
                })
                .collect::<Vec<_>>()
        );
        // Acks still waiting when the connection drops are discarded; a
        // SUBSCRIBE waiting is sent again on the next connection.
        let t = s.admit(4, &msg("t", b"y")).unwrap();
        s.finished(Finished {
            token: Some(t),
            ack: true,
        });
        s.subscribe(vec![sub("n", 3)]);
        assert_eq!(s.outbox_len(), 2);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.outbox_len(), 0);
        s.connected(true);
        assert_eq!(drain(&mut s), vec![Control::Subscribe(vec![sub("n", 3)])]);
    }

    #[test]
    fn a_redelivery_of_a_finished_copy_is_only_acknowledged() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = Session::new(vec![], BTreeSet::new(), 10);
        s.connected(true);
        let m = msg("t", b"p");
        assert!(!s.already_done(7, false, &m));
        let token = s.admit(7, &m);
        let c = Completion::new(token, tx, None);
        s.hold(7, &m, c.superseder());
        let r = c.route();
        drop(c);
        assert!(r.start());
        s.lost();
        r.success(); // finished after the connection was lost: its ack is void
        s.connected(true);
        assert!(s.already_done(7, true, &m));
        assert_eq!(
            drain(&mut s),
            vec![Control::Ack {
                qos: QoS::AtLeastOnce,
                pkid: 7
            }]
        );
        // A different payload under the same packet id is a different message.
        let other = msg("t", b"q");
        assert!(!s.already_done(7, true, &other));
    }

    #[test]
    fn removed_filters_are_unsubscribed_and_forgotten_once_confirmed() {
        let mut s = Session::new(vec![sub("a", 1), sub("b", 2)], BTreeSet::new(), 10);
        s.connected(false);
        drain(&mut s);
        s.subscribe_sent(1);
        s.suback();
        s.unsubscribe(vec!["b".into()]);
        assert_eq!(drain(&mut s), vec![Control::Unsubscribe("b".into())]);
        s.unsubscribe_sent();
        assert!(s.recorded_filters().contains("b"));
        s.unsuback();
        assert_eq!(s.recorded_filters(), ["a".to_string()].into());
    }
}
