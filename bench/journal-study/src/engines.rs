use std::path::{Path, PathBuf};

pub type Entry = (u64, Vec<u8>, Vec<u8>);

pub trait Journal {
    /// highest sequence number ever appended (survives a full drain via the cursor)
    fn last_seq(&self) -> u64;
    fn cursor(&self) -> u64;
    /// durable when it returns (one group commit)
    fn append(&mut self, first: u64, msgs: &[(String, Vec<u8>)]);
    /// entries with seq > after, in order, at most max
    fn read(&mut self, after: u64, max: usize, out: &mut Vec<Entry>);
    /// set the (single) route cursor to pos and delete everything <= pos
    fn advance(&mut self, pos: u64, durable: bool);
}

pub fn open_engine(name: &str, dir: &Path) -> Box<dyn Journal> {
    match name {
        "sqlite-full" => Box::new(Sqlite::open(dir, true)),
        "sqlite-normal" => Box::new(Sqlite::open(dir, false)),
        "redb" => Box::new(Redb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        "seglog" => Box::new(SegLog::open(dir)),
        _ => panic!("engine {name}"),
    }
}

fn encode(t: &str, p: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + t.len() + p.len());
    v.extend_from_slice(&(t.len() as u16).to_le_bytes());
    v.extend_from_slice(t.as_bytes());
    v.extend_from_slice(p);
    v
}
fn decode(v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let tl = u16::from_le_bytes([v[0], v[1]]) as usize;
    (v[2..2 + tl].to_vec(), v[2 + tl..].to_vec())
}

// ---------------------------------------------------------------- SQLite
pub struct Sqlite {
    c: rusqlite::Connection,
    full: bool,
    last: u64,
    cursor: u64,
}
impl Sqlite {
    fn open(dir: &Path, full: bool) -> Self {
        let c = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
        let m: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(m, "wal");
        c.execute_batch(if full { "PRAGMA synchronous=FULL;" } else { "PRAGMA synchronous=NORMAL;" }).unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS journal(seq INTEGER PRIMARY KEY, topic BLOB NOT NULL, payload BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS cursors(route TEXT PRIMARY KEY, pos INTEGER NOT NULL);",
        )
        .unwrap();
        let cursor: u64 = c
            .query_row("SELECT pos FROM cursors WHERE route='r'", [], |r| r.get::<_, i64>(0))
            .map(|x| x as u64)
            .unwrap_or(0);
        let mx: Option<i64> = c.query_row("SELECT max(seq) FROM journal", [], |r| r.get(0)).unwrap();
        let last = (mx.unwrap_or(0) as u64).max(cursor);
        Sqlite { c, full, last, cursor }
    }
}
impl Journal for Sqlite {
    fn last_seq(&self) -> u64 {
        self.last
    }
    fn cursor(&self) -> u64 {
        self.cursor
    }
    fn append(&mut self, first: u64, msgs: &[(String, Vec<u8>)]) {
        let tx = self.c.transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT INTO journal(seq, topic, payload) VALUES (?1, ?2, ?3)").unwrap();
            for (i, (t, p)) in msgs.iter().enumerate() {
                st.execute(rusqlite::params![(first + i as u64) as i64, t.as_bytes(), p.as_slice()]).unwrap();
            }
        }
        tx.commit().unwrap();
        self.last = first + msgs.len() as u64 - 1;
    }
    fn read(&mut self, after: u64, max: usize, out: &mut Vec<Entry>) {
        let mut st = self
            .c
            .prepare_cached("SELECT seq, topic, payload FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .unwrap();
        let rows = st
            .query_map(rusqlite::params![after as i64, max as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .unwrap();
        for r in rows {
            out.push(r.unwrap());
        }
    }
    fn advance(&mut self, pos: u64, durable: bool) {
        if self.full && !durable {
            self.c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        }
        let tx = self.c.transaction().unwrap();
        tx.execute("INSERT OR REPLACE INTO cursors(route, pos) VALUES ('r', ?1)", [pos as i64]).unwrap();
        tx.execute("DELETE FROM journal WHERE seq <= ?1", [pos as i64]).unwrap();
        tx.commit().unwrap();
        if self.full && !durable {
            self.c.execute_batch("PRAGMA synchronous=FULL").unwrap();
        }
        self.cursor = pos;
    }
}

// ---------------------------------------------------------------- redb
const J: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("journal");
const C: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("cursors");
pub struct Redb {
    db: redb::Database,
    last: u64,
    cursor: u64,
}
impl Redb {
    fn open(dir: &Path) -> Self {
        use redb::ReadableDatabase;
        use redb::ReadableTable;
        let mut b = redb::Builder::new();
        if let Ok(c) = std::env::var("JB_REDB_CACHE_MB") {
            b.set_cache_size(c.parse::<usize>().unwrap() << 20);
        }
        let db = b.create(dir.join("journal.redb")).unwrap();
        {
            let tx = db.begin_write().unwrap();
            tx.open_table(J).unwrap();
            tx.open_table(C).unwrap();
            tx.commit().unwrap();
        }
        let rt = db.begin_read().unwrap();
        let c = rt.open_table(C).unwrap();
        let cursor = c.get("r").unwrap().map(|g| g.value()).unwrap_or(0);
        let j = rt.open_table(J).unwrap();
        let last = j.last().unwrap().map(|(k, _)| k.value()).unwrap_or(0).max(cursor);
        drop((j, c, rt));
        Redb { db, last, cursor }
    }
}
impl Journal for Redb {
    fn last_seq(&self) -> u64 {
        self.last
    }
    fn cursor(&self) -> u64 {
        self.cursor
    }
    fn append(&mut self, first: u64, msgs: &[(String, Vec<u8>)]) {
        let mut tx = self.db.begin_write().unwrap();
        if std::env::var_os("JB_REDB_QUICK").is_some() {
            tx.set_quick_repair(true);
        }
        {
            let mut t = tx.open_table(J).unwrap();
            for (i, (tp, p)) in msgs.iter().enumerate() {
                t.insert(first + i as u64, encode(tp, p).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap(); // Durability::Immediate is the default
        self.last = first + msgs.len() as u64 - 1;
    }
    fn read(&mut self, after: u64, max: usize, out: &mut Vec<Entry>) {
        use redb::ReadableDatabase;
        use redb::ReadableTable;
        let rt = self.db.begin_read().unwrap();
        let t = rt.open_table(J).unwrap();
        for r in t.range(after + 1..).unwrap().take(max) {
            let (k, v) = r.unwrap();
            let (tp, p) = decode(v.value());
            out.push((k.value(), tp, p));
        }
    }
    fn advance(&mut self, pos: u64, durable: bool) {
        let mut tx = self.db.begin_write().unwrap();
        if !durable {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut c = tx.open_table(C).unwrap();
            c.insert("r", pos).unwrap();
            let mut t = tx.open_table(J).unwrap();
            t.retain_in(..=pos, |_, _| false).unwrap();
        }
        tx.commit().unwrap();
        self.cursor = pos;
    }
}

// ---------------------------------------------------------------- fjall
pub struct Fjall {
    db: fjall::Database,
    j: fjall::Keyspace,
    c: fjall::Keyspace,
    last: u64,
    cursor: u64,
}
impl Fjall {
    fn open(dir: &Path) -> Self {
        let mut b = fjall::Database::builder(dir.join("fjall"));
        let mem = std::env::var("JB_FJALL_MEM_MB").ok().map(|s| s.parse::<u64>().unwrap() << 20);
        if let Some(m) = mem {
            b = b.cache_size(m).max_write_buffer_size(Some(m));
        }
        let db = b.open().unwrap();
        let j = db
            .keyspace("journal", || match mem {
                Some(m) => fjall::KeyspaceCreateOptions::default().max_memtable_size(m / 2),
                None => fjall::KeyspaceCreateOptions::default(),
            })
            .unwrap();
        let c = db.keyspace("cursors", fjall::KeyspaceCreateOptions::default).unwrap();
        let cursor = c
            .get("r")
            .unwrap()
            .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap()))
            .unwrap_or(0);
        let last = j
            .last_key_value()
            .map(|g| u64::from_be_bytes(g.key().unwrap()[..8].try_into().unwrap()))
            .unwrap_or(0)
            .max(cursor);
        Fjall { db, j, c, last, cursor }
    }
}
impl Journal for Fjall {
    fn last_seq(&self) -> u64 {
        self.last
    }
    fn cursor(&self) -> u64 {
        self.cursor
    }
    fn append(&mut self, first: u64, msgs: &[(String, Vec<u8>)]) {
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncData));
        for (i, (tp, p)) in msgs.iter().enumerate() {
            b.insert(&self.j, (first + i as u64).to_be_bytes().to_vec(), encode(tp, p));
        }
        b.commit().unwrap();
        self.last = first + msgs.len() as u64 - 1;
    }
    fn read(&mut self, after: u64, max: usize, out: &mut Vec<Entry>) {
        let start = (after + 1).to_be_bytes().to_vec();
        for g in self.j.range(start..).take(max) {
            let (k, v) = g.into_inner().unwrap();
            let (tp, p) = decode(&v);
            out.push((u64::from_be_bytes(k[..8].try_into().unwrap()), tp, p));
        }
    }
    fn advance(&mut self, pos: u64, durable: bool) {
        let mut b = self.db.batch();
        if durable {
            b = b.durability(Some(fjall::PersistMode::SyncData));
        }
        for s in self.cursor + 1..=pos {
            if std::env::var_os("JB_FJALL_WEAK").is_some() {
                b.remove_weak(&self.j, s.to_be_bytes().to_vec());
            } else {
                b.remove(&self.j, s.to_be_bytes().to_vec());
            }
        }
        b.insert(&self.c, "r", pos.to_be_bytes().to_vec());
        b.commit().unwrap();
        self.cursor = pos;
    }
}

// ---------------------------------------------------------------- hand-written segment log
// record: len u32 | crc32 u32 | body{ seq u64 | tlen u16 | topic | payload },  len = body length
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};

const SEG_MAX: u64 = 64 << 20;

pub struct SegLog {
    dir: PathBuf,
    segs: Vec<u64>,
    cur: File,
    cur_len: u64,
    last: u64,
    cursor: u64,
    buf: Vec<u8>,
    reader: Option<(usize, BufReader<File>, u64)>, // seg index, reader, next seq
}
fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("seg-{first:020}.log"))
}
fn read_rec(r: &mut impl Read, hdr: &mut [u8; 8], body: &mut Vec<u8>) -> Option<u64> {
    // returns total record length on success
    if r.read_exact(hdr).is_err() {
        return None;
    }
    let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
    if len < 10 || len > (2 << 20) {
        return None;
    }
    body.resize(len, 0);
    if r.read_exact(body).is_err() {
        return None;
    }
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some(8 + len as u64)
}
impl SegLog {
    fn open(dir: &Path) -> Self {
        let dir = dir.join("seglog");
        std::fs::create_dir_all(&dir).unwrap();
        let mut segs: Vec<u64> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        segs.sort();
        let cursor = std::fs::read(dir.join("cursor"))
            .ok()
            .filter(|b| b.len() == 12 && crc32fast::hash(&b[..8]) == u32::from_le_bytes(b[8..12].try_into().unwrap()))
            .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
            .unwrap_or(0);
        if segs.is_empty() {
            let first = cursor + 1;
            File::create(seg_path(&dir, first)).unwrap().sync_all().unwrap();
            File::open(&dir).unwrap().sync_all().unwrap();
            segs.push(first);
        }
        // scan the last segment: validate every record, cut a torn tail
        let first = *segs.last().unwrap();
        let p = seg_path(&dir, first);
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let flen = f.metadata().unwrap().len();
        let mut r = BufReader::with_capacity(1 << 20, &f);
        let (mut off, mut next) = (0u64, first);
        let (mut hdr, mut body) = ([0u8; 8], Vec::new());
        while let Some(l) = read_rec(&mut r, &mut hdr, &mut body) {
            if u64::from_le_bytes(body[0..8].try_into().unwrap()) != next {
                break;
            }
            off += l;
            next += 1;
        }
        drop(r);
        if off != flen {
            eprintln!("seglog: torn tail in {} at {off} (file {flen} bytes): truncated", p.display());
            f.set_len(off).unwrap();
            f.sync_all().unwrap();
        }
        f.seek(SeekFrom::Start(off)).unwrap();
        SegLog { dir, segs, cur: f, cur_len: off, last: (next - 1).max(cursor), cursor, buf: Vec::new(), reader: None }
    }
}
impl Journal for SegLog {
    fn last_seq(&self) -> u64 {
        self.last
    }
    fn cursor(&self) -> u64 {
        self.cursor
    }
    fn append(&mut self, first: u64, msgs: &[(String, Vec<u8>)]) {
        assert_eq!(first, self.last + 1);
        if self.cur_len >= SEG_MAX {
            let f = File::create(seg_path(&self.dir, first)).unwrap();
            File::open(&self.dir).unwrap().sync_all().unwrap();
            self.segs.push(first);
            self.cur = f;
            self.cur_len = 0;
        }
        self.buf.clear();
        for (i, (t, p)) in msgs.iter().enumerate() {
            let len = 8 + 2 + t.len() + p.len();
            let at = self.buf.len();
            self.buf.extend_from_slice(&(len as u32).to_le_bytes());
            self.buf.extend_from_slice(&[0; 4]);
            self.buf.extend_from_slice(&(first + i as u64).to_le_bytes());
            self.buf.extend_from_slice(&(t.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(t.as_bytes());
            self.buf.extend_from_slice(p);
            let crc = crc32fast::hash(&self.buf[at + 8..]);
            self.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        self.cur.write_all(&self.buf).unwrap();
        self.cur.sync_data().unwrap();
        self.cur_len += self.buf.len() as u64;
        self.last = first + msgs.len() as u64 - 1;
    }
    fn read(&mut self, after: u64, max: usize, out: &mut Vec<Entry>) {
        let want = after + 1;
        if !matches!(&self.reader, Some((_, _, n)) if *n == want) {
            let i = match self.segs.iter().rposition(|&s| s <= want) {
                Some(i) => i,
                None => 0,
            };
            let f = File::open(seg_path(&self.dir, self.segs[i])).unwrap();
            self.reader = Some((i, BufReader::with_capacity(256 << 10, f), self.segs[i]));
        }
        let (mut hdr, mut body) = ([0u8; 8], Vec::new());
        while out.len() < max {
            let (i, r, next) = self.reader.as_mut().unwrap();
            if *next > self.last {
                break;
            }
            if *i + 1 < self.segs.len() && *next == self.segs[*i + 1] {
                *i += 1;
                *r = BufReader::with_capacity(256 << 10, File::open(seg_path(&self.dir, self.segs[*i])).unwrap());
            }
            let Some(_) = read_rec(r, &mut hdr, &mut body) else { break };
            let seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
            assert_eq!(seq, *next);
            *next += 1;
            if seq < want {
                continue;
            }
            let tl = u16::from_le_bytes([body[8], body[9]]) as usize;
            out.push((seq, body[10..10 + tl].to_vec(), body[10 + tl..].to_vec()));
        }
    }
    fn advance(&mut self, pos: u64, _durable: bool) {
        // the cursor is never fsynced: a crash may redeliver, never lose
        let mut b = pos.to_le_bytes().to_vec();
        b.extend_from_slice(&crc32fast::hash(&pos.to_le_bytes()).to_le_bytes());
        let tmp = self.dir.join("cursor.tmp");
        std::fs::write(&tmp, &b).unwrap();
        std::fs::rename(&tmp, self.dir.join("cursor")).unwrap();
        self.cursor = pos;
        // drop whole segments whose every entry is <= pos
        let mut drop_n = 0;
        while drop_n + 1 < self.segs.len() && self.segs[drop_n + 1] <= pos + 1 {
            std::fs::remove_file(seg_path(&self.dir, self.segs[drop_n])).unwrap();
            drop_n += 1;
        }
        if drop_n > 0 {
            self.segs.drain(..drop_n);
            if let Some((i, _, _)) = self.reader.as_mut() {
                *i -= drop_n.min(*i);
            }
        }
    }
}
