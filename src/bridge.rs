//! Wiring: builds every part from a [`Config`], runs them, swaps routes on a
//! reload, and stops them in order.
//!
//! Two layers. The process layer ([`Bridge`]) owns what lives as long as the
//! process: the metrics, the admin endpoint, the embedded broker and the
//! WebAssembly engine. The core ([`Core`]) owns what one connection setting
//! needs: the publisher and subscriber connections, the gateway channel, the
//! router and its route workers. A reload that changes only routes swaps the
//! routing table inside the running core; one that changes the connection
//! settings (`mqtt`, `gateway`, `shutdown`, `plugins`) drains the core and starts
//! a new one (a clean reconnect with the same session).
//!
//! Start: embedded broker (if configured) -> publisher connection -> gateway
//! channel -> plugins -> route workers -> subscriber connection (which subscribes
//! once connected). Stop (SIGTERM/SIGINT or the caller's shutdown future): stop
//! reading; let in-flight messages finish and be acknowledged, for up to
//! `shutdown.drain_timeout`; cancel what is left (it stays unacknowledged, so the
//! broker redelivers it); send the last acks and DISCONNECT, keeping the session.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, PluginsConfig, Route};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::mqtt::inbound::{SubscriberTask, Subscriptions};
use crate::mqtt::outbound::PublisherTask;
use crate::mqtt::{self, Role};
use crate::pipeline::{RouteCtx, Services};
use crate::router::{Plan, Router, TableBuilder};
use crate::transform::{PluginHost, RouteTransform};

/// Requests that may wait in rumqttc's channel; acks never exceed `max_pending`.
fn channel_capacity(cfg: &Config) -> usize {
    cfg.mqtt.max_pending + 1024
}

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
        Some(path) => {
            let digest = file_digest(path)?;
            let t = RouteTransform::for_route_with_counters(
                &plugins.host()?,
                route,
                Arc::clone(&route_metrics.plugin),
            )
            .await?;
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

/// The connections, the gateway channel, the router and the route workers of
/// one set of connection settings.
pub(crate) struct Core {
    pub(crate) router: Arc<Router>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) builder: TableBuilder,
    services: Arc<Services>,
    pub(crate) config: Config,
    close_inbound: CancellationToken,
    close_outbound: CancellationToken,
    inbound: JoinHandle<()>,
    outbound: JoinHandle<()>,
}

impl Core {
    /// Connects and starts a worker per route. An unreachable broker or gateway
    /// is retried in the background.
    pub(crate) fn start(
        config: Config,
        metrics: &Arc<Metrics>,
        routes: Vec<Arc<RouteCtx>>,
    ) -> Result<Core> {
        let capacity = channel_capacity(&config);
        let (pub_client, pub_conn) = mqtt::connect(&config, Role::Publisher, capacity)?;
        let (outbound, publisher) = PublisherTask::new(
            pub_client,
            pub_conn,
            capacity,
            config.mqtt.reconnect.clone(),
        );
        let close_outbound = CancellationToken::new();
        let outbound = tokio::spawn(outbound.run(close_outbound.clone()));

        let services = Arc::new(Services {
            gateway: Gateway::with_metrics(&config.gateway, &config.base_dir, metrics.gateway())?,
            publisher,
            metrics: Arc::clone(metrics),
            stopping: CancellationToken::new(),
            cancel: CancellationToken::new(),
            max_payload: config.mqtt.max_packet_size.as_usize(),
            default_timeout: config.gateway.timeout,
            protocol: config.mqtt.protocol,
        });
        let mut builder = TableBuilder::new(Arc::clone(&services), config.mqtt.protocol);
        let plans = routes
            .into_iter()
            .map(|ctx| Plan::Start { ctx, after: None })
            .collect();
        let table = builder.build(plans);
        let subs = table.subscriptions.clone();
        let router = Arc::new(Router::new(table, Arc::clone(metrics)));

        let (sub_client, sub_conn) = mqtt::connect(&config, Role::Subscriber, capacity)?;
        let (inbound, subscriptions) = SubscriberTask::new(
            sub_client,
            sub_conn,
            Arc::clone(&router) as Arc<dyn crate::mqtt::inbound::Dispatch>,
            subs,
            config.mqtt.max_pending,
            config.mqtt.reconnect.clone(),
            Arc::clone(metrics),
        );
        let close_inbound = CancellationToken::new();
        let inbound = tokio::spawn(inbound.run(services.stopping.clone(), close_inbound.clone()));
        info!(
            routes = config.routes.len(),
            broker = %config.mqtt_url,
            gateway = %config.gateway.url,
            protocol = %config.mqtt.protocol,
            "fxbridge started"
        );
        Ok(Core {
            router,
            subscriptions,
            builder,
            services,
            config,
            close_inbound,
            close_outbound,
            inbound,
            outbound,
        })
    }

    /// Swaps in `routes` as the new table: unchanged routes (the same `RouteCtx`)
    /// keep their worker; new and changed ones get a worker that starts once the
    /// route's previous worker has finished; then subscribes what is new and
    /// unsubscribes what is gone. Returns `(added, changed, removed, kept)` route
    /// counts for the log.
    pub(crate) fn swap_routes(&mut self, routes: Vec<Arc<RouteCtx>>) -> RouteChanges {
        let old = self.router.table();
        let mut changes = RouteChanges::default();
        let plans = routes
            .into_iter()
            .map(|ctx| match old.get(ctx.route.name()) {
                Some(entry) if Arc::ptr_eq(&entry.ctx, &ctx) => {
                    changes.kept.push(ctx.route.name().to_string());
                    Plan::Keep(entry.clone())
                }
                Some(entry) => {
                    changes.changed.push(ctx.route.name().to_string());
                    Plan::Start {
                        after: Some(entry.finished.clone()),
                        ctx,
                    }
                }
                None => {
                    changes.added.push(ctx.route.name().to_string());
                    Plan::Start { ctx, after: None }
                }
            })
            .collect();
        let table = self.builder.build(plans);
        for entry in &old.routes {
            if table.get(entry.ctx.route.name()).is_none() {
                changes.removed.push(entry.ctx.route.name().to_string());
            }
        }
        let subscribe: Vec<_> = table
            .subscriptions
            .iter()
            .filter(|s| !old.subscriptions.contains(s))
            .cloned()
            .collect();
        let unsubscribe: Vec<_> = old
            .subscriptions
            .iter()
            .filter(|s| !table.subscriptions.iter().any(|n| n.filter == s.filter))
            .map(|s| s.filter.clone())
            .collect();
        changes.subscribed = subscribe.iter().map(|s| s.filter.clone()).collect();
        changes.unsubscribed = unsubscribe.clone();
        drop(old);
        // The new table first, so a message on a new filter finds its route.
        drop(self.router.swap(table));
        self.subscriptions.subscribe(subscribe);
        self.subscriptions.unsubscribe(unsubscribe);
        changes
    }

    /// Stops reading, drains, and disconnects.
    pub(crate) async fn stop(mut self) {
        let drain = self.config.shutdown.drain_timeout;
        info!(drain_timeout = %humantime::format_duration(drain), "stopping: no new messages; finishing the ones in progress");
        self.services.stopping.cancel();
        // Swapping in an empty table closes every worker's queue; workers finish
        // what they hold and then report done.
        let old = self.router.swap(self.builder.build(Vec::new()));
        let mut finished: Vec<_> = old.routes.iter().map(|r| r.finished.clone()).collect();
        drop(old);
        let all_done = async {
            for f in &mut finished {
                let _ = f.wait_for(|done| *done).await;
            }
        };
        if tokio::time::timeout(drain, all_done).await.is_err() {
            warn!("drain deadline passed; unfinished messages stay unacknowledged for redelivery");
            self.services.cancel.cancel();
            let grace = async {
                for f in &mut finished {
                    let _ = f.wait_for(|done| *done).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), grace).await;
        }
        self.close_inbound.cancel();
        let _ = self.inbound.await;
        self.close_outbound.cancel();
        let _ = self.outbound.await;
    }
}

/// What a route swap changed, by route name and filter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub subscribed: Vec<String>,
    pub unsubscribed: Vec<String>,
}

/// A running bridge.
pub struct Bridge {
    pub metrics: Arc<Metrics>,
    pub(crate) plugins: Arc<Plugins>,
    pub(crate) core: Option<Core>,
    admin: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Bridge {
    /// Starts every part. Fails only on what cannot work at all (a plugin that
    /// does not load, an embedded broker or admin endpoint that cannot listen);
    /// an unreachable broker or gateway is retried in the background.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> Result<Bridge> {
        // rumqttc is built without a default TLS provider; tonic uses ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plugins = Plugins::new(&config.plugins);
        let routes = load_routes(&config, &metrics, &plugins, |_| None).await?;
        let admin = match &config.admin {
            Some(a) => {
                let stop = CancellationToken::new();
                let task = crate::admin::serve(
                    a.listen,
                    Arc::clone(&metrics),
                    stop.clone().cancelled_owned(),
                )
                .await?;
                Some((stop, task))
            }
            None => None,
        };
        if let Some(b) = &config.broker {
            crate::broker::start(b, config.mqtt.max_packet_size.as_usize()).await?;
        }
        let core = Core::start(config, &metrics, routes)?;
        Ok(Bridge {
            metrics,
            plugins,
            core: Some(core),
            admin,
        })
    }

    /// The configuration running now.
    pub fn config(&self) -> Option<&Config> {
        self.core.as_ref().map(|c| &c.config)
    }

    /// Stops reading, drains, and disconnects.
    pub async fn stop(mut self) -> Result<()> {
        let started = Instant::now();
        if let Some(core) = self.core.take() {
            core.stop().await;
        }
        if let Some((stop, task)) = self.admin.take() {
            stop.cancel();
            let _ = task.await;
        }
        let (received, acked) = self.metrics.totals();
        info!(received, acked, elapsed = ?started.elapsed(), "fxbridge stopped");
        Ok(())
    }
}

/// Runs the bridge until `shutdown` completes, then drains and stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let bridge = Bridge::start(config, Metrics::new()).await?;
    shutdown.await;
    bridge.stop().await
}
