fn main() { let p = std::env::args().nth(1).unwrap(); let mut c = rusqlite::Connection::open(p).unwrap();
 c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS j(seq INTEGER PRIMARY KEY, t BLOB, p BLOB);").unwrap();
 let tx = c.transaction().unwrap(); tx.execute("INSERT INTO j(t,p) VALUES (?1, ?2)", rusqlite::params![b"t".as_slice(), b"p".as_slice()]).unwrap(); tx.commit().unwrap();
 let mut st = c.prepare("SELECT seq, p FROM j WHERE seq > ?1 ORDER BY seq LIMIT 10").unwrap();
 let n: Vec<(i64, Vec<u8>)> = st.query_map([0], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect(); drop(st);
 c.execute("DELETE FROM j WHERE seq <= ?1", [1]).unwrap(); println!("{}", n.len()); }
