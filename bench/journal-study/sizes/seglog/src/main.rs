use std::io::{Read, Write};
fn main() { let p = std::env::args().nth(1).unwrap(); let mut f = std::fs::OpenOptions::new().create(true).append(true).read(true).open(&p).unwrap();
 let body = b"topic/x payload"; let mut rec = (body.len() as u32).to_le_bytes().to_vec(); rec.extend_from_slice(&crc32fast::hash(body).to_le_bytes()); rec.extend_from_slice(body);
 f.write_all(&rec).unwrap(); f.sync_data().unwrap(); let mut v = vec![]; std::fs::File::open(&p).unwrap().read_to_end(&mut v).unwrap();
 println!("{}", crc32fast::hash(&v[8..])); for e in std::fs::read_dir(".").unwrap() { let _ = e; } std::fs::rename(&p, format!("{p}.old")).unwrap(); }
