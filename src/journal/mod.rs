//! The durable journal (issue #12): store and forward at the edge.
//!
//! Not on the message path yet: this is its storage and its group commit,
//! tested on their own (`tests/journal.rs`). The plan for the rest: a
//! subscriber session appends what it receives and acknowledges it to the
//! broker once the append is durable; a reader per session feeds the router
//! from the journal in order; a finished message's row is removed.
//!
//! [`Journal`] owns a [`Store`] on one thread. Appends are grouped: the first
//! append of a group waits at most `window` for others (up to `max_batch`),
//! then the group commits with a single fsync and every caller gets its
//! sequence number. Removals and reads go through the same thread, in order
//! with the appends.

pub mod store;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use store::{AppendError, Opened, Record, Stats, Store};

/// Group-commit settings.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// The longest an append waits for others to share its fsync.
    pub window: Duration,
    /// The most appends in one commit.
    pub max_batch: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            window: Duration::from_millis(2),
            max_batch: 1024,
        }
    }
}

/// Counters of a journal (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub appends: AtomicU64,
    /// Commits of appends: one fsync each.
    pub commits: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub removed: AtomicU64,
    /// Appends refused because the journal was full.
    pub full: AtomicU64,
}

type Reply<T> = oneshot::Sender<T>;

enum Op {
    Append(Record, Reply<Result<u64, AppendError>>),
    Read {
        session: String,
        after: u64,
        limit: usize,
        reply: Reply<Result<Vec<(u64, Record)>, String>>,
    },
    Remove(Vec<u64>, Reply<Result<(), String>>),
    DropOldest(usize, Reply<Result<Vec<(u64, Record)>, String>>),
    Stats(Reply<Result<Stats, String>>),
}

/// The journal: a [`Store`] on its own thread, shared by handles.
#[derive(Clone)]
pub struct Journal {
    ops: std::sync::mpsc::Sender<Op>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

/// The thread is gone (it ends when every handle is dropped).
fn gone() -> String {
    "the journal's thread has stopped".to_string()
}

impl Journal {
    /// Starts the journal's thread on `store`.
    pub fn start(store: Store, commit: GroupCommit) -> std::io::Result<Journal> {
        let (ops, rx) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("fxbridge-journal".into())
            .spawn(move || run(store, rx, commit, &c))?;
        Ok(Journal { ops, counters })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Appends `record`; completes once it is durable, with its sequence number.
    pub async fn append(&self, record: Record) -> Result<u64, AppendError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Append(record, tx))
            .map_err(|_| AppendError::Io(gone()))?;
        rx.await.map_err(|_| AppendError::Io(gone()))?
    }

    /// Up to `limit` records of `session` after `after`, in order.
    pub async fn read(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, String> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Read {
                session: session.to_string(),
                after,
                limit,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Removes finished messages.
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.ops.send(Op::Remove(seqs, reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Removes and returns the oldest `n` messages (`when_full: drop_oldest`).
    pub async fn drop_oldest(&self, n: usize) -> Result<Vec<(u64, Record)>, String> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::DropOldest(n, reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        let (reply, rx) = oneshot::channel();
        self.ops.send(Op::Stats(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The journal's thread: groups appends, and serves the other operations in
/// the order they came.
fn run(mut store: Store, rx: std::sync::mpsc::Receiver<Op>, commit: GroupCommit, c: &Counters) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut later: Vec<Op> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut group: Vec<(Record, Reply<Result<u64, AppendError>>)> = Vec::new();
        match first {
            Op::Append(r, reply) => group.push((r, reply)),
            other => later.push(other),
        }
        if !group.is_empty() {
            // Gather more appends until the window closes or the group is full;
            // anything else waits until after the commit, in order.
            let deadline = Instant::now() + commit.window;
            while group.len() < commit.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Op::Append(r, reply)) => group.push((r, reply)),
                    Ok(other) => later.push(other),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let (records, replies): (Vec<Record>, Vec<_>) = group.into_iter().unzip();
            let bytes: u64 = records.iter().map(Record::size).sum();
            match store.append(&records) {
                Ok(seqs) => {
                    c.appends.fetch_add(seqs.len() as u64, Relaxed);
                    c.commits.fetch_add(1, Relaxed);
                    c.appended_bytes.fetch_add(bytes, Relaxed);
                    for (reply, seq) in replies.into_iter().zip(seqs) {
                        let _ = reply.send(Ok(seq));
                    }
                }
                Err(e) => {
                    if matches!(e, AppendError::Full(_)) {
                        c.full.fetch_add(replies.len() as u64, Relaxed);
                    }
                    let text = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(match &e {
                            AppendError::Full(_) => AppendError::Full(text.clone()),
                            AppendError::Io(_) => AppendError::Io(text.clone()),
                        }));
                    }
                }
            }
        }
        for op in later.drain(..) {
            match op {
                Op::Append(..) => {} // never queued in `later`
                Op::Read {
                    session,
                    after,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(store.read(&session, after, limit));
                }
                Op::Remove(seqs, reply) => {
                    let n = seqs.len() as u64;
                    let result = store.remove(&seqs);
                    if result.is_ok() {
                        c.removed.fetch_add(n, Relaxed);
                    }
                    let _ = reply.send(result);
                }
                Op::DropOldest(n, reply) => {
                    let _ = reply.send(store.drop_oldest(n));
                }
                Op::Stats(reply) => {
                    let _ = reply.send(store.stats());
                }
            }
        }
    }
}
