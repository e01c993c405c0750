//! Acknowledgements: each source message is acknowledged once, after every route
//! that took it has finished, and PUBACKs leave in the order the PUBLISHes
//! arrived (MQTT-4.6.0-2), although routes finish out of order.
//!
//! [`Completion`] is the shared fate of one delivery: every route handling it
//! holds a [`RouteDone`] (one per [`Completion::route`] call), and when the last
//! one and the completion itself are dropped, the delivery's outcome is sent to
//! the connection task. It counts as done only if every route said so
//! ([`RouteDone::success`]); a route that was cancelled (shutdown past the drain
//! deadline) leaves the message unacknowledged, so the broker redelivers it.
//!
//! After a lost connection the broker redelivers what was not acknowledged,
//! while the bridge may still hold those messages. A [`Superseder`] lets the
//! connection task settle such a redelivery against the copy from before: a copy
//! no route has started yet is *superseded* (dropped unprocessed, the redelivery
//! is processed instead); a copy that finished successfully means the
//! redelivery only needs its acknowledgement. A copy in progress runs to its end
//! and the redelivery is processed as well (a duplicate).
//!
//! [`AckTracker`] lives in the connection task. It numbers deliveries of one
//! connection (an *epoch*), holds finished ones until all earlier ones have
//! finished, and then releases their acks in order. After a disconnect the broker
//! redelivers whatever was not acknowledged, so acks of an older epoch are dropped
//! rather than sent over a new connection where their packet ids mean nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::message::QoS;

/// Identifies a tracked delivery: its connection epoch, its sequence number and
/// the broker's packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub epoch: u64,
    pub seq: u64,
    pub pkid: u16,
}

/// The outcome of one delivery, sent to the connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// `None` for QoS 0, which has nothing to acknowledge.
    pub token: Option<AckToken>,
    /// Whether every route finished it (so it may be acknowledged).
    pub ack: bool,
}

/// The life of a delivery, as seen by [`Superseder`] (stored as its `u8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Life {
    /// No route has started it.
    Waiting = 0,
    /// A route has started it: it will not be superseded.
    Started = 1,
    /// A redelivery replaced it: routes drop it unprocessed.
    Superseded = 2,
    /// Every route finished it: it deserved its acknowledgement.
    Done = 3,
    /// It ended without every route finishing it.
    Failed = 4,
}

impl Life {
    fn load(cell: &AtomicU8) -> Life {
        match cell.load(Ordering::Acquire) {
            0 => Life::Waiting,
            1 => Life::Started,
            2 => Life::Superseded,
            3 => Life::Done,
            _ => Life::Failed,
        }
    }

    /// Moves `cell` from `from` to `to`; on failure returns what it holds.
    fn advance(cell: &AtomicU8, from: Life, to: Life) -> Result<(), Life> {
        cell.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| Life::load(cell))
    }
}

struct Shared {
    /// Routes handed the delivery ([`Completion::route`] calls).
    routes: AtomicUsize,
    succeeded: AtomicUsize,
    /// Set when the bridge could not hand the delivery to its routes (it was
    /// stopping): it must not be acknowledged.
    refused: AtomicBool,
    state: Arc<AtomicU8>,
    token: Option<AckToken>,
    done: mpsc::UnboundedSender<Finished>,
    /// Returned when the delivery is finished: bounds the messages held at once.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let ack = !self.refused.load(Ordering::Acquire)
            && self.succeeded.load(Ordering::Acquire) == self.routes.load(Ordering::Acquire);
        let life = if ack { Life::Done } else { Life::Failed };
        self.state.store(life as u8, Ordering::Release);
        // The receiver is gone only when the connection task has stopped, and
        // then there is nobody left to acknowledge to.
        let _ = self.done.send(Finished {
            token: self.token,
            ack,
        });
    }
}

/// The shared fate of one delivery; split into one [`RouteDone`] per route.
pub struct Completion {
    shared: Arc<Shared>,
}

impl Completion {
    pub fn new(
        token: Option<AckToken>,
        done: mpsc::UnboundedSender<Finished>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Completion {
        Completion {
            shared: Arc::new(Shared {
                routes: AtomicUsize::new(0),
                succeeded: AtomicUsize::new(0),
                refused: AtomicBool::new(false),
                state: Arc::new(AtomicU8::new(Life::Waiting as u8)),
                token,
                done,
                _permit: permit,
            }),
        }
    }

    /// A handle for one more route that takes the delivery. Every handle is
    /// made before the completion is dropped (the router makes them all in one
    /// dispatch), so the count is final before the outcome is decided.
    pub fn route(&self) -> RouteDone {
        self.shared.routes.fetch_add(1, Ordering::AcqRel);
        RouteDone {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The delivery could not be handed to its routes: it is not acknowledged
    /// (the broker redelivers it in the next session).
    pub fn refuse(&self) {
        self.shared.refused.store(true, Ordering::Release);
    }

    /// A handle on this delivery's fate that does not keep it alive.
    pub fn superseder(&self) -> Superseder {
        Superseder {
            state: Arc::clone(&self.shared.state),
        }
    }
}

/// What the connection task knows of a delivery it may see redelivered.
#[derive(Debug, Clone)]
pub struct Superseder {
    state: Arc<AtomicU8>,
}

/// What to do with a redelivery, given the copy from before the reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Process it: the earlier copy was waiting and is now dropped, or it is
    /// in progress or failed.
    Process,
    /// The earlier copy was processed completely: acknowledge without processing.
    AlreadyDone,
}

impl Superseder {
    /// Settles a redelivery of this delivery: supersedes it if no route has
    /// started it yet.
    pub fn settle(&self) -> Redelivery {
        match Life::advance(&self.state, Life::Waiting, Life::Superseded) {
            Err(Life::Done) => Redelivery::AlreadyDone,
            _ => Redelivery::Process,
        }
    }

    /// Whether some route still holds the delivery.
    pub fn is_held(&self) -> bool {
        matches!(Life::load(&self.state), Life::Waiting | Life::Started)
    }

    /// Whether a redelivery could still be settled against it.
    pub fn is_settleable(&self) -> bool {
        matches!(
            Life::load(&self.state),
            Life::Waiting | Life::Started | Life::Done
        )
    }
}

/// One route's share of a delivery. Dropping it without [`RouteDone::success`]
/// means the route did not finish: the message will not be acknowledged.
pub struct RouteDone {
    shared: Arc<Shared>,
}

impl RouteDone {
    /// Called by a route before it does any work: false when a redelivery has
    /// superseded the message, which the route must then drop unprocessed.
    pub fn start(&self) -> bool {
        match Life::advance(&self.shared.state, Life::Waiting, Life::Started) {
            Ok(()) => true,
            Err(life) => life == Life::Started,
        }
    }

    /// The route finished with this message (invoked and republished, skipped, or
    /// dead-lettered): it may be acknowledged as far as this route is concerned.
    pub fn success(self) {
        self.shared.succeeded.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Slot {
    qos: QoS,
    pkid: u16,
    state: SlotState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Working,
    Ack,
    /// Finished without being acknowledged (it will be redelivered).
    Release,
}

/// Orders the acknowledgements of one connection's QoS 1/2 deliveries.
#[derive(Debug, Default)]
pub struct AckTracker {
    epoch: u64,
    /// Sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<Slot>,
}

impl AckTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a delivery that needs an acknowledgement.
    pub fn register(&mut self, qos: QoS, pkid: u16) -> AckToken {
        let seq = self.head + self.slots.len() as u64;
        self.slots.push_back(Slot {
            qos,
            pkid,
            state: SlotState::Working,
        });
        AckToken {
            epoch: self.epoch,
            seq,
            pkid,
        }
    }

    /// Records a finished delivery; returns the `(qos, pkid)` acks now due, in order.
    pub fn finish(&mut self, token: AckToken, ack: bool) -> Vec<(QoS, u16)> {
        let mut due = Vec::new();
        if token.epoch != self.epoch || token.seq < self.head {
            return due;
        }
        let Ok(index) = usize::try_from(token.seq - self.head) else {
            return due;
        };
        match self.slots.get_mut(index) {
            Some(slot) => {
                slot.state = if ack {
                    SlotState::Ack
                } else {
                    SlotState::Release
                }
            }
            None => return due,
        }
        while let Some(front) = self.slots.front() {
            match front.state {
                SlotState::Working => break,
                SlotState::Ack => due.push((front.qos, front.pkid)),
                SlotState::Release => {}
            }
            self.slots.pop_front();
            self.head += 1;
        }
        due
    }

    /// The current connection's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The connection was lost: nothing tracked so far may be acknowledged any more.
    pub fn new_epoch(&mut self) {
        self.epoch += 1;
        self.head = 0;
        self.slots.clear();
    }

    /// Deliveries still waiting for their acknowledgement.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery's token for tests of [`Completion`].
    const TOKEN: Option<AckToken> = Some(AckToken {
        epoch: 0,
        seq: 0,
        pkid: 1,
    });

    #[test]
    fn acks_are_released_in_arrival_order() {
        let mut t = AckTracker::new();
        let a = t.register(QoS::AtLeastOnce, 1);
        let b = t.register(QoS::AtLeastOnce, 2);
        let c = t.register(QoS::ExactlyOnce, 3);
        assert!(t.finish(c, true).is_empty());
        assert!(t.finish(b, true).is_empty());
        assert_eq!(
            t.finish(a, true),
            vec![
                (QoS::AtLeastOnce, 1),
                (QoS::AtLeastOnce, 2),
                (QoS::ExactlyOnce, 3)
            ]
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_released_delivery_is_skipped_without_an_ack() {
        let mut t = AckTracker::new();
        let a = t.register(QoS::AtLeastOnce, 1);
        let b = t.register(QoS::AtLeastOnce, 2);
        assert!(t.finish(b, true).is_empty());
        assert_eq!(t.finish(a, false), vec![(QoS::AtLeastOnce, 2)]);
    }

    #[test]
    fn tokens_of_an_old_connection_are_ignored() {
        let mut t = AckTracker::new();
        let old = t.register(QoS::AtLeastOnce, 7);
        t.new_epoch();
        let new = t.register(QoS::AtLeastOnce, 7);
        assert!(t.finish(old, true).is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.finish(new, true), vec![(QoS::AtLeastOnce, 7)]);
    }

    #[test]
    fn completion_acks_only_when_every_route_succeeded() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let token = TOKEN;
        let c = Completion::new(token, tx.clone(), None);
        let (r1, r2) = (c.route(), c.route());
        drop(c);
        r1.success();
        assert!(rx.try_recv().is_err(), "must wait for the second route");
        drop(r2); // cancelled, never succeeded
        assert_eq!(rx.try_recv().unwrap(), Finished { token, ack: false });

        // No route took it: nothing to wait for.
        let c = Completion::new(None, tx.clone(), None);
        drop(c);
        assert_eq!(
            rx.try_recv().unwrap(),
            Finished {
                token: None,
                ack: true
            }
        );

        // Refused (the bridge was stopping): never acknowledged.
        let c = Completion::new(token, tx, None);
        c.refuse();
        drop(c);
        assert_eq!(rx.try_recv().unwrap(), Finished { token, ack: false });
    }

    #[test]
    fn a_redelivery_supersedes_a_waiting_copy_and_only_a_waiting_one() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let token = TOKEN;

        // Superseded before any route started: every route drops it.
        let c = Completion::new(token, tx.clone(), None);
        let (r1, r2) = (c.route(), c.route());
        let sup = c.superseder();
        drop(c);
        assert!(sup.is_held());
        assert_eq!(sup.settle(), Redelivery::Process);
        assert!(!r1.start());
        assert!(!r2.start());
        assert!(!sup.is_held());
        drop((r1, r2));
        assert_eq!(rx.try_recv().unwrap(), Finished { token, ack: false });
        assert!(!sup.is_settleable(), "a failed copy settles nothing");

        // Started by one route: not superseded, and the other route runs too;
        // once both finished, a redelivery needs only its acknowledgement.
        let c = Completion::new(token, tx.clone(), None);
        let (r1, r2) = (c.route(), c.route());
        let sup = c.superseder();
        drop(c);
        assert!(r1.start());
        assert_eq!(sup.settle(), Redelivery::Process);
        assert!(r2.start());
        r1.success();
        r2.success();
        assert_eq!(rx.try_recv().unwrap(), Finished { token, ack: true });
        assert!(sup.is_settleable());
        assert_eq!(sup.settle(), Redelivery::AlreadyDone);

        // A route that did not finish: the redelivery is processed.
        let c = Completion::new(token, tx, None);
        let r1 = c.route();
        let sup = c.superseder();
        drop(c);
        assert!(r1.start());
        drop(r1);
        assert_eq!(rx.try_recv().unwrap(), Finished { token, ack: false });
        assert_eq!(sup.settle(), Redelivery::Process);
    }
}
