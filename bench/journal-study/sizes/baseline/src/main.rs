use std::io::Write;
fn main() { let p = std::env::args().nth(1).unwrap(); let mut f = std::fs::File::create(p).unwrap(); f.write_all(b"x").unwrap(); f.sync_data().unwrap(); println!("{:?}", std::fs::read_dir(".").unwrap().count()); }
