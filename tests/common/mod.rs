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
//!   PUBLISH/PUBACK order on the wire.
//! - [`bridge`]: [`bridge::BridgeConfig`] (renders bridge.yaml), [`bridge::ConfigFile`]
//!   (writes it to a temp dir, replacing it atomically: usable for hot-reload tests),
//!   [`bridge::start_in_process`], and [`bridge::BridgeProcess`] (the real binary:
//!   SIGKILL, SIGTERM, log lines, admin endpoint).
//! - [`wait`]: [`wait::wait_until`] (bounded polling) and [`wait::free_port`].
#![allow(dead_code, unused_imports)]

pub mod bridge;
pub mod gateway;
pub mod mosquitto;
pub mod mqtt;
pub mod proxy;
pub mod wait;

pub use bridge::{start_in_process, BridgeConfig, BridgeProcess, ConfigFile};
pub use gateway::TestGateway;
pub use mosquitto::Mosquitto;
pub use mqtt::{publish_all, Collector};
pub use wait::{free_port, wait_until};
