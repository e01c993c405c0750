//! Wiring: builds every part from a [`Config`], runs them, and stops them in order.
//!
//! Start: embedded broker (if configured) -> publisher connection -> gateway
//! channel -> plugins -> route workers -> subscriber connection (which subscribes
//! once connected). Stop (SIGTERM/SIGINT or the caller's shutdown future): stop
//! reading; let in-flight messages finish and be acknowledged, for up to
//! `shutdown.drain_timeout`; cancel what is left (it stays unacknowledged, so the
//! broker redelivers it); send the last acks and DISCONNECT, keeping the session.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Route};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::mqtt::inbound::{SubscriberTask, Subscriptions};
use crate::mqtt::outbound::PublisherTask;
use crate::mqtt::{self, Role};
use crate::pipeline::{RouteCtx, Services};
use crate::router::{Router, TableBuilder};
use crate::transform::{PluginHost, RouteTransform};

/// Requests that may wait in rumqttc's channel; acks never exceed `max_pending`.
fn channel_capacity(cfg: &Config) -> usize {
    cfg.mqtt.max_pending + 1024
}

/// A running bridge.
pub struct Bridge {
    pub metrics: Arc<Metrics>,
    router: Arc<Router>,
    #[allow(dead_code)]
    subscriptions: Subscriptions,
    #[allow(dead_code)]
    builder: TableBuilder,
    services: Arc<Services>,
    config: Config,
    close_inbound: CancellationToken,
    close_outbound: CancellationToken,
    inbound: JoinHandle<()>,
    outbound: JoinHandle<()>,
    admin: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Loads the plugin of `route` (if any), configures its first instance, and
/// assembles the route's context.
async fn route_ctx(
    route: &Route,
    metrics: &Metrics,
    plugins: Option<&Arc<PluginHost>>,
) -> Result<Arc<RouteCtx>> {
    let route_metrics = metrics.route(route.name());
    let transform = match (&route.component_path, plugins) {
        (Some(_), Some(host)) => Some(
            RouteTransform::for_route_with_counters(host, route, Arc::clone(&route_metrics.plugin))
                .await
                .with_context(|| format!("route {}", route.name()))?,
        ),
        (Some(_), None) => anyhow::bail!("route {}: no plugin host", route.name()),
        (None, _) => None,
    };
    Ok(Arc::new(RouteCtx {
        route: route.clone(),
        transform,
        metrics: route_metrics,
    }))
}

impl Bridge {
    /// Starts every part. Fails only on what cannot work at all (a plugin that
    /// does not load, an embedded broker that cannot listen); an unreachable
    /// broker or gateway is retried in the background.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> Result<Bridge> {
        // rumqttc is built without a default TLS provider; tonic uses ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
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
            gateway: Gateway::new(&config.gateway, &config.base_dir)?,
            publisher,
            metrics: Arc::clone(&metrics),
            stopping: CancellationToken::new(),
            cancel: CancellationToken::new(),
            max_payload: config.mqtt.max_packet_size.as_usize(),
            default_timeout: config.gateway.timeout,
            protocol: config.mqtt.protocol,
        });
        // One engine for every plugin of the process, made only when a route has one.
        let plugins = if config.routes.iter().any(|r| r.component_path.is_some()) {
            Some(PluginHost::new(&config.plugins).context("starting the WebAssembly host")?)
        } else {
            None
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            routes.push(route_ctx(r, &metrics, plugins.as_ref()).await?);
        }
        let mut builder = TableBuilder::new(Arc::clone(&services), config.mqtt.protocol);
        let table = builder.build(routes, |_| None, |_| None);
        let subs = table.subscriptions.clone();
        let router = Arc::new(Router::new(table, Arc::clone(&metrics)));

        let (sub_client, sub_conn) = mqtt::connect(&config, Role::Subscriber, capacity)?;
        let (inbound, subscriptions) = SubscriberTask::new(
            sub_client,
            sub_conn,
            Arc::clone(&router) as Arc<dyn crate::mqtt::inbound::Dispatch>,
            subs,
            config.mqtt.max_pending,
            config.mqtt.reconnect.clone(),
            Arc::clone(&metrics),
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
        Ok(Bridge {
            metrics,
            router,
            subscriptions,
            builder,
            services,
            config,
            close_inbound,
            close_outbound,
            inbound,
            outbound,
            admin,
        })
    }

    /// Stops reading, drains, and disconnects. Returns how many messages were
    /// left unacknowledged because the drain deadline passed.
    pub async fn stop(self) -> Result<()> {
        let started = Instant::now();
        let drain = self.config.shutdown.drain_timeout;
        info!(drain_timeout = %humantime::format_duration(drain), "stopping: no new messages; finishing the ones in progress");
        self.services.stopping.cancel();
        // Swapping in an empty table closes every worker's queue; workers finish
        // what they hold and then report done.
        let mut builder = TableBuilder::new(Arc::clone(&self.services), self.config.mqtt.protocol);
        let old = self
            .router
            .swap(builder.build(Vec::new(), |_| None, |_| None));
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
        if let Some((stop, task)) = self.admin {
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
