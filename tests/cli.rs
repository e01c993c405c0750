//! Command-line settings that shape the process, checked on the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `fxbridge standin-gateway` with `args`, waits for its "serving" log
/// line, and returns how many tokio worker threads the process runs: waiting
/// up to 5 s for `expected`, because a new thread takes its name
/// (`tokio-rt-worker`) a moment after it starts.
fn worker_threads(args: &[&str], env: &[(&str, &str)], expected: usize) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .args(args)
        .args(["standin-gateway", "--listen", "127.0.0.1:0"])
        .env_remove("FXBRIDGE_WORKER_THREADS")
        .env_remove("TOKIO_WORKER_THREADS")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fxbridge");
    let stderr = child.stderr.take().expect("stderr");
    let mut serving = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        if line.contains("serving pb.FxGateway") {
            serving = true;
            break;
        }
    }
    assert!(serving, "the stand-in gateway did not start");
    let count = || {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .expect("tasks")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "tokio-rt-worker")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut workers = count();
    while workers != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        workers = count();
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    workers
}

#[test]
fn worker_threads_come_from_the_flag_or_the_environment() {
    assert_eq!(worker_threads(&["--worker-threads", "1"], &[], 1), 1);
    assert_eq!(worker_threads(&["--worker-threads", "3"], &[], 3), 3);
    let env = [("FXBRIDGE_WORKER_THREADS", "1")];
    assert_eq!(worker_threads(&[], &env, 1), 1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(worker_threads(&[], &[], cpus), cpus, "default: one per CPU");
}

#[test]
fn zero_worker_threads_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .args(["--worker-threads", "0", "check"])
        .output()
        .expect("run fxbridge");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 is not in 1..=65535"), "{stderr}");
}
