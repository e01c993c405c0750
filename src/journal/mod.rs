//! The durable journal (issue #12): store and forward at the edge.
//!
//! With `buffer: {kind: disk}`, a subscriber session appends what it
//! receives ([`codec`]) and acknowledges it to the broker once the append is
//! durable; a [`replay`] task per session feeds the router from the journal
//! in order, and removes a message's row once every route finished it.
//!
//! [`Journal`] owns a [`Store`] on one thread. Appends are grouped: the first
//! append of a group waits at most `window` for others (up to `max_batch`),
//! then the group commits with a single fsync and every caller gets its
//! sequence number, in the order the appends were submitted. A full journal
//! makes appends wait (or drops its oldest messages), see
//! [`crate::config::WhenFull`]. Removals and reads go through the same
//! thread, between commits.

pub mod codec;
pub mod replay;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

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
    /// Messages dropped to make room (`when_full: drop_oldest`).
    pub dropped: AtomicU64,
    /// Messages in the journal now.
    pub entries: AtomicU64,
    /// Arrival time of the oldest (ms since the Unix epoch; 0: empty).
    pub oldest_at_ms: AtomicU64,
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
    Sessions(Reply<Result<Vec<String>, String>>),
}

/// The journal: a [`Store`] on its own thread, shared by handles.
#[derive(Clone)]
pub struct Journal {
    ops: std::sync::mpsc::Sender<Op>,
    counters: Arc<Counters>,
    /// The last sequence number committed.
    appended: watch::Receiver<u64>,
    path: PathBuf,
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
    pub fn start(
        store: Store,
        commit: GroupCommit,
        when_full: crate::config::WhenFull,
    ) -> std::io::Result<Journal> {
        let (ops, rx) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        if let Ok(stats) = store.stats() {
            counters.entries.store(stats.entries, Relaxed);
            counters
                .oldest_at_ms
                .store(stats.oldest_at_ms.unwrap_or(0), Relaxed);
        }
        let (appended_tx, appended) = watch::channel(0);
        let path = store.path().to_path_buf();
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("fxbridge-journal".into())
            .spawn(move || run(store, rx, commit, when_full, &c, &appended_tx))?;
        Ok(Journal {
            ops,
            counters,
            appended,
            path,
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Changes whenever appends are committed (holds the last sequence number).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// The database file and its WAL, on disk now.
    pub fn disk_bytes(&self) -> u64 {
        store::disk_bytes(&self.path)
    }

    /// Appends `record`; completes once it is durable, with its sequence number.
    pub async fn append(&self, record: Record) -> Result<u64, AppendError> {
        self.submit(record).await
    }

    /// Queues `record` now (appends are committed in the order they are
    /// submitted); the future completes once it is durable. While the journal
    /// is full it waits (`block`) or older messages are dropped for it
    /// (`drop_oldest`); it fails only when the journal cannot be written.
    pub fn submit(
        &self,
        record: Record,
    ) -> impl std::future::Future<Output = Result<u64, AppendError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.ops.send(Op::Append(record, tx));
        async move {
            sent.map_err(|_| AppendError::Io(gone()))?;
            rx.await.map_err(|_| AppendError::Io(gone()))?
        }
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

    /// The sessions that have messages in the journal.
    pub async fn sessions(&self) -> Result<Vec<String>, String> {
        let (reply, rx) = oneshot::channel();
        self.ops.send(Op::Sessions(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        let (reply, rx) = oneshot::channel();
        self.ops.send(Op::Stats(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The journal's thread. Appends are committed in the order they were
/// submitted, in groups: the first of a group waits up to `window` for others
/// (at most `max_batch`). When the journal is full, the appends wait here, in
/// order, and are retried every 100 ms or as soon as messages are removed
/// (`block`), or the oldest messages are dropped to make room
/// (`drop_oldest`); their callers simply wait. Reads and removals are served
/// between commits, so a full journal still drains.
fn run(
    mut store: Store,
    rx: std::sync::mpsc::Receiver<Op>,
    commit: GroupCommit,
    when_full: crate::config::WhenFull,
    c: &Counters,
    appended: &watch::Sender<u64>,
) {
    use std::collections::VecDeque;
    use std::sync::mpsc::RecvTimeoutError;
    const RETRY_FULL: Duration = Duration::from_millis(100);
    let mut queue: VecDeque<(Record, Reply<Result<u64, AppendError>>)> = VecDeque::new();
    let mut later: Vec<Op> = Vec::new();
    // Set while the journal is full: when to try the waiting appends again.
    let mut blocked_until: Option<Instant> = None;
    let mut warned_full = false;
    loop {
        // Receive: block when idle; otherwise until the group's window closes
        // or a blocked retry is due.
        let deadline = match (queue.is_empty(), blocked_until) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(Instant::now() + commit.window),
        };
        let first = match deadline {
            None => match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            },
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    if queue.is_empty() {
                        return;
                    }
                    None
                }
            },
        };
        let take = |op: Op, queue: &mut VecDeque<_>, later: &mut Vec<Op>| match op {
            Op::Append(r, reply) => queue.push_back((r, reply)),
            other => later.push(other),
        };
        if let Some(op) = first {
            take(op, &mut queue, &mut later);
            // A new group gathers until its window closes.
            if blocked_until.is_none() && queue.len() == 1 {
                let window_end = Instant::now() + commit.window;
                while queue.len() < commit.max_batch {
                    let left = window_end.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(op) => take(op, &mut queue, &mut later),
                        Err(_) => break,
                    }
                }
            } else if blocked_until.is_some() || queue.len() < commit.max_batch {
                // Serve what else is waiting (removals make room) first.
                while let Ok(op) = rx.try_recv() {
                    take(op, &mut queue, &mut later);
                }
            }
        }
        serve(&mut store, &mut later, c, &mut blocked_until);
        let due = blocked_until.is_none_or(|t| Instant::now() >= t);
        if queue.is_empty() || !due {
            continue;
        }
        // Commit the oldest waiting appends, in order.
        let n = queue.len().min(commit.max_batch);
        let records: Vec<Record> = queue.iter().take(n).map(|(r, _)| r.clone()).collect();
        match store.append(&records) {
            Ok(seqs) => {
                if warned_full {
                    tracing::info!("the journal has room again");
                    warned_full = false;
                }
                blocked_until = None;
                let bytes: u64 = records.iter().map(Record::size).sum();
                c.appends.fetch_add(seqs.len() as u64, Relaxed);
                c.entries.fetch_add(seqs.len() as u64, Relaxed);
                c.commits.fetch_add(1, Relaxed);
                c.appended_bytes.fetch_add(bytes, Relaxed);
                if c.oldest_at_ms.load(Relaxed) == 0 {
                    c.oldest_at_ms
                        .store(records.first().map_or(0, |r| r.at_ms.max(1)), Relaxed);
                }
                if let Some(last) = seqs.last() {
                    appended.send_replace(*last);
                }
                for seq in seqs {
                    if let Some((_, reply)) = queue.pop_front() {
                        let _ = reply.send(Ok(seq));
                    }
                }
            }
            Err(AppendError::Full(why)) => {
                c.full.fetch_add(1, Relaxed);
                let dropped = match when_full {
                    crate::config::WhenFull::Block => 0,
                    crate::config::WhenFull::DropOldest => match store.drop_oldest(n.max(16)) {
                        Ok(d) => {
                            if let Some((_, first)) = d.first() {
                                tracing::warn!(dropped = d.len(), oldest_topic = %first.topic, oldest_session = %first.session, reason = %why, "the journal is full: dropped its oldest messages (counted in fxbridge_journal_dropped_total)");
                            }
                            let k = d.len() as u64;
                            c.dropped.fetch_add(k, Relaxed);
                            c.entries
                                .fetch_update(Relaxed, Relaxed, |e| Some(e.saturating_sub(k)))
                                .ok();
                            refresh_oldest(&store, c);
                            d.len()
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the journal is full and cannot drop its oldest messages");
                            0
                        }
                    },
                };
                if dropped == 0 {
                    if !warned_full {
                        tracing::warn!(reason = %why, waiting = queue.len(), "the journal is full: appends wait (and reading from the broker stops) until there is room");
                        warned_full = true;
                    }
                    blocked_until = Some(Instant::now() + RETRY_FULL);
                }
            }
            Err(AppendError::Io(why)) => {
                tracing::error!(error = %why, messages = n, "cannot write to the journal: these messages are not acknowledged");
                for _ in 0..n {
                    if let Some((_, reply)) = queue.pop_front() {
                        let _ = reply.send(Err(AppendError::Io(why.clone())));
                    }
                }
            }
        }
    }
}

/// Serves reads, removals and the rest, in order. A removal makes room: a
/// blocked append is retried at once.
fn serve(
    store: &mut Store,
    later: &mut Vec<Op>,
    c: &Counters,
    blocked_until: &mut Option<Instant>,
) {
    for op in later.drain(..) {
        match op {
            Op::Append(..) => {} // appends are queued, never here
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
                    c.entries
                        .fetch_update(Relaxed, Relaxed, |e| Some(e.saturating_sub(n)))
                        .ok();
                    refresh_oldest(store, c);
                    if n > 0 && blocked_until.is_some() {
                        *blocked_until = Some(Instant::now());
                    }
                }
                let _ = reply.send(result);
            }
            Op::DropOldest(n, reply) => {
                let result = store.drop_oldest(n);
                if let Ok(dropped) = &result {
                    let n = dropped.len() as u64;
                    c.dropped.fetch_add(n, Relaxed);
                    c.entries
                        .fetch_update(Relaxed, Relaxed, |e| Some(e.saturating_sub(n)))
                        .ok();
                    refresh_oldest(store, c);
                }
                let _ = reply.send(result);
            }
            Op::Stats(reply) => {
                let _ = reply.send(store.stats());
            }
            Op::Sessions(reply) => {
                let _ = reply.send(store.sessions());
            }
        }
    }
}

/// Updates the oldest arrival time after messages left the journal.
fn refresh_oldest(store: &Store, c: &Counters) {
    if let Ok(oldest) = store.oldest_at_ms() {
        c.oldest_at_ms.store(oldest.unwrap_or(0), Relaxed);
    }
}
