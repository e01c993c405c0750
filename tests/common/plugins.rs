//! Plugins for the tests: the built components in `plugins/dist` (never
//! mocked), one shared plugin host per test binary, and messages to call them
//! with.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fxbridge::config::{ByteSize, PluginsConfig, TransformLimits};
use fxbridge::message::QoS;
use fxbridge::transform::{HookMessage, PluginHost, RouteTransform};

use super::dist;

/// A compile cache shared by the tests of one build (under target/).
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// One host for the tests of a binary (the engine and its pool are process-wide).
pub fn host() -> Arc<PluginHost> {
    static HOST: OnceLock<Arc<PluginHost>> = OnceLock::new();
    Arc::clone(HOST.get_or_init(|| {
        let cfg = PluginsConfig {
            cache_dir: Some(shared_cache_dir()),
            ..PluginsConfig::default()
        };
        PluginHost::new(&cfg).expect("plugin host")
    }))
}

pub fn limits(timeout_ms: u64, memory_mib: u64) -> TransformLimits {
    TransformLimits {
        timeout: Duration::from_millis(timeout_ms),
        memory: ByteSize::mib(memory_mib),
        fuel: None,
        ..TransformLimits::default()
    }
}

/// A route's transform for the named plugin with `config_json`.
pub fn transform(name: &str, config_json: &str, limits: &TransformLimits) -> Arc<RouteTransform> {
    let host = host();
    let plugin = host.load(&dist(name)).expect("load plugin");
    RouteTransform::new(&host, plugin, "test-route", config_json.to_string(), limits)
}

/// An owned message to build [`HookMessage`]s from.
pub struct Msg {
    pub topic: String,
    pub captures: Vec<String>,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn new(topic: &str, payload: impl AsRef<[u8]>) -> Msg {
        Msg {
            topic: topic.to_string(),
            captures: Vec::new(),
            payload: payload.as_ref().to_vec(),
        }
    }
    pub fn with_captures(mut self, captures: &[&str]) -> Msg {
        self.captures = captures.iter().map(|c| c.to_string()).collect();
        self
    }
    pub fn hook(&self) -> HookMessage<'_> {
        HookMessage {
            route: "test-route",
            function: "echo",
            topic: &self.topic,
            captures: &self.captures,
            payload: &self.payload,
            qos: QoS::AtLeastOnce,
            retain: false,
            user_properties: &[],
            content_type: None,
            utf8: false,
            response_topic: None,
            correlation_data: None,
        }
    }
}
