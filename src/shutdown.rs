//! How a bridge (or one part of it) stops, in three phases:
//!
//! 1. **stop reading**: subscribers hand no more messages to the routes, and
//!    retries against an unreachable gateway give up (the broker keeps those
//!    messages for the next session);
//! 2. **deadline**: the drain time is over; work still in progress is dropped,
//!    unacknowledged, for the broker to redeliver;
//! 3. **close**: connections send what they owe (acknowledgements, a
//!    DISCONNECT) and end.
//!
//! Before phase 1 the core may have its sessions leave their shared
//! subscription groups (`mqtt.leave_shared_on_stop`, see `bridge::core`),
//! while they still read; that is not a phase of this type.
//!
//! A part that can also stop on its own (a session retired by a reload) gets
//! a [`Shutdown::child`]: it follows every phase of its parent, and can be
//! moved through the phases alone.

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The phases of one shutdown; cheap to clone (clones share the phases).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    reading: CancellationToken,
    deadline: CancellationToken,
    close: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A shutdown that follows this one and can also go ahead alone.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            reading: self.reading.child_token(),
            deadline: self.deadline.child_token(),
            close: self.close.child_token(),
        }
    }

    /// Phase 1: stop reading.
    pub fn stop_reading(&self) {
        self.reading.cancel();
    }

    pub fn reading_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.reading.cancelled()
    }

    pub fn is_reading_stopped(&self) -> bool {
        self.reading.is_cancelled()
    }

    /// Phase 2: the drain deadline passed (implies phase 1).
    pub fn pass_deadline(&self) {
        self.stop_reading();
        self.deadline.cancel();
    }

    pub fn deadline_passed(&self) -> WaitForCancellationFuture<'_> {
        self.deadline.cancelled()
    }

    /// Phase 3: close the connections (implies phase 1).
    pub fn close(&self) {
        self.stop_reading();
        self.close.cancel();
    }

    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }

    /// The close phase alone, as a token (for tasks that take one).
    pub fn close_token(&self) -> CancellationToken {
        self.close.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_follows_its_parent_and_can_stop_alone() {
        let parent = Shutdown::new();
        let a = parent.child();
        let b = parent.child();
        a.close();
        assert!(a.is_reading_stopped() && a.close.is_cancelled());
        assert!(!parent.is_reading_stopped() && !b.is_reading_stopped());
        parent.stop_reading();
        assert!(b.is_reading_stopped());
        assert!(!b.close.is_cancelled() && !b.deadline.is_cancelled());
        parent.pass_deadline();
        assert!(b.deadline.is_cancelled());
    }
}
