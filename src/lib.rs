//! fxbridge: routes MQTT messages to OpenFx functions and republishes their results.
//!
//! # Layout
//! A message's path reads in module order:
//! - [`config`]: `bridge.yaml`, typed and validated before anything connects.
//! - [`topic`]: topic filters, wildcard captures and topic templates.
//! - [`message`]: the types that travel between the stages.
pub mod config;
pub mod message;
pub mod proto;
pub mod topic;
