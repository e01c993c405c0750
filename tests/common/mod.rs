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
//! - [`proxy::MqttProxy`]: a TCP proxy that parses MQTT 3.1.1 packets, to see
//!   PUBLISH/PUBACK order on the wire, and can cut every connection.
//! - [`tcp::TcpProxy`]: a plain TCP proxy that can black-hole its traffic.
//! - [`bridge`]: [`bridge::BridgeConfig`] (renders bridge.yaml), [`bridge::ConfigFile`]
//!   (writes it to a temp dir, replacing it atomically: usable for hot-reload tests),
//!   [`bridge::start_in_process`], and [`bridge::BridgeProcess`] (the real binary:
//!   SIGKILL, SIGTERM, log lines, admin endpoint).
//! - [`wait`]: [`wait::wait_until`] (bounded polling) and [`wait::free_port`].
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
pub mod proxy;
pub mod tcp;
pub mod wait;

pub use bridge::{start_in_process, BridgeConfig, BridgeProcess, ConfigFile};
pub use gateway::{MalformedGateway, TestGateway};
pub use mosquitto::Mosquitto;
pub use mqtt::{publish_all, Collector};
pub use wait::{free_port, wait_until};

/// A built plugin in `plugins/dist`; fails the test, saying how to build it,
/// when it is missing.
pub fn dist(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/dist")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        p.display()
    );
    p
}
