//! fxbridge: routes MQTT messages to OpenFx functions and republishes their results.
//!
//! # Layout
//! A message's path reads in module order:
//! - [`config`]: `bridge.yaml`, typed and validated before anything connects.
//! - [`mqtt`]: the broker connections. [`mqtt::inbound`] receives one
//!   session's messages and acknowledges them in order, with the protocol
//!   state in [`mqtt::session`]; [`mqtt::outbound`] publishes, checking sizes
//!   first, and waits for the broker's confirmation.
//! - `router`: which routes of the session take a message; per-route workers
//!   (concurrency, order); the unrouted dead letter.
//! - `pipeline`: one message through one route: pre -> Invoke -> post ->
//!   publish, every failure ending in one place (a dead letter, or left for
//!   redelivery).
//! - [`transform`]: the WebAssembly plugins run before and after Invoke.
//! - [`gateway`]: the OpenFx gRPC client (and a stand-in for demos and benchmarks).
//! - `deadletter`: the envelope of a message that cannot be processed.
//! - `ack`: a delivery's shared fate, and acknowledgements in arrival order.
//!
//! Around it: [`bridge`] wires, starts and stops the parts; [`reload`] watches
//! the config and applies a new version; [`metrics`] counts; `admin` serves the
//! counters and health over HTTP; `broker` embeds an MQTT broker; `tls` builds
//! TLS client settings; [`topic`] matches filters and renders templates;
//! [`message`] holds the types that travel between stages; [`shutdown`] has
//! the phases of stopping; [`tools`] are the
//! plugin author's commands; [`cli`] and `demo` are the command line.
//!
//! The modules a program embedding fxbridge (or its tests) needs are public;
//! the stages in between are private. The entry points:
//! [`run`] (what `fxbridge run` does: run from a file, reloading it on change),
//! and [`Bridge`] (start and stop a bridge from a [`Config`]).

mod ack;
mod admin;
pub mod bridge;
mod broker;
pub mod cli;
pub mod config;
mod deadletter;
mod demo;
pub mod gateway;
pub mod journal;
pub mod message;
pub mod metrics;
pub mod mqtt;
mod pipeline;
pub mod proto;
pub mod reload;
mod router;
pub mod shutdown;
pub mod status;
pub mod telemetry;
mod tls;
pub mod tools;
pub mod topic;
pub mod transform;

pub use bridge::Bridge;
pub use config::Config;
pub use metrics::Metrics;
pub use reload::run;
