//! The journal's storage: one SQLite database in WAL mode.
//!
//! One row per message, keyed by a sequence number in arrival order, with the
//! subscriber session it arrived on. A row is deleted once the message is
//! finished: the rows left are exactly what still has to be processed, so
//! there is no separate cursor to keep consistent with them.
//!
//! Durability: appends commit with `synchronous=FULL` (the WAL is fsynced at
//! every commit: an acknowledged append survives a power cut); deletions
//! commit with `synchronous=NORMAL` (not fsynced: after a power cut a finished
//! message may come back and be processed again, which at-least-once allows).
//!
//! Size: `max_size` bounds the database file through SQLite's
//! `max_page_count` (an insert beyond it fails with `SQLITE_FULL`, as a full
//! disk does), minus room for the WAL, which is truncated back to
//! [`WAL_LIMIT`] after each checkpoint.
//!
//! Damage: SQLite ignores a torn WAL tail by itself (its frames are
//! checksummed). A database file it cannot read (`quick_check` fails, or it
//! is not a database) is moved aside as `<name>.damaged-<unix time>`, reported
//! in [`Opened::damaged`], and a new journal starts: the bridge does not stop
//! or crash-loop on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

/// The WAL file is truncated back to this size after a checkpoint.
pub const WAL_LIMIT: u64 = 4 << 20;

/// SQLite's page size for the journal.
const PAGE_SIZE: u64 = 4096;

/// The smallest `max_size`: room for the WAL and a few pages.
pub const MIN_MAX_SIZE: u64 = WAL_LIMIT + (1 << 20);

/// What is kept of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The subscriber session that received it.
    pub session: String,
    /// When it was received, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties (user properties, content type, ...), encoded by the
    /// caller; `None` for a message without any.
    pub properties: Option<Vec<u8>>,
}

impl Record {
    /// Bytes this record adds to the journal, roughly (for metrics).
    pub fn size(&self) -> u64 {
        (self.session.len()
            + self.topic.len()
            + self.payload.len()
            + self.properties.as_ref().map_or(0, Vec::len)
            + 32) as u64
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `max_size` reached, or the disk is full: nothing of the batch was kept.
    #[error("the journal is full ({0})")]
    Full(String),
    #[error("the journal cannot be written: {0}")]
    Io(String),
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Messages left to process from before.
    pub entries: u64,
    /// Where a damaged database was moved, and why it was unreadable.
    pub damaged: Option<(PathBuf, String)>,
    /// Bytes at the end of the WAL that do not make a whole frame (a write
    /// torn by a crash): SQLite ignores them, and the commit they belonged
    /// to, which was never acknowledged.
    pub torn_wal_bytes: Option<u64>,
    /// How long opening (and recovery) took.
    pub took: Duration,
}

/// Depth of the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// Topic and payload bytes of the messages kept.
    pub bytes: u64,
    /// Arrival time of the oldest message kept (ms since the Unix epoch).
    pub oldest_at_ms: Option<u64>,
    /// The database file and its WAL, on disk.
    pub disk_bytes: u64,
}

/// The journal's database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Commits that were fsynced (appends).
    pub commits: u64,
}

fn sql(e: rusqlite::Error) -> String {
    e.to_string()
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}

/// Bytes past the last whole frame of `path`'s WAL, if any: a WAL is a
/// 32-byte header and frames of a 24-byte header and one page.
fn torn_wal_tail(path: &Path) -> Option<u64> {
    let len = std::fs::metadata(format!("{}-wal", path.display()))
        .ok()?
        .len();
    if len < 32 {
        return (len > 0).then_some(len);
    }
    let rest = (len - 32) % (24 + PAGE_SIZE);
    (rest != 0).then_some(rest)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the journal at `path`, bounded to `max_size` bytes on
    /// disk (database and WAL).
    pub fn open(path: &Path, max_size: u64) -> Result<(Store, Opened), String> {
        let started = std::time::Instant::now();
        if max_size < MIN_MAX_SIZE {
            return Err(format!(
                "max_size {max_size} is below the smallest journal, {MIN_MAX_SIZE} bytes"
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut opened = Opened {
            torn_wal_bytes: torn_wal_tail(path),
            ..Opened::default()
        };
        let conn = match Self::connect(path, max_size) {
            Ok(c) => c,
            Err(why) => {
                let aside = PathBuf::from(format!("{}.damaged-{}", path.display(), unix_seconds()));
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    if from.exists() {
                        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                        std::fs::rename(&from, &to).map_err(|e| {
                            format!(
                                "the journal {} is damaged ({why}) and cannot be moved aside: {e}",
                                path.display()
                            )
                        })?;
                    }
                }
                opened.damaged = Some((aside, why));
                Self::connect(path, max_size)?
            }
        };
        let store = Store {
            conn,
            path: path.to_path_buf(),
            commits: 0,
        };
        opened.entries = store.stats()?.entries;
        opened.took = started.elapsed();
        Ok((store, opened))
    }

    /// Connects, sets the pragmas, creates the table, and checks the file.
    fn connect(path: &Path, max_size: u64) -> Result<Connection, String> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        let max_pages = (max_size - WAL_LIMIT) / PAGE_SIZE;
        conn.execute_batch(&format!(
            "PRAGMA page_size={PAGE_SIZE};
             PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA journal_size_limit={WAL_LIMIT};
             PRAGMA wal_autocheckpoint=256;
             PRAGMA max_page_count={max_pages};"
        ))
        .map_err(sql)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("SQLite refused WAL mode ({mode})"));
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql)?;
        if check != "ok" {
            return Err(format!("quick_check: {check}"));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS messages(
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                session TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                qos INTEGER NOT NULL,
                retain INTEGER NOT NULL,
                properties BLOB
             );
             CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session, seq);",
        )
        .map_err(sql)?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `batch` in one transaction, fsynced: all or nothing. Returns
    /// the records' sequence numbers, in order.
    pub fn append(&mut self, batch: &[Record]) -> Result<Vec<u64>, AppendError> {
        let classify = |e: rusqlite::Error| {
            if is_full(&e) {
                AppendError::Full(e.to_string())
            } else {
                AppendError::Io(e.to_string())
            }
        };
        let tx = self.conn.transaction().map_err(classify)?;
        let mut seqs = Vec::with_capacity(batch.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages(session, at_ms, topic, payload, qos, retain, properties)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(classify)?;
            for r in batch {
                insert
                    .execute(params![
                        r.session,
                        i64::try_from(r.at_ms).unwrap_or(i64::MAX),
                        r.topic,
                        r.payload,
                        r.qos,
                        r.retain,
                        r.properties
                    ])
                    .map_err(classify)?;
                seqs.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
            }
        }
        tx.commit().map_err(classify)?;
        self.commits += 1;
        Ok(seqs)
    }

    /// Up to `limit` records of `session` after sequence number `after`, in order.
    pub fn read(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, String> {
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT seq, session, at_ms, topic, payload, qos, retain, properties
                 FROM messages WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(sql)?;
        let rows = q
            .query_map(
                params![
                    session,
                    i64::try_from(after).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        Record {
                            session: r.get(1)?,
                            at_ms: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                            topic: r.get(3)?,
                            payload: r.get(4)?,
                            qos: r.get(5)?,
                            retain: r.get(6)?,
                            properties: r.get(7)?,
                        },
                    ))
                },
            )
            .map_err(sql)?;
        rows.map(|row| {
            row.map(|(seq, rec)| (u64::try_from(seq).unwrap_or(0), rec))
                .map_err(sql)
        })
        .collect()
    }

    /// The sessions that have messages in the journal.
    pub fn sessions(&self) -> Result<Vec<String>, String> {
        let mut q = self
            .conn
            .prepare_cached("SELECT DISTINCT session FROM messages ORDER BY session")
            .map_err(sql)?;
        let rows = q.query_map([], |r| r.get(0)).map_err(sql)?;
        rows.map(|r| r.map_err(sql)).collect()
    }

    /// Deletes finished messages (not fsynced: see the module doc).
    pub fn remove(&mut self, seqs: &[u64]) -> Result<(), String> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.conn
            .execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(sql)?;
        let result = (|| {
            let tx = self.conn.transaction().map_err(sql)?;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM messages WHERE seq = ?1")
                    .map_err(sql)?;
                for s in seqs {
                    delete
                        .execute([i64::try_from(*s).unwrap_or(i64::MAX)])
                        .map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)
        })();
        self.conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(sql)?;
        result
    }

    /// Deletes the oldest `n` messages (for `when_full: drop_oldest`) and
    /// returns them, so each can be counted or dead-lettered.
    pub fn drop_oldest(&mut self, n: usize) -> Result<Vec<(u64, Record)>, String> {
        let oldest: Vec<(u64, Record)> = {
            let mut q = self
                .conn
                .prepare_cached(
                    "SELECT seq, session, at_ms, topic, payload, qos, retain, properties
                     FROM messages ORDER BY seq LIMIT ?1",
                )
                .map_err(sql)?;
            let rows = q
                .query_map([i64::try_from(n).unwrap_or(i64::MAX)], |r| {
                    Ok((
                        u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        Record {
                            session: r.get(1)?,
                            at_ms: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                            topic: r.get(3)?,
                            payload: r.get(4)?,
                            qos: r.get(5)?,
                            retain: r.get(6)?,
                            properties: r.get(7)?,
                        },
                    ))
                })
                .map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)?
        };
        let seqs: Vec<u64> = oldest.iter().map(|(s, _)| *s).collect();
        self.remove(&seqs)?;
        Ok(oldest)
    }

    /// How much the journal holds.
    pub fn stats(&self) -> Result<Stats, String> {
        let (entries, bytes, oldest): (i64, Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT count(*), sum(length(topic) + length(payload)), min(at_ms) FROM messages",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(sql)?;
        Ok(Stats {
            entries: u64::try_from(entries).unwrap_or(0),
            bytes: bytes.and_then(|b| u64::try_from(b).ok()).unwrap_or(0),
            oldest_at_ms: oldest.and_then(|t| u64::try_from(t).ok()),
            disk_bytes: disk_bytes(&self.path),
        })
    }

    /// Arrival time of the oldest message kept (by sequence number: an
    /// indexed lookup, unlike [`Store::stats`]).
    pub fn oldest_at_ms(&self) -> Result<Option<u64>, String> {
        let mut q = self
            .conn
            .prepare_cached("SELECT at_ms FROM messages ORDER BY seq LIMIT 1")
            .map_err(sql)?;
        let mut rows = q.query([]).map_err(sql)?;
        match rows.next().map_err(sql)? {
            Some(r) => Ok(u64::try_from(r.get::<_, i64>(0).map_err(sql)?).ok()),
            None => Ok(None),
        }
    }

    /// The database file and its WAL, on disk.
    pub fn disk_bytes(&self) -> u64 {
        disk_bytes(&self.path)
    }
}

/// The size of the journal at `path` (database and WAL) on disk.
pub fn disk_bytes(path: &Path) -> u64 {
    let file = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", path.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    file("") + file("-wal")
}
