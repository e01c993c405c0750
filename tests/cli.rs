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

/// The first lines `fxbridge standin-gateway` writes to stderr, up to its
/// "serving" line; on a pseudo-terminal (util-linux `script`) when `tty`.
fn log_until_serving(tty: bool, env: &[(&str, &str)]) -> String {
    let bin = env!("CARGO_BIN_EXE_fxbridge");
    let mut cmd = if tty {
        let mut c = Command::new("script");
        c.args([
            "-qefc",
            &format!("{bin} standin-gateway --listen 127.0.0.1:0"),
            "/dev/null",
        ]);
        c.stdout(Stdio::piped()).stderr(Stdio::null());
        c
    } else {
        let mut c = Command::new(bin);
        c.args(["standin-gateway", "--listen", "127.0.0.1:0"]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let mut child = cmd
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .spawn()
        .expect("start fxbridge");
    let out: Box<dyn std::io::Read> = match child.stdout.take() {
        Some(o) => Box::new(o),
        None => Box::new(child.stderr.take().expect("stderr")),
    };
    let mut log = String::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("read the log");
        log.push_str(&line);
        log.push('\n');
        if line.contains("serving pb.FxGateway") {
            break;
        }
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        log.contains("serving pb.FxGateway"),
        "no serving line: {log:?}"
    );
    log
}

#[test]
fn log_colours_only_on_a_terminal_and_never_with_no_color() {
    const ESC: char = '\u{1b}';
    assert!(
        log_until_serving(true, &[]).contains(ESC),
        "a terminal gets colours"
    );
    let piped = log_until_serving(false, &[]);
    assert!(!piped.contains(ESC), "a pipe gets none: {piped:?}");
    let no_color = log_until_serving(true, &[("NO_COLOR", "1")]);
    assert!(!no_color.contains(ESC), "NO_COLOR: {no_color:?}");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(log_until_serving(true, &[("NO_COLOR", "")]).contains(ESC));
}
