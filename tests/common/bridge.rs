//! The bridge under test: its configuration, in-process start, and the real
//! binary as a child process.
//!
//! [`BridgeConfig`] renders a complete bridge.yaml for a test broker and gateway;
//! [`ConfigFile`] writes it into a temp dir and replaces it atomically (write a
//! sibling, then rename), the way editors and Kubernetes update files, so
//! hot-reload tests can rewrite it while the binary runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fxbridge::bridge::Bridge;
use fxbridge::config::Config;
use fxbridge::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::mosquitto::{signal, wait_exit};
use super::wait::{unique, wait_until_async};

/// The settings a test varies; everything else has test-friendly values
/// (short backoffs, so reconnects and retries take milliseconds, not seconds).
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub mqtt_port: u16,
    pub client_id: String,
    /// `"3.1.1"` or `"5"`.
    pub protocol: String,
    pub gateway_url: String,
    pub gateway_timeout: String,
    /// `gateway.max_concurrent`; the bridge's default when `None`.
    pub gateway_max_concurrent: Option<usize>,
    pub max_pending: usize,
    /// `mqtt.max_packet_size`, e.g. `"1KiB"`; the bridge's default when `None`.
    pub max_packet_size: Option<String>,
    pub drain_timeout: String,
    pub admin_port: Option<u16>,
    /// `state_dir`: a directory shared by the tests (client ids are unique).
    pub state_dir: PathBuf,
    /// Each route as one YAML flow mapping, e.g.
    /// `{name: a, topic: "s/+", function: echo, republish: {topic: "r/{1}"}}`.
    pub routes: Vec<String>,
    /// More top-level sections, as YAML text (e.g. `telemetry: {...}`).
    pub extra: String,
}

impl BridgeConfig {
    /// A config for the broker on `mqtt_port` and the gateway at `gateway_url`,
    /// with a fresh client id and no routes yet.
    pub fn new(mqtt_port: u16, gateway_url: &str) -> BridgeConfig {
        BridgeConfig {
            mqtt_port,
            client_id: unique("fxbridge-test"),
            protocol: "3.1.1".into(),
            gateway_url: gateway_url.into(),
            gateway_timeout: "10s".into(),
            gateway_max_concurrent: None,
            max_pending: 1000,
            max_packet_size: None,
            drain_timeout: "10s".into(),
            admin_port: None,
            state_dir: std::env::temp_dir().join("fxbridge-test-state"),
            routes: Vec::new(),
            extra: String::new(),
        }
    }

    /// Adds a route (a YAML flow mapping).
    pub fn route(mut self, flow: &str) -> BridgeConfig {
        self.routes.push(flow.to_string());
        self
    }

    /// The bridge.yaml text.
    pub fn to_yaml(&self) -> String {
        let mut y = format!(
            "mqtt:\n  url: mqtt://127.0.0.1:{port}\n  client_id: {id}\n  protocol: \"{proto}\"\n  \
             keep_alive: 30s\n  max_pending: {pending}\n  \
             reconnect: {{initial: 50ms, max: 500ms, multiplier: 2}}\n\
             gateway:\n  url: {gw}\n  timeout: {gwt}\n  connect_timeout: 1s\n\
             shutdown:\n  drain_timeout: {drain}\n",
            port = self.mqtt_port,
            id = self.client_id,
            proto = self.protocol,
            pending = self.max_pending,
            gw = self.gateway_url,
            gwt = self.gateway_timeout,
            drain = self.drain_timeout,
        );
        if let Some(n) = self.gateway_max_concurrent {
            y = y.replacen(
                "shutdown:\n",
                &format!("  max_concurrent: {n}\nshutdown:\n"),
                1,
            );
        }
        if let Some(size) = &self.max_packet_size {
            y = y.replacen(
                "gateway:\n",
                &format!("  max_packet_size: {size}\ngateway:\n"),
                1,
            );
        }
        if let Some(p) = self.admin_port {
            y.push_str(&format!("admin:\n  listen: 127.0.0.1:{p}\n"));
        }
        y.push_str(&format!(
            "state_dir: {:?}\n",
            self.state_dir.display().to_string()
        ));
        y.push_str(&self.extra);
        if !self.extra.is_empty() && !self.extra.ends_with('\n') {
            y.push('\n');
        }
        y.push_str("routes:\n");
        for r in &self.routes {
            y.push_str("  - ");
            y.push_str(r);
            y.push('\n');
        }
        y
    }

    /// The validated [`Config`] (panics with every error if it is invalid).
    pub fn parse(&self) -> Config {
        Config::parse(&self.to_yaml(), "test-bridge.yaml", Path::new("."))
            .unwrap_or_else(|e| panic!("invalid test config:\n{e}\n---\n{}", self.to_yaml()))
    }
}

/// Starts the bridge in this process and waits (10 s at most) until it is
/// connected with every subscription in place. Stop it with `Bridge::stop`.
pub async fn start_in_process(cfg: &BridgeConfig) -> Bridge {
    // `FXBRIDGE_TEST_LOG=debug` shows the bridge's log when a test is run alone.
    if let Ok(filter) = std::env::var("FXBRIDGE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let bridge = Bridge::start(cfg.parse(), Metrics::new())
        .await
        .expect("bridge start");
    wait_ready(&bridge.metrics).await;
    bridge
}

/// Starts the bridge in this process from the config file at `path` (so a
/// test can reload it later) and waits until it is ready.
pub async fn start_from_file(path: &Path) -> Bridge {
    let config = Config::load(path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    let bridge = Bridge::start(config, Metrics::new())
        .await
        .expect("bridge start");
    wait_ready(&bridge.metrics).await;
    bridge
}

/// Waits (10 s at most) until `metrics` says the bridge is ready.
pub async fn wait_ready(metrics: &Arc<Metrics>) {
    tokio::time::timeout(Duration::from_secs(10), metrics.wait_ready())
        .await
        .expect("the bridge was not ready within 10 s");
}

/// A bridge.yaml in its own temp dir.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// An empty temp dir; the file is `<dir>/bridge.yaml` once written.
    pub fn new() -> ConfigFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bridge.yaml");
        ConfigFile { dir, path }
    }

    /// A temp dir holding `yaml` as bridge.yaml.
    pub fn with(yaml: &str) -> ConfigFile {
        let f = ConfigFile::new();
        f.write(yaml);
        f
    }

    /// Replaces bridge.yaml atomically: a reader sees the old or the new file, never
    /// a partial one (a sibling temp file is renamed over it).
    pub fn write(&self, yaml: &str) {
        let tmp = self.dir.path().join(".bridge.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.path).expect("rename config");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self::new()
    }
}

/// The `fxbridge` binary running `fxbridge run -c <config>`, its stderr (the
/// log) in a file. Killed on drop.
pub struct BridgeProcess {
    child: Option<Child>,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl BridgeProcess {
    /// Starts `fxbridge run -c <config>` (log level info, text format).
    pub fn spawn(config: &Path) -> BridgeProcess {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log_path = log_dir.path().join("fxbridge.log");
        let log = std::fs::File::create(&log_path).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("FXBRIDGE_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fxbridge");
        BridgeProcess {
            child: Some(child),
            log_path,
            _log_dir: log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (panics after `timeout`, showing the log).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the bridge log within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET /readyz` on the admin port answers 200.
    pub async fn wait_ready(&self, admin_port: u16, timeout: Duration) {
        wait_until_async(timeout, "fxbridge /readyz = 200", || async {
            matches!(http_get(admin_port, "/readyz").await, Some((200, _)))
        })
        .await;
    }

    /// SIGKILL: no drain, no acks, no DISCONNECT.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful stop: drain, last acks, DISCONNECT).
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
    }
}

/// A minimal HTTP/1.1 GET on the loopback; `(status, body)` or `None` if the
/// port does not answer.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
}

/// The value of `fxbridge_<name>` (with its label set, e.g. `{route="a"}`) in
/// a Prometheus text page.
pub fn metric(page: &str, name_and_labels: &str) -> Option<u64> {
    let want = format!("fxbridge_{name_and_labels} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}
