use redb::{ReadableDatabase, TableDefinition};
const J: TableDefinition<u64, &[u8]> = TableDefinition::new("j");
fn main() { let p = std::env::args().nth(1).unwrap(); let db = redb::Database::create(p).unwrap();
 let tx = db.begin_write().unwrap(); { let mut t = tx.open_table(J).unwrap(); t.insert(1, b"x".as_slice()).unwrap(); } tx.commit().unwrap();
 let rt = db.begin_read().unwrap(); let t = rt.open_table(J).unwrap(); let n = t.range(0..).unwrap().count(); drop(t); drop(rt);
 let tx = db.begin_write().unwrap(); { let mut t = tx.open_table(J).unwrap(); t.retain_in(..=1u64, |_, _| false).unwrap(); } tx.commit().unwrap(); println!("{n}"); }
