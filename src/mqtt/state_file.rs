//! What each subscriber session may have subscribed at the broker, kept on
//! disk, so a later run can undo what its configuration no longer has.
//!
//! A persistent session keeps its subscriptions at the broker across restarts.
//! A filter removed from `bridge.yaml` while the bridge was down would stay
//! subscribed forever (its messages arriving as unrouted), and a session whose
//! routes were all removed or renamed would go on collecting messages that
//! nobody reads. MQTT has no way to ask a broker what a session holds, so the
//! bridge remembers it: `<state_dir>/sessions-<client_id>.json` lists, per
//! session client id, the filters that may be subscribed. A filter is recorded
//! before its SUBSCRIBE is sent and forgotten after its UNSUBACK, so a crash
//! in between leaves it recorded (and unsubscribed again), never forgotten.
//!
//! The file is keyed by the broker's URL: pointing the bridge at another broker
//! starts from nothing. Without a usable state directory the bridge works as
//! before and says so once: it cannot clean up what an earlier run left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Data {
    broker: String,
    /// Session client id -> filters that may be subscribed.
    sessions: BTreeMap<String, BTreeSet<String>>,
}

/// The record of one bridge (one `mqtt.client_id` on one broker).
#[derive(Debug)]
pub struct StateFile {
    path: Option<PathBuf>,
    data: Mutex<Data>,
}

/// `client_id` as a file name: safe characters kept, others replaced, and a
/// short hash when anything was replaced (so two ids cannot collide).
fn file_name(client_id: &str) -> String {
    let safe: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == client_id {
        format!("sessions-{safe}.json")
    } else {
        use sha2::{Digest, Sha256};
        let hash = format!("{:x}", Sha256::digest(client_id.as_bytes()));
        format!("sessions-{safe}-{}.json", &hash[..12])
    }
}

impl StateFile {
    /// Opens (or starts) the record in `dir`; `None` keeps it in memory only.
    /// Never fails: an unreadable or corrupt file is reported and ignored.
    pub fn open(dir: Option<&Path>, client_id: &str, broker: &str) -> StateFile {
        let path = dir.map(|d| d.join(file_name(client_id)));
        let mut data = Data {
            broker: broker.to_string(),
            sessions: BTreeMap::new(),
        };
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<Data>(&bytes) {
                    Ok(found) if found.broker == broker => data = found,
                    Ok(_) => {}
                    Err(e) => {
                        warn!(file = %p.display(), error = %e, "ignoring an unreadable session record");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %p.display(), error = %e, "cannot read the session record");
                }
            }
        }
        StateFile {
            path,
            data: Mutex::new(data),
        }
    }

    /// Every session recorded, with its filters.
    pub fn sessions(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.lock().sessions.clone()
    }

    /// The filters recorded for `session`.
    pub fn filters(&self, session: &str) -> BTreeSet<String> {
        self.lock()
            .sessions
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    /// Records that `session` may hold `filters` (also none: a session being
    /// retired stays recorded until [`StateFile::forget`]) and writes the file
    /// if anything changed.
    pub fn record(&self, session: &str, filters: BTreeSet<String>) {
        self.update(|data| {
            data.sessions.insert(session.to_string(), filters.clone()) != Some(filters)
        });
    }

    /// Forgets `session`: it holds nothing at the broker any more.
    pub fn forget(&self, session: &str) {
        self.update(|data| data.sessions.remove(session).is_some());
    }

    /// Applies `change` (which says whether it changed anything) and writes
    /// the file if it did.
    fn update(&self, change: impl FnOnce(&mut Data) -> bool) {
        let snapshot = {
            let mut data = self.lock();
            if !change(&mut data) {
                return;
            }
            data.clone()
        };
        if let Some(path) = &self.path {
            if let Err(e) = write_atomically(path, &snapshot) {
                warn!(file = %path.display(), error = %e, "cannot write the session record");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes a sibling file and renames it over `path`: a reader (or a crash)
/// sees the old record or the new one.
fn write_atomically(path: &Path, data: &Data) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(data).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_restart_and_belong_to_one_broker() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(Some(dir.path()), "fx/1", "mqtt://a:1883");
        f.record("fx/1-r1", ["a/+".to_string()].into());
        f.record("fx/1-r2", ["b".to_string()].into());
        f.record("fx/1-r3", BTreeSet::new());
        f.forget("fx/1-r2");
        let again = StateFile::open(Some(dir.path()), "fx/1", "mqtt://a:1883");
        assert_eq!(
            again.sessions(),
            [
                ("fx/1-r1".to_string(), ["a/+".to_string()].into()),
                ("fx/1-r3".to_string(), BTreeSet::new()),
            ]
            .into()
        );
        let other = StateFile::open(Some(dir.path()), "fx/1", "mqtt://b:1883");
        assert!(other.sessions().is_empty());
        assert_ne!(file_name("fx/1"), file_name("fx_1"));
    }

    #[test]
    fn a_corrupt_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name("c")), b"{not json").unwrap();
        let f = StateFile::open(Some(dir.path()), "c", "mqtt://a:1");
        assert!(f.sessions().is_empty());
        f.record("c-x", ["t".to_string()].into());
        assert_eq!(
            StateFile::open(Some(dir.path()), "c", "mqtt://a:1").filters("c-x"),
            ["t".to_string()].into()
        );
    }
}
