//! Loading routes: the process's WebAssembly engine ([`Plugins`], started on
//! first use) and each route's context ([`RouteCtx`]: its settings, its
//! plugin compiled, instantiated and configured), built off the hot path so a
//! reload can fail here without touching what runs.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::config::{Config, PluginsConfig, Route};
use crate::metrics::Metrics;
use crate::pipeline::RouteCtx;
use crate::transform::{PluginHost, RouteTransform};

/// sha256 of a file, hex.
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The WebAssembly engine of the process, created when a route first needs
/// one (a bridge without plugins never pays for it).
pub struct Plugins {
    config: PluginsConfig,
    host: OnceLock<Arc<PluginHost>>,
}

impl Plugins {
    pub fn new(config: &PluginsConfig) -> Arc<Plugins> {
        Arc::new(Plugins {
            config: config.clone(),
            host: OnceLock::new(),
        })
    }

    /// The engine, started on first use.
    pub fn host(&self) -> Result<Arc<PluginHost>> {
        if let Some(h) = self.host.get() {
            return Ok(Arc::clone(h));
        }
        let h = PluginHost::new(&self.config).context("cannot start the WebAssembly host")?;
        Ok(Arc::clone(self.host.get_or_init(|| h)))
    }
}

/// Loads the plugin of `route` (if any), configures its first instance, and
/// assembles the route's context.
pub async fn route_ctx(
    route: &Route,
    metrics: &Metrics,
    plugins: &Plugins,
) -> Result<Arc<RouteCtx>> {
    let route_metrics = metrics.route(route.name());
    let (transform, plugin_digest) = match &route.component_path {
        // The plugin hashes the bytes it compiled: no second read of the file.
        Some(_) => {
            let t = RouteTransform::for_route_with_counters(
                &plugins.host()?,
                route,
                Arc::clone(&route_metrics.plugin),
            )
            .await?;
            let digest = t.plugin().sha256_hex();
            (Some(t), Some(digest))
        }
        None => (None, None),
    };
    Ok(Arc::new(RouteCtx {
        route: route.clone(),
        transform,
        plugin_digest,
        metrics: route_metrics,
    }))
}

/// Loads every route of `config` with its plugin, off the hot path, reporting
/// every route that fails (not just the first). `reuse` may supply a route's
/// context from a running version, in which case nothing is loaded for it.
pub async fn load_routes(
    config: &Config,
    metrics: &Metrics,
    plugins: &Plugins,
    mut reuse: impl FnMut(&Route) -> Option<Arc<RouteCtx>>,
) -> Result<Vec<Arc<RouteCtx>>> {
    let mut out = Vec::with_capacity(config.routes.len());
    let mut problems = Vec::new();
    for route in &config.routes {
        if let Some(ctx) = reuse(route) {
            out.push(ctx);
            continue;
        }
        match route_ctx(route, metrics, plugins).await {
            Ok(ctx) => out.push(ctx),
            Err(e) => problems.push(format!("route {}: {e:#}", route.name())),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        anyhow::bail!("{}", problems.join("\n"))
    }
}
