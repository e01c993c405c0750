//! Feeding the router from the journal: one task per subscriber session reads
//! the session's messages in sequence order and dispatches them like the
//! session would have (same routes, per-topic order, retries, dead letters,
//! plugins); once every route finished one, its row is removed.
//!
//! At most `max_pending` of a session's messages are in progress at once
//! (a permit travels with each, as in the subscriber): the rest wait on disk,
//! not in memory, however deep the journal is. Messages left unfinished at a
//! stop (or by a crash) stay in the journal and are dispatched again at the
//! next start, from the beginning: at least once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{codec, Journal};
use crate::ack::{AckToken, Completion, Finished};
use crate::metrics::now_ms;
use crate::mqtt::inbound::{Closed, Delivery, Dispatch};
use crate::shutdown::Shutdown;

/// Records read from the journal at a time (at most the free permits).
const READ_BATCH: usize = 256;
/// Finished messages removed from the journal together, at most...
const REMOVE_BATCH: usize = 256;
/// ...and at the latest this long after the first of them finished.
const REMOVE_DELAY: Duration = Duration::from_millis(20);

/// How one session's messages are replayed.
pub struct ReplaySpec {
    pub session: String,
    pub journal: Journal,
    pub max_pending: usize,
    /// The core's shutdown: stop dispatching at its first phase, leave at close.
    pub shutdown: Shutdown,
}

/// Starts replaying `spec.session`'s messages to `dispatch`.
pub fn spawn(spec: ReplaySpec, dispatch: Arc<dyn Dispatch>) -> JoinHandle<()> {
    tokio::spawn(run(spec, dispatch))
}

async fn run(spec: ReplaySpec, dispatch: Arc<dyn Dispatch>) {
    let ReplaySpec {
        session,
        journal,
        max_pending,
        shutdown,
    } = spec;
    let max_pending = max_pending.max(1);
    let permits = Arc::new(Semaphore::new(max_pending));
    // Read again once this many are free (or all): fewer, larger reads.
    let refill = (max_pending / 8).max(1);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut appended = journal.appended();
    let mut after = 0u64;
    let mut reading = true;
    let mut finished: Vec<u64> = Vec::new();
    let mut remove_due: Option<tokio::time::Instant> = None;
    loop {
        while let Ok(f) = done_rx.try_recv() {
            collect(&mut finished, f);
        }
        // Removals are grouped (each is a write to the journal): at
        // REMOVE_BATCH finished messages, or REMOVE_DELAY after the first.
        if finished.is_empty() {
            remove_due = None;
        } else if finished.len() >= REMOVE_BATCH
            || remove_due.is_some_and(|t| tokio::time::Instant::now() >= t)
        {
            remove_due = None;
            if let Err(e) = journal.remove(std::mem::take(&mut finished)).await {
                warn!(%session, error = %e, "cannot remove finished messages from the journal (they will be processed again)");
            }
        } else if remove_due.is_none() {
            remove_due = Some(tokio::time::Instant::now() + REMOVE_DELAY);
        }
        let free = permits.available_permits();
        if reading && (free >= refill || free == max_pending) && !shutdown.is_reading_stopped() {
            match journal.read(&session, after, free.min(READ_BATCH)).await {
                Ok(batch) if !batch.is_empty() => {
                    for (seq, record) in batch {
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                            break;
                        };
                        after = seq;
                        let (msg, extra, problem) = codec::message(record, now_ms());
                        if let Some(p) = problem {
                            warn!(%session, seq, topic = %msg.topic, problem = %p, "journal record read without its properties");
                        }
                        let token = Some(AckToken {
                            epoch: 0,
                            seq,
                            pkid: 0,
                        });
                        let completion = Completion::new(token, done_tx.clone(), Some(permit));
                        let replayed = extra.replayed;
                        let subscribed_before = |f: &str| replayed.iter().any(|r| r == f);
                        let delivery = Delivery {
                            session: &session,
                            subscription_ids: &extra.subscription_ids,
                            subscribed_before: &subscribed_before,
                        };
                        if dispatch.dispatch(msg, &delivery, &completion) == Err(Closed) {
                            // Stopping: it stays in the journal for the next start.
                            completion.refuse();
                            reading = false;
                            break;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%session, error = %e, "cannot read the journal; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            () = shutdown.closing() => break,
            () = shutdown.reading_stopped(), if reading => {
                debug!(%session, "journal replay: stopping");
                reading = false;
            }
            Some(f) = done_rx.recv() => collect(&mut finished, f),
            () = tokio::time::sleep_until(remove_due.unwrap_or_else(tokio::time::Instant::now)), if remove_due.is_some() => {}
            changed = appended.changed(), if reading => {
                if changed.is_err() {
                    reading = false;
                }
            }
        }
    }
    // What finished before the close leaves the journal; the rest stays.
    drop(done_tx);
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(500), done_rx.recv()).await {
        collect(&mut finished, f);
    }
    if !finished.is_empty() {
        let _ = journal.remove(finished).await;
    }
}

/// A finished message's sequence number, when every route finished it.
fn collect(finished: &mut Vec<u64>, f: Finished) {
    if let (true, Some(token)) = (f.ack, f.token) {
        finished.push(token.seq);
    }
}
