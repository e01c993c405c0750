//! WebAssembly transforms (placeholder seam).
//!
//! The wasmtime host lands separately; until then this module declares the
//! interface the pipeline calls, and no route can be configured with a transform
//! that loads (`RouteTransform::load` always fails with a clear message).

use std::sync::Arc;

use crate::message::{OutMessage, PreDecision, QoS};

/// What a hook sees of a message.
#[derive(Debug, Clone, Copy)]
pub struct HookMessage<'a> {
    pub route: &'a str,
    pub function: &'a str,
    pub topic: &'a str,
    pub captures: &'a [String],
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub user_properties: &'a [(String, String)],
    pub content_type: Option<&'a str>,
}

/// A hook call that failed.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("plugin error: {0}")]
    Guest(String),
}

impl TransformError {
    pub fn kind(&self) -> &'static str {
        "guest-error"
    }
}

/// The process's WebAssembly engine (placeholder).
pub struct PluginHost {
    _private: (),
}

impl PluginHost {
    pub fn new(_cfg: &crate::config::PluginsConfig) -> anyhow::Result<Arc<PluginHost>> {
        Ok(Arc::new(PluginHost { _private: () }))
    }
}

/// One route's transform.
pub struct RouteTransform {
    _private: (),
}

impl RouteTransform {
    pub async fn for_route(
        _host: &Arc<PluginHost>,
        _route: &crate::config::Route,
    ) -> anyhow::Result<Arc<RouteTransform>> {
        anyhow::bail!("WebAssembly transforms are not available in this build yet")
    }
    pub fn has_before(&self) -> bool {
        false
    }
    pub fn has_after(&self) -> bool {
        false
    }
    pub async fn before_invoke(
        &self,
        _msg: &HookMessage<'_>,
    ) -> Result<PreDecision, TransformError> {
        Err(TransformError::Guest("not available".into()))
    }
    pub async fn after_invoke(
        &self,
        _msg: &HookMessage<'_>,
        _reply: &str,
    ) -> Result<Vec<OutMessage>, TransformError> {
        Err(TransformError::Guest("not available".into()))
    }
}
