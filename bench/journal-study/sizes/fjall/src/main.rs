fn main() { let p = std::env::args().nth(1).unwrap(); let db = fjall::Database::builder(p).open().unwrap();
 let j = db.keyspace("j", fjall::KeyspaceCreateOptions::default).unwrap();
 let mut b = db.batch().durability(Some(fjall::PersistMode::SyncData)); b.insert(&j, 1u64.to_be_bytes().to_vec(), b"x".to_vec()); b.commit().unwrap();
 let n = j.range(0u64.to_be_bytes().to_vec()..).count(); j.remove(1u64.to_be_bytes().to_vec()).unwrap(); println!("{n}"); }
