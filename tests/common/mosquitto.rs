//! A private mosquitto broker per test: its own config file, port, log and
//! (optionally) persistence directory in a temp dir. Never the shared one on 1883.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/mosquitto";

/// mosquitto's default `max_inflight_messages`: QoS 1/2 messages sent to one
/// client and not yet acknowledged. Further ones wait in the client's session.
pub const MAX_INFLIGHT: usize = 20;

/// A running (or stopped) mosquitto; killed on drop.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    persistence: bool,
    /// Lines added to the generated mosquitto.conf.
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker without persistence (sessions live in memory only).
    pub fn start() -> Mosquitto {
        Self::launch(false, "")
    }

    /// Starts a broker without persistence, with `extra` lines in its config
    /// (e.g. `max_packet_size 100000`).
    pub fn start_with(extra: &str) -> Mosquitto {
        Self::launch(false, extra)
    }

    /// Starts a broker that keeps sessions and queued messages across its own
    /// restart (`persistence true`, saved on a clean stop).
    pub fn start_persistent() -> Mosquitto {
        Self::launch(true, "")
    }

    fn launch(persistence: bool, extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: super::free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            persistence,
            extra: extra.to_string(),
            child: None,
        };
        m.write_config();
        m.start_again();
        m
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             max_queued_messages 0\n\
             log_dest file {d}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_type subscribe\nlog_type unsubscribe\n\
             connection_messages true\n\
             persistence {p}\n\
             persistence_location {d}/\n",
            port = self.port,
            p = self.persistence,
        );
        // mosquitto drops root privileges to `mosquitto` unless told otherwise,
        // and could then not write into the temp dir.
        if is_root() {
            conf.push_str("user root\n");
        }
        for line in self.extra.lines() {
            conf.push_str(line.trim());
            conf.push('\n');
        }
        let mut f = std::fs::File::create(self.config_path()).expect("write mosquitto.conf");
        f.write_all(conf.as_bytes()).expect("write mosquitto.conf");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the broker (again) on the same port and waits until it accepts
    /// connections (at most 10 s).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let child = Command::new(BINARY)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start /usr/sbin/mosquitto");
        self.child = Some(child);
        let port = self.port;
        let log = self.log_path();
        wait_started(
            &mut self.child,
            "mosquitto",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    /// Stops the broker cleanly (SIGTERM; with persistence it saves its state)
    /// and waits for it to exit.
    pub fn stop(&mut self) {
        stop_gracefully(&mut self.child, "mosquitto", Duration::from_secs(10));
    }

    /// Kills the broker (SIGKILL): nothing is saved.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }

    /// A clean stop followed by a start on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Sends `SIG<name>` to `pid` with kill(1) (the crate has no libc binding).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits (bounded) for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls (every 10 ms, at most `within`) until `ready` holds for the server
/// process in `child`; panics with its log if it exits or the time runs out.
pub fn wait_started(
    child: &mut Option<Child>,
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return;
        }
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{what} exited at start ({status}); log:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} was not ready within {within:?}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the server process in `child` with SIGTERM and waits (at most
/// `within`) for it to exit; kills it and panics if it does not.
pub fn stop_gracefully(child: &mut Option<Child>, what: &str, within: Duration) {
    let Some(mut c) = child.take() else {
        return;
    };
    signal(c.id(), "TERM");
    if wait_exit(&mut c, within).is_none() {
        let _ = c.kill();
        let _ = c.wait();
        panic!("{what} did not stop within {within:?} of SIGTERM");
    }
}

/// Kills the server process in `child` (SIGKILL) and reaps it.
pub fn kill_now(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
