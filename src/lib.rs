//! fxbridge: routes MQTT messages to OpenFx functions and republishes their results.
//!
//! # Layout
//! A message's path reads in module order:
//! - [`config`]: `bridge.yaml`, typed and validated before anything connects.
//! - [`mqtt`]: the broker connections; [`mqtt::inbound`] receives and acknowledges,
//!   [`mqtt::outbound`] publishes and waits for the broker's confirmation.
//! - [`router`]: which routes take a message; per-route workers (concurrency, order).
//! - [`pipeline`]: one message through one route: pre -> Invoke -> post -> publish.
//! - [`transform`]: the WebAssembly plugins run before and after Invoke.
//! - [`gateway`]: the OpenFx gRPC client (and a stand-in for demos and benchmarks).
//! - [`deadletter`]: the envelope of a message that cannot be processed.
//! - [`ack`]: acknowledgements in arrival order, once every route is done.
//!
//! Around it: [`bridge`] wires and stops the parts, [`reload`] watches the
//! config and swaps in a new version, [`broker`] embeds an MQTT
//! broker, [`tls`] builds TLS client settings, [`topic`] matches filters and renders templates, [`message`] holds
//! the types that travel between stages, [`metrics`] counts and [`admin`] serves
//! the counters and health over HTTP.
pub mod ack;
pub mod admin;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod demo;
pub mod gateway;
pub mod message;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod proto;
pub mod reload;
pub mod router;
pub mod tls;
pub mod topic;
pub mod transform;

pub use bridge::run;
