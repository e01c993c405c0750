//! jbench: measure candidate storage engines for fxbridge's durable journal.
//!
//! jbench <engine> append   <dir> <n> <batch>            fresh store, n msgs, commit every <batch>
//! jbench <engine> rate     <dir> <rate> <secs> <win_ms> fresh store, producer at <rate>/s, group commit window
//! jbench <engine> drain    <dir>                        open (timed), read+advance+delete everything
//! jbench <engine> open     <dir>                        open (timed) + count/verify
//! jbench <engine> forever  <dir> <batch>                append forever, print last durable seq after each commit
//! jbench <engine> crash    <dir> <batch> <ms>           spawn `forever`, SIGKILL after <ms>, reopen (timed), verify
//! engines: sqlite-full sqlite-normal redb fjall seglog

mod engines;

use engines::{Journal, open_engine};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn topic(seq: u64) -> String {
    format!("site-{:02}/sensor/{:06}/temp", seq % 16, seq % 1000)
}
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&seq.to_le_bytes());
    for i in 8..len {
        v.push((seq.wrapping_mul(31).wrapping_add(i as u64)) as u8);
    }
    v
}

pub struct IoStat {
    pub write_bytes: u64,
    pub wchar: u64,
    pub syscw: u64,
}
pub fn io() -> IoStat {
    let s = std::fs::read_to_string("/proc/self/io").unwrap();
    let g = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    IoStat { write_bytes: g("write_bytes:"), wchar: g("wchar:"), syscw: g("syscw:") }
}
pub fn rss_kb() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let g = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    (g("VmRSS:"), g("VmHWM:"))
}
fn dir_size(p: &Path) -> u64 {
    let mut t = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                t += dir_size(&e.path());
            } else {
                t += m.len();
            }
        }
    }
    t
}

const PAYLOAD: usize = 64;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let engine = a[1].as_str();
    let mode = a[2].as_str();
    let dir = Path::new(&a[3]);
    let plen: usize = std::env::var("JB_PAYLOAD").ok().and_then(|s| s.parse().ok()).unwrap_or(PAYLOAD);
    match mode {
        "append" => {
            let n: u64 = a[4].parse().unwrap();
            let batch: u64 = a[5].parse().unwrap();
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
            let io0 = io();
            let mut j = open_engine(engine, dir);
            let mut seq = j.last_seq();
            assert_eq!(seq, 0);
            let mut msgs: Vec<(String, Vec<u8>)> = Vec::with_capacity(batch as usize);
            let t0 = Instant::now();
            let mut commits = 0u64;
            let mut logical = 0u64;
            let mut rss_marks = vec![];
            let mut lat = Vec::new();
            while seq < n {
                msgs.clear();
                let first = seq + 1;
                for s in first..=(seq + batch).min(n) {
                    let t = topic(s);
                    let p = payload(s, plen);
                    logical += (t.len() + p.len()) as u64;
                    msgs.push((t, p));
                }
                let tc = Instant::now();
                j.append(first, &msgs);
                lat.push(tc.elapsed());
                commits += 1;
                let prev = seq;
                seq += msgs.len() as u64;
                if seq / 100_000 != prev / 100_000 {
                    rss_marks.push((seq, rss_kb().0));
                }
            }
            let el = t0.elapsed();
            let io1 = io();
            drop(j);
            let io2 = io();
            lat.sort();
            let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
            println!(
                "RESULT engine={engine} mode=append n={n} batch={batch} secs={:.3} msgs_per_s={:.0} commits={commits} commits_per_s={:.0} commit_ms_p50={:.3} commit_ms_p99={:.3} logical_B_per_msg={:.1} write_bytes_per_msg={:.1} write_bytes_per_msg_incl_close={:.1} wamp_incl_close={:.2} wchar_per_msg={:.1} disk_bytes_after={} rss_kb_marks={:?}",
                el.as_secs_f64(),
                n as f64 / el.as_secs_f64(),
                commits as f64 / el.as_secs_f64(),
                p(0.5),
                p(0.99),
                logical as f64 / n as f64,
                (io1.write_bytes - io0.write_bytes) as f64 / n as f64,
                (io2.write_bytes - io0.write_bytes) as f64 / n as f64,
                (io2.write_bytes - io0.write_bytes) as f64 / logical as f64,
                (io2.wchar - io0.wchar) as f64 / n as f64,
                dir_size(dir),
                rss_marks
            );
        }
        "rate" | "steady" => {
            // steady: the same, plus one in-order consumer in the writer thread that reads every
            // committed entry and advances its cursor (deleting below it) every 10 commits,
            // without fsync (the next durable append commit persists it)
            let consume = mode == "steady";
            let rate: u64 = a[4].parse().unwrap();
            let secs: u64 = a[5].parse().unwrap();
            let win = Duration::from_micros((a[6].parse::<f64>().unwrap() * 1000.0) as u64);
            let n = rate * secs;
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
            let mut j = open_engine(engine, dir);
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, String, Vec<u8>)>(1 << 20);
            let io0 = io();
            let t0 = Instant::now();
            let prod = std::thread::spawn(move || {
                let start = Instant::now();
                for s in 1..=n {
                    let due = start + Duration::from_nanos(s * 1_000_000_000 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    tx.send((Instant::now(), topic(s), payload(s, plen))).unwrap();
                }
            });
            let mut seq = 0u64;
            let mut commits = 0u64;
            let mut ack_lat = Vec::with_capacity(n as usize);
            let mut msgs = Vec::new();
            let mut arr = Vec::new();
            let mut logical = 0u64;
            let mut cur = 0u64;
            while seq < n {
                msgs.clear();
                arr.clear();
                let (t, tp, p) = rx.recv().unwrap();
                // group = everything already queued + whatever arrives until the window closes
                let deadline = t + win; // bounded delay from the first arrival
                arr.push(t);
                msgs.push((tp, p));
                while msgs.len() < 4096 {
                    match rx.try_recv() {
                        Ok((t, tp, p)) => {
                            arr.push(t);
                            msgs.push((tp, p));
                        }
                        Err(_) => break,
                    }
                }
                loop {
                    let now = Instant::now();
                    if now >= deadline || msgs.len() >= 4096 {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok((t, tp, p)) => {
                            arr.push(t);
                            msgs.push((tp, p));
                        }
                        Err(_) => break,
                    }
                }
                for (tp, p) in &msgs {
                    logical += (tp.len() + p.len()) as u64;
                }
                j.append(seq + 1, &msgs);
                let done = Instant::now();
                for t in &arr {
                    ack_lat.push(done - *t);
                }
                commits += 1;
                seq += msgs.len() as u64;
                if consume {
                    let mut out = Vec::new();
                    while cur < seq {
                        out.clear();
                        j.read(cur, 4096, &mut out);
                        for (s, _, p) in &out {
                            assert_eq!(*s, cur + 1);
                            assert_eq!(&p[..8], &s.to_le_bytes());
                            cur = *s;
                        }
                    }
                    if commits % 10 == 0 {
                        j.advance(cur, false);
                    }
                }
            }
            let el = t0.elapsed();
            prod.join().unwrap();
            let io1 = io();
            ack_lat.sort();
            let p = |q: f64| ack_lat[((ack_lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
            println!(
                "RESULT engine={engine} mode={mode} rate={rate} window_ms={:.1} n={n} secs={:.3} msgs_per_s={:.0} commits_per_s={:.0} msgs_per_commit={:.1} ack_ms_p50={:.3} ack_ms_p99={:.3} ack_ms_max={:.3} write_bytes_per_msg={:.1} wamp={:.2} rss_kb={} disk_bytes_end={}",
                win.as_secs_f64() * 1e3,
                el.as_secs_f64(),
                n as f64 / el.as_secs_f64(),
                commits as f64 / el.as_secs_f64(),
                n as f64 / commits as f64,
                p(0.5),
                p(0.99),
                p(1.0),
                (io1.write_bytes - io0.write_bytes) as f64 / n as f64,
                (io1.write_bytes - io0.write_bytes) as f64 / logical as f64,
                rss_kb().0,
                dir_size(dir)
            );
        }
        "drain" => {
            let rss_pre = rss_kb().0;
            let t = Instant::now();
            let mut j = open_engine(engine, dir);
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let rss_open = rss_kb().0;
            let last = j.last_seq();
            let mut cur = j.cursor();
            let io0 = io();
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut n = 0u64;
            let mut chunks = 0u64;
            let mut rss_marks = vec![];
            let chunk = 1000usize;
            while cur < last {
                out.clear();
                j.read(cur, chunk, &mut out);
                assert!(!out.is_empty(), "gap after {cur}");
                for (s, t, p) in &out {
                    assert_eq!(*s, cur + 1, "order");
                    debug_assert_eq!(t.as_slice(), topic(*s).as_bytes());
                    assert_eq!(&p[..8], &s.to_le_bytes());
                    cur = *s;
                    n += 1;
                }
                chunks += 1;
                // cursor update + delete below min cursor; durable only every 10th chunk
                j.advance(cur, chunks % 10 == 0);
                if n % 100_000 < chunk as u64 {
                    rss_marks.push((n, rss_kb().0));
                }
            }
            j.advance(cur, true);
            let el = t0.elapsed();
            let io1 = io();
            let disk_after = dir_size(dir);
            drop(j);
            println!(
                "RESULT engine={engine} mode=drain open_ms={open_ms:.1} n={n} secs={:.3} msgs_per_s={:.0} write_bytes_per_msg={:.1} rss_kb_before_open={rss_pre} rss_kb_after_open={rss_open} rss_kb_marks={:?} hwm_kb={} disk_bytes_after={disk_after}",
                el.as_secs_f64(),
                n as f64 / el.as_secs_f64(),
                (io1.write_bytes - io0.write_bytes) as f64 / n.max(1) as f64,
                rss_marks,
                rss_kb().1
            );
        }
        "open" => {
            let t = Instant::now();
            let j = open_engine(engine, dir);
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            println!("RESULT engine={engine} mode=open open_ms={open_ms:.1} last_seq={} cursor={} rss_kb={}", j.last_seq(), j.cursor(), rss_kb().0);
        }
        "forever" => {
            let batch: u64 = a[4].parse().unwrap();
            let mut j = open_engine(engine, dir);
            let mut seq = j.last_seq();
            let mut so = std::io::stdout().lock();
            writeln!(so, "START {seq}").unwrap();
            so.flush().unwrap();
            let mut msgs = Vec::new();
            loop {
                msgs.clear();
                for s in seq + 1..=seq + batch {
                    msgs.push((topic(s), payload(s, plen)));
                }
                j.append(seq + 1, &msgs);
                seq += batch;
                writeln!(so, "{seq}").unwrap();
                so.flush().unwrap();
            }
        }
        "crash" => {
            let batch = &a[4];
            let ms: u64 = a[5].parse().unwrap();
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([engine, "forever", dir.to_str().unwrap(), batch])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            let so = child.stdout.take().unwrap();
            let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let start = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
            let (a2, s2) = (acked.clone(), start.clone());
            let rd = std::thread::spawn(move || {
                for l in std::io::BufReader::new(so).lines() {
                    let Ok(l) = l else { break };
                    if let Some(s) = l.strip_prefix("START ") {
                        s2.store(s.parse().unwrap(), std::sync::atomic::Ordering::SeqCst);
                    } else {
                        a2.store(l.parse().unwrap(), std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(ms));
            unsafe { libc_kill(pid as i32, 9) };
            child.wait().unwrap();
            rd.join().unwrap();
            let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
            let start = start.load(std::sync::atomic::Ordering::SeqCst);
            let t = Instant::now();
            let mut j = open_engine(engine, dir);
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let last = j.last_seq();
            // verify every acked entry since start (and all before) present, in order, intact
            let mut cur = j.cursor();
            let mut out = Vec::new();
            let mut n = 0u64;
            let tv = Instant::now();
            let mut ok = true;
            while cur < last {
                out.clear();
                j.read(cur, 10_000, &mut out);
                if out.is_empty() {
                    ok = false;
                    println!("GAP after {cur}");
                    break;
                }
                for (s, t, p) in &out {
                    if *s != cur + 1 || t.as_slice() != topic(*s).as_bytes() || *p != payload(*s, plen) {
                        ok = false;
                        println!("BAD entry {s} (expected {})", cur + 1);
                    }
                    cur = *s;
                    n += 1;
                }
                if !ok {
                    break;
                }
            }
            let complete = ok && last >= acked;
            println!(
                "RESULT engine={engine} mode=crash killed_after_ms={ms} start_seq={start} acked_seq={acked} recovered_last_seq={last} unacked_extra={} entries_verified={n} verify_ms={:.0} open_ms_after_kill={open_ms:.1} all_acked_present={complete}",
                last as i64 - acked as i64,
                tv.elapsed().as_secs_f64() * 1e3
            );
        }
        _ => panic!("mode"),
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
