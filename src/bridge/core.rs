//! The core: what one set of connection settings needs (the publisher, one
//! subscriber per session, the gateway channel, the router and its route
//! workers). [`Core::prepare`] builds everything that can fail without
//! starting anything; [`Prepared::start`] starts it and cannot fail;
//! [`Core::swap_routes`] applies a route-only reload; [`Core::stop`] stops in
//! order (see the module above for the order and why).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, Route};
use crate::gateway::Gateway;
use crate::journal::replay::{self, ReplaySpec};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::mqtt::inbound::{self, Dispatch, SessionHandle, SessionSpec};
use crate::mqtt::outbound::PublisherTask;
use crate::mqtt::state_file::StateFile;
use crate::mqtt::{Endpoint, Subscription};
use crate::pipeline::{RouteCtx, Services};
use crate::router::{Plan, Router, Table, TableBuilder};
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

/// Publishes that may wait in the publisher's queue to rumqttc.
const PUBLISH_QUEUE: usize = 1024;

/// What a route swap changed, by route name and filter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub subscribed: Vec<String>,
    pub unsubscribed: Vec<String>,
    pub sessions_started: Vec<String>,
    pub sessions_retired: Vec<String>,
}

/// A core's settings, built and checked; starting it cannot fail.
pub(crate) struct Prepared {
    config: Config,
    publisher: Endpoint,
    /// The subscriber settings; each session uses them under its client id.
    subscriber: Endpoint,
    gateway: Gateway,
    telemetry: Telemetry,
}

/// The connections, the gateway channel, the router and the route workers of
/// one set of connection settings.
pub(crate) struct Core {
    router: Arc<Router>,
    builder: TableBuilder,
    services: Arc<Services>,
    config: Config,
    subscriber: Endpoint,
    record: Arc<StateFile>,
    metrics: Arc<Metrics>,
    sessions: BTreeMap<String, SessionHandle>,
    /// Sessions whose routes are gone, unsubscribing and draining.
    retiring: Vec<SessionHandle>,
    outbound: JoinHandle<()>,
    /// The journal (`buffer: {kind: disk}`) and its replay tasks, one per
    /// session (and one for the sessions only the journal still has).
    journal: Option<Journal>,
    replays: Vec<JoinHandle<()>>,
}

impl Core {
    /// Builds everything a core needs that can fail (TLS settings, URLs, the
    /// gateway channel) without connecting or starting anything.
    pub(crate) fn prepare(config: Config, metrics: &Metrics) -> Result<Prepared> {
        let publisher = Endpoint::publisher(&config).context("MQTT settings")?;
        let subscriber =
            Endpoint::subscriber(&config, &config.mqtt.client_id, config.mqtt.max_pending)
                .context("MQTT settings")?;
        let gateway = Gateway::with_metrics(&config.gateway, &config.base_dir, metrics.gateway())
            .context("gateway settings")?;
        let telemetry = Telemetry::new(&config.telemetry).context("telemetry settings")?;
        Ok(Prepared {
            config,
            publisher,
            subscriber,
            gateway,
            telemetry,
        })
    }

    /// The configuration this core runs.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// A new configuration that differs from the running one in its routes
    /// only (after [`Core::swap_routes`]).
    pub(crate) fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// The running context of route `route`, if it is unchanged (same settings,
    /// same plugin bytes, as `digest` says) and may be kept by a reload.
    pub(crate) fn reusable(&self, route: &Route, digest: Option<&str>) -> Option<Arc<RouteCtx>> {
        let table = self.router.table();
        let entry = table.get(route.name())?;
        (entry.ctx.route == *route && entry.ctx.plugin_digest.as_deref() == digest)
            .then(|| Arc::clone(&entry.ctx))
    }

    /// Starts the subscriber of session `name`.
    fn spawn_session(
        &self,
        name: &str,
        subscriptions: Vec<Subscription>,
        retire: bool,
    ) -> SessionHandle {
        let client_id = if retire {
            name.to_string()
        } else {
            self.config.session_client_id(name)
        };
        inbound::spawn(
            SessionSpec {
                name: name.to_string(),
                endpoint: self.subscriber.with_client_id(&client_id),
                subscriptions,
                max_pending: self.config.mqtt.max_pending,
                reconnect: self.config.mqtt.reconnect.clone(),
                retire,
                write_timeout: self.config.mqtt.connect_timeout,
                shutdown: self.services.shutdown.child(),
                journal: self.journal.clone(),
            },
            Arc::clone(&self.router) as Arc<dyn Dispatch>,
            Arc::clone(&self.record),
            Arc::clone(&self.metrics),
        )
    }

    /// Starts replaying session `name`'s messages from the journal.
    fn spawn_replay(&mut self, name: &str) {
        if let Some(journal) = &self.journal {
            let spec = ReplaySpec {
                session: name.to_string(),
                journal: journal.clone(),
                max_pending: self.config.mqtt.max_pending,
                shutdown: self.services.shutdown.clone(),
            };
            self.replays.push(replay::spawn(
                spec,
                Arc::clone(&self.router) as Arc<dyn Dispatch>,
            ));
        }
    }

    /// Replays what the journal holds of sessions no route uses any more: no
    /// route takes those messages, so they are dead-lettered as unrouted.
    fn replay_orphans(&mut self) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let serving: Vec<String> = self.sessions.keys().cloned().collect();
        let router = Arc::clone(&self.router) as Arc<dyn Dispatch>;
        let shutdown = self.services.shutdown.clone();
        let max_pending = self.config.mqtt.max_pending;
        self.replays.push(tokio::spawn(async move {
            let sessions = match journal.sessions().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot list the journal's sessions");
                    return;
                }
            };
            let mut orphans = Vec::new();
            for session in sessions.into_iter().filter(|s| !serving.contains(s)) {
                info!(%session, "the journal holds messages of a session no route uses: dead-lettering them as unrouted");
                let spec = ReplaySpec {
                    session,
                    journal: journal.clone(),
                    max_pending,
                    shutdown: shutdown.clone(),
                };
                orphans.push(replay::spawn(spec, Arc::clone(&router)));
            }
            for o in orphans {
                let _ = o.await;
            }
        }));
    }

    /// Closes the retiring session under `client_id`, if one runs: a new
    /// session must not connect beside it under the same client id.
    async fn stop_retiring(&mut self, name: &str) {
        if let Some(i) = self.retiring.iter().position(|h| h.name == name) {
            self.retiring.swap_remove(i).close().await;
        }
        self.retiring.retain(|h| !h.is_finished());
    }

    /// Swaps in `routes` as the new table: unchanged routes (the same `RouteCtx`)
    /// keep their worker; new and changed ones get a worker that starts once the
    /// route's previous worker has finished. Then each session subscribes what
    /// is new and unsubscribes what is gone; a new session starts, and a session
    /// left without routes is retired.
    pub(crate) async fn swap_routes(&mut self, routes: Vec<Arc<RouteCtx>>) -> RouteChanges {
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
        let mut subscribe: BTreeMap<String, Vec<Subscription>> = BTreeMap::new();
        let mut unsubscribe: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (session, subs) in &table.sessions {
            let before = old.sessions.get(session);
            let new: Vec<Subscription> = subs
                .iter()
                .filter(|s| before.is_none_or(|b| !b.contains(s)))
                .cloned()
                .collect();
            let gone: Vec<String> = before
                .into_iter()
                .flatten()
                .filter(|b| !subs.iter().any(|s| s.filter == b.filter))
                .map(|b| b.filter.clone())
                .collect();
            changes
                .subscribed
                .extend(new.iter().map(|s| s.filter.clone()));
            changes.unsubscribed.extend(gone.iter().cloned());
            subscribe.insert(session.clone(), new);
            unsubscribe.insert(session.clone(), gone);
        }
        let added_sessions: Vec<String> = table
            .sessions
            .keys()
            .filter(|s| !self.sessions.contains_key(*s))
            .cloned()
            .collect();
        let removed_sessions: Vec<String> = self
            .sessions
            .keys()
            .filter(|s| !table.sessions.contains_key(*s))
            .cloned()
            .collect();
        drop(old);
        // The new table first, so a message on a new filter finds its route.
        drop(self.router.swap(table));
        for name in &removed_sessions {
            if let Some(handle) = self.sessions.remove(name) {
                handle.retire();
                self.retiring.push(handle);
            }
        }
        for name in &added_sessions {
            let client_id = self.config.session_client_id(name);
            self.stop_retiring(&client_id).await;
            let subs = subscribe.remove(name).unwrap_or_default();
            let handle = self.spawn_session(name, subs, false);
            self.sessions.insert(name.clone(), handle);
            self.spawn_replay(name);
        }
        for (name, handle) in &self.sessions {
            if let Some(subs) = subscribe.remove(name) {
                handle.subscribe(subs);
            }
            if let Some(filters) = unsubscribe.remove(name) {
                handle.unsubscribe(filters);
            }
        }
        changes.sessions_started = added_sessions;
        changes.sessions_retired = removed_sessions;
        changes
    }

    /// Stops: leaves the shared-subscription groups first when `leave_shared`
    /// (the process is going away, `mqtt.leave_shared_on_stop`), then stops
    /// reading, drains until `shutdown.drain_timeout`, and closes.
    pub(crate) async fn stop(mut self, leave_shared: bool) {
        let drain = self.config.shutdown.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        // A replica of a shared-subscription group leaves it first, still
        // processing what the broker delivers meanwhile, so that nothing is
        // queued to its session once it is gone (a scale-down never returns).
        if leave_shared {
            for handle in self.sessions.values() {
                handle.leave_shared();
            }
            let all_left = async {
                for handle in self.sessions.values_mut() {
                    handle.left().await;
                }
            };
            if tokio::time::timeout_at(deadline, all_left).await.is_err() {
                warn!("the shared subscription groups were not left within the drain timeout; stopping anyway");
            }
        }
        info!(drain_timeout = %humantime::format_duration(drain), "stopping: no new messages; finishing the ones in progress");
        // Every subscriber stops handing messages to the router, and says so,
        // before the routes close: nothing is routed against a closing table.
        self.services.shutdown.stop_reading();
        for handle in self.sessions.values_mut().chain(self.retiring.iter_mut()) {
            handle.reading_stopped().await;
        }
        let empty = self.builder.build(Vec::new());
        let mut finished = self.router.close(empty);
        let all_done = async {
            for f in &mut finished {
                let _ = f.wait_for(|done| *done).await;
            }
        };
        if tokio::time::timeout_at(deadline, all_done).await.is_err() {
            warn!("drain deadline passed; unfinished messages stay unacknowledged for redelivery");
            self.services.shutdown.pass_deadline();
            let grace = async {
                for f in &mut finished {
                    let _ = f.wait_for(|done| *done).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), grace).await;
        }
        // Sessions send their last acknowledgements and DISCONNECT; the
        // publisher has nothing left to publish.
        self.services.shutdown.close();
        for handle in std::mem::take(&mut self.sessions)
            .into_values()
            .chain(std::mem::take(&mut self.retiring))
        {
            handle.closed().await;
        }
        for replay in std::mem::take(&mut self.replays) {
            let _ = replay.await;
        }
        let _ = self.outbound.await;
        // The spans of the last messages go out before the core is gone.
        let services = Arc::clone(&self.services);
        let _ = tokio::task::spawn_blocking(move || services.telemetry.shutdown()).await;
    }
}

impl Prepared {
    /// Connects and starts a worker per route and a subscriber per session.
    /// An unreachable broker or gateway is retried in the background.
    pub(crate) fn start(
        self,
        metrics: &Arc<Metrics>,
        routes: Vec<Arc<RouteCtx>>,
        journal: Option<Journal>,
    ) -> Core {
        let Prepared {
            config,
            publisher,
            subscriber,
            gateway,
            telemetry,
        } = self;
        let (outbound, publisher) = PublisherTask::new(
            publisher,
            config.mqtt.max_packet_size.as_usize(),
            config.mqtt.max_qos,
            PUBLISH_QUEUE,
            config.mqtt.reconnect.clone(),
        );
        let shutdown = Shutdown::new();
        let outbound = tokio::spawn(outbound.run(shutdown.close_token()));

        let services = Arc::new(Services {
            gateway,
            publisher,
            metrics: Arc::clone(metrics),
            shutdown,
            max_payload: config.mqtt.max_packet_size.as_usize(),
            default_timeout: config.gateway.timeout,
            protocol: config.mqtt.protocol,
            unrouted_dead_letter: config.unrouted_dead_letter.clone(),
            telemetry,
        });
        let mut builder = TableBuilder::new(Arc::clone(&services), config.mqtt.protocol);
        let plans = routes
            .into_iter()
            .map(|ctx| Plan::Start { ctx, after: None })
            .collect();
        let table: Table = builder.build(plans);
        let wanted = table.sessions.clone();
        let router = Arc::new(Router::new(table, Arc::clone(&services)));
        // Without persistent sessions the broker keeps nothing between
        // connections: there is nothing to record or to clean up later.
        let persistent = config.mqtt.persistent_session;
        let record = Arc::new(StateFile::open(
            config.state_dir.as_deref().filter(|_| persistent),
            &config.mqtt.client_id,
            &config.mqtt_url,
        ));
        if persistent && config.state_dir.is_none() {
            warn!("no state directory (set state_dir): filters removed while fxbridge is down stay subscribed");
        }
        let mut core = Core {
            router,
            builder,
            services,
            config,
            subscriber,
            record,
            metrics: Arc::clone(metrics),
            sessions: BTreeMap::new(),
            retiring: Vec::new(),
            outbound,
            journal,
            replays: Vec::new(),
        };
        for (name, subs) in wanted {
            let handle = core.spawn_session(&name, subs, false);
            core.sessions.insert(name.clone(), handle);
            core.spawn_replay(&name);
        }
        core.replay_orphans();
        // Sessions an earlier run recorded that no route uses any more.
        let serving: Vec<String> = core
            .sessions
            .keys()
            .map(|s| core.config.session_client_id(s))
            .collect();
        for client_id in core.record.sessions().into_keys() {
            if !serving.contains(&client_id) {
                info!(%client_id, "an earlier configuration left this session at the broker: retiring it");
                let handle = core.spawn_session(&client_id, Vec::new(), true);
                core.retiring.push(handle);
            }
        }
        info!(
            routes = core.config.routes.len(),
            sessions = core.sessions.len(),
            broker = %core.config.mqtt_url,
            gateway = %core.config.gateway.url,
            protocol = %core.config.mqtt.protocol,
            "fxbridge started"
        );
        core
    }
}
