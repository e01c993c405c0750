//! Shared helpers for the integration tests: real parts on free loopback ports.
//!
//! Every test file that needs them says `mod common;`. Not every file uses every
//! helper, hence `allow(dead_code)`.
//!
//! - [`mosquitto::Mosquitto`]: a private mosquitto (own config, port, log, optional
//!   persistence) that can be stopped, killed and started again on the same port.
//! - [`gateway::TestGateway`]: a real tonic `pb.FxGateway` server in the test process
//!   whose behaviour the test controls (echo, delays, holds, failures, stop/restart)
//!   and which records every invocation.
//! - [`mqtt`]: `publish_all` (QoS 1, confirmed by the broker) and [`mqtt::Collector`]
//!   (subscribes, records every message, waits for N distinct, counts duplicates).
//! - [`mqtt5::Client`]: an MQTT 5 client that publishes with properties (user
//!   properties, response topic, correlation data) and records theirs.
//! - [`proxy::MqttProxy`]: a TCP proxy that parses MQTT 3.1.1 packets, to see
//!   PUBLISH/PUBACK order on the wire, and can cut every connection.
//! - [`tcp::TcpProxy`]: a plain TCP proxy that can black-hole its traffic.
//! - [`bridge`]: [`bridge::BridgeConfig`] (renders bridge.yaml), [`bridge::ConfigFile`]
//!   (writes it to a temp dir, replacing it atomically: usable for hot-reload tests),
//!   [`bridge::start_in_process`], and [`bridge::BridgeProcess`] (the real binary:
//!   SIGKILL, SIGTERM, log lines, admin endpoint).
//! - [`wait`]: [`wait::wait_until`] (bounded polling) and [`wait::free_port`].
//! - [`plugins`]: the built plugins, one shared plugin host, hook messages.
//!
//! A typical test against the binary (hot-reload tests rewrite the file while it runs):
//!
//! ```ignore
//! let broker = Mosquitto::start();
//! let gw = TestGateway::start().await;
//! let admin = free_port();
//! let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
//!     .route(r#"{name: a, topic: "s/+/in", function: echo, republish: {topic: "s/{1}/out"}}"#);
//! cfg.admin_port = Some(admin);
//! let file = ConfigFile::with(&cfg.to_yaml());
//! let results = Collector::start(broker.port(), &["s/+/out"]).await;
//! let bridge = BridgeProcess::spawn(file.path());
//! bridge.wait_ready(admin, Duration::from_secs(30)).await;
//! publish_all(broker.port(), &[("s/1/in".into(), b"hi".to_vec())]).await;
//! results.wait_for("s/1/out", b"hi", Duration::from_secs(20)).await;
//! file.write(&cfg.route(r#"{name: b, ...}"#).to_yaml()); // atomic replace
//! ```
//!
//! In-process tests use [`start_in_process`] and `Bridge::stop` instead, and can
//! read `bridge.metrics` directly. Notes: mosquitto sends at most
//! [`mosquitto::MAX_INFLIGHT`] unacknowledged messages to a client; the proxy
//! understands MQTT 3.1.1 only.
#![allow(dead_code, unused_imports)]

pub mod bridge;
pub mod gateway;
pub mod mosquitto;
pub mod mqtt;
pub mod mqtt5;
pub mod nats;
pub mod otlp;
pub mod plugins;
pub mod proxy;
pub mod rabbitmq;
pub mod tcp;
pub mod wait;

pub use bridge::{start_in_process, BridgeConfig, BridgeProcess, ConfigFile};
pub use gateway::{MalformedGateway, TestGateway};
pub use mosquitto::Mosquitto;
pub use mqtt::{publish_all, Collector};
pub use wait::{free_port, wait_until};

/// This process's resident memory (VmRSS), in MiB.
pub fn process_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// A built plugin in `plugins/dist` (`name` with or without `.wasm`; the
/// folder can be moved with `FXBRIDGE_PLUGINS_DIST`). Fails, never skips, when
/// it is missing, saying how to build it.
pub fn dist(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("FXBRIDGE_PLUGINS_DIST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist"));
    let file = if name.ends_with(".wasm") {
        name.to_string()
    } else {
        format!("{name}.wasm")
    };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `bash plugins/build.sh` \
         (or point FXBRIDGE_PLUGINS_DIST at a folder with the built .wasm files)",
        path.display()
    );
    path
}
