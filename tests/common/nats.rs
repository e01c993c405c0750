//! A private nats-server per test with its MQTT gateway: its own config, ports
//! (client and MQTT), log and JetStream store in a temp dir. Never the shared
//! server on 4222.
//!
//! NATS's MQTT support needs JetStream (sessions, QoS 1 messages and retained
//! messages are JetStream streams) and a `server_name`. The store survives a
//! restart on the same ports, so persistent sessions do too.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::mosquitto::{kill_now, stop_gracefully, wait_started};

const BINARY: &str = "/usr/sbin/nats-server";

/// A running (or stopped) nats-server; killed on drop.
pub struct Nats {
    mqtt_port: u16,
    client_port: u16,
    dir: tempfile::TempDir,
    /// Lines added to the `mqtt { }` block (e.g. `ack_wait: "5s"`).
    mqtt_extra: String,
    child: Option<Child>,
}

impl Nats {
    /// Starts a server with JetStream (store in the temp dir) and MQTT on a
    /// free loopback port, and waits until it is ready.
    pub fn start() -> Nats {
        Self::start_with("")
    }

    /// Like [`Nats::start`], with `mqtt_extra` lines in the `mqtt { }` block.
    /// NATS's defaults: `ack_wait: "30s"` (a message delivered and not
    /// acknowledged is sent again after it, also to a resumed session) and
    /// `max_ack_pending: 1024`.
    pub fn start_with(mqtt_extra: &str) -> Nats {
        let mut n = Nats {
            mqtt_port: super::free_port(),
            client_port: super::free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            mqtt_extra: mqtt_extra.to_string(),
            child: None,
        };
        n.write_config();
        n.start_again();
        n
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    /// The server's log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let conf = format!(
            "server_name: fxbridge-test-{pid}-{port}\n\
             listen: 127.0.0.1:{client}\n\
             jetstream {{\n  store_dir: \"{d}/js\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
             mqtt {{\n  host: 127.0.0.1\n  port: {port}\n{extra}}}\n",
            extra = self
                .mqtt_extra
                .lines()
                .map(|l| format!("  {}\n", l.trim()))
                .collect::<String>(),
            pid = std::process::id(),
            port = self.mqtt_port,
            client = self.client_port,
        );
        let mut f = std::fs::File::create(self.config_path()).expect("write nats.conf");
        f.write_all(conf.as_bytes()).expect("write nats.conf");
    }

    /// The MQTT port.
    pub fn port(&self) -> u16 {
        self.mqtt_port
    }

    /// `mqtt://127.0.0.1:<mqtt port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn ready_lines(&self) -> usize {
        self.log().matches("Server is ready").count()
    }

    /// Starts the server (again) on the same ports and store, and waits until
    /// it says it is ready and its MQTT port accepts connections (at most 20 s).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let before = self.ready_lines();
        let child = Command::new(BINARY)
            .arg("-c")
            .arg(self.config_path())
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start /usr/sbin/nats-server");
        self.child = Some(child);
        let port = self.mqtt_port;
        let log = self.log_path();
        let ready_lines = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("Server is ready")
                .count()
        };
        wait_started(
            &mut self.child,
            "nats-server",
            Duration::from_secs(20),
            || ready_lines() > before && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        stop_gracefully(&mut self.child, "nats-server", Duration::from_secs(15));
    }

    /// Kills the server (SIGKILL): no clean shutdown of the store.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }

    /// A clean stop followed by a start on the same ports and store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A SIGKILL followed by a start on the same ports and store.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
