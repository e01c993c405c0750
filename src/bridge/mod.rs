//! Wiring: builds every part from a [`Config`], runs them, swaps routes on a
//! reload, and stops them in order.
//!
//! Two layers. The process layer ([`Bridge`]) owns what lives as long as the
//! process: the metrics, the admin endpoint, the embedded broker and the
//! WebAssembly engine. The core ([`Core`]) owns what one connection setting
//! needs: the publisher, one subscriber per session, the gateway channel, the
//! router and its route workers. A reload that changes only routes swaps the
//! routing table inside the running core ([`Core::swap_routes`]); one that
//! changes the connection settings (`mqtt`, `gateway`, `shutdown`, `plugins`,
//! `unrouted`, `state_dir`) builds the new core's settings first
//! ([`Core::prepare`], which can fail and changes nothing), then drains the old
//! core and starts the new one ([`Prepared::start`], which cannot fail).
//!
//! Start: embedded broker (if configured) -> publisher connection -> gateway
//! channel -> plugins -> route workers -> one subscriber per session (each
//! subscribes once connected), and a retiring subscriber for every session an
//! earlier run left at the broker. Stop (SIGTERM/SIGINT, the caller's shutdown
//! future, or a reconnecting reload): every subscriber stops handing messages
//! to the router and says so; only then are the routes closed, so no message
//! is routed against a table being torn down. In-flight messages finish and
//! are acknowledged, for up to `shutdown.drain_timeout`; what is left is
//! cancelled (it stays unacknowledged, so the broker redelivers it); the
//! subscribers send their last acks and DISCONNECT, keeping their sessions.

mod core;
mod load;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::journal::{GroupCommit, Journal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::core::RouteChanges;
pub(crate) use self::core::{Core, Prepared};
pub use self::load::{file_digest, load_routes, route_ctx, Plugins};
use crate::config::{Config, Route};
use crate::metrics::Metrics;
use crate::pipeline::RouteCtx;
use crate::status::LiveRoute;

/// A new configuration, built and checked ([`crate::reload::plan`]), ready to
/// replace the running one with [`Bridge::apply`].
pub struct ReloadPlan {
    pub(crate) config: Config,
    /// Every route of the new version: new and changed ones loaded, unchanged
    /// ones the running contexts.
    pub(crate) routes: Vec<Arc<RouteCtx>>,
    /// The new core's settings, when connection settings changed.
    pub(crate) reconnect: Option<Prepared>,
    /// A new WebAssembly host, when `plugins` changed.
    pub(crate) plugins: Option<Arc<Plugins>>,
    /// Settings that changed but apply only at the next start.
    pub(crate) needs_restart: Vec<&'static str>,
}

/// A running bridge.
pub struct Bridge {
    pub metrics: Arc<Metrics>,
    plugins: Arc<Plugins>,
    core: Option<Core>,
    admin: Option<(CancellationToken, JoinHandle<()>)>,
    /// `buffer: {kind: disk}`: lives as long as the process, across reloads.
    journal: Option<Journal>,
}

/// Opens the journal at `path` and starts its thread, reporting what it found.
fn open_journal(
    path: &std::path::Path,
    max_size: u64,
    when_full: crate::config::WhenFull,
    metrics: &Metrics,
) -> Result<Journal> {
    let (store, opened) = crate::journal::Store::open(path, max_size)
        .map_err(|e| anyhow::anyhow!("cannot open the journal {}: {e}", path.display()))?;
    if let Some((aside, why)) = &opened.damaged {
        tracing::error!(journal = %path.display(), moved_to = %aside.display(), reason = %why, "the journal was damaged: moved aside, starting a new one (its messages are not processed)");
    }
    if let Some(bytes) = opened.torn_wal_bytes {
        warn!(journal = %path.display(), bytes, "the journal ended in a torn write (a crash during a commit that was never acknowledged): skipped");
    }
    info!(journal = %path.display(), messages = opened.entries, took = ?opened.took, "journal opened; messages left from before are processed first");
    let journal = Journal::start(store, GroupCommit::default(), when_full)
        .context("cannot start the journal's thread")?;
    metrics.set_journal(journal.clone());
    Ok(journal)
}

impl Bridge {
    /// Starts every part. Fails only on what cannot work at all (a plugin that
    /// does not load, an embedded broker or admin endpoint that cannot listen,
    /// unusable TLS material); an unreachable broker or gateway is retried in
    /// the background.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> Result<Bridge> {
        // rumqttc is built without a default TLS provider; tonic uses ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plugins = Plugins::new(&config.plugins);
        let routes = load_routes(&config, &metrics, &plugins, |_| None).await?;
        metrics.set_live_routes(routes.iter().map(|r| LiveRoute::of(r)).collect());
        let journal = match &config.journal_path {
            Some(path) => Some(open_journal(
                path,
                config.buffer.max_size.0,
                config.buffer.when_full,
                &metrics,
            )?),
            None => None,
        };
        let prepared = Core::prepare(config.clone(), &metrics)?;
        let admin = match &config.admin {
            Some(a) => {
                let stop = CancellationToken::new();
                let task = crate::admin::serve(
                    a,
                    config.admin_token.as_deref(),
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
        let core = prepared.start(&metrics, routes, journal.clone());
        Ok(Bridge {
            metrics,
            plugins,
            core: Some(core),
            admin,
            journal,
        })
    }

    /// The configuration running now.
    pub fn config(&self) -> Option<&Config> {
        self.core.as_ref().map(Core::config)
    }

    /// The WebAssembly host of the running version.
    pub(crate) fn plugins(&self) -> Arc<Plugins> {
        Arc::clone(&self.plugins)
    }

    /// The running context of `route`, if a new version may keep it as it is.
    pub(crate) fn reusable(&self, route: &Route, digest: Option<&str>) -> Option<Arc<RouteCtx>> {
        self.core.as_ref()?.reusable(route, digest)
    }

    /// Replaces the running version with `plan`: a route swap inside the
    /// running core, or (connection settings changed) a drain of the old core
    /// and a start of the new one. Everything that could fail was done when
    /// the plan was made. Returns a summary for the log and `/reload`.
    pub async fn apply(&mut self, plan: ReloadPlan) -> String {
        let ReloadPlan {
            config,
            routes,
            reconnect,
            plugins,
            needs_restart,
        } = plan;
        let live = routes.iter().map(|r| LiveRoute::of(r)).collect();
        let mut summary = match (reconnect, self.core.as_mut()) {
            (Some(prepared), _) => {
                info!("connection settings changed: draining, then reconnecting with the new ones");
                if let Some(core) = self.core.take() {
                    // The process goes on: it stays in its shared groups.
                    core.stop(false).await;
                }
                self.core = Some(prepared.start(&self.metrics, routes, self.journal.clone()));
                format!(
                    "reconnected with new connection settings; {} routes",
                    config.routes.len()
                )
            }
            (None, Some(core)) => {
                let changes = core.swap_routes(routes).await;
                core.set_config(config);
                format!(
                    "routes added {:?}, changed {:?}, removed {:?}, unchanged {}; subscribed {:?}, unsubscribed {:?}; sessions started {:?}, retired {:?}",
                    changes.added,
                    changes.changed,
                    changes.removed,
                    changes.kept.len(),
                    changes.subscribed,
                    changes.unsubscribed,
                    changes.sessions_started,
                    changes.sessions_retired
                )
            }
            (None, None) => return "not applied: the bridge is stopping".to_string(),
        };
        self.metrics.set_live_routes(live);
        if let Some(plugins) = plugins {
            self.plugins = plugins;
        }
        if !needs_restart.is_empty() {
            let which = needs_restart.join(", ");
            warn!(settings = %which, "these settings changed but apply only when fxbridge restarts");
            summary.push_str(&format!("; needs a restart to apply: {which}"));
        }
        summary
    }

    /// Stops reading, drains, and disconnects.
    pub async fn stop(mut self) -> Result<()> {
        let started = Instant::now();
        if let Some(core) = self.core.take() {
            let leave = core.config().mqtt.leave_shared_on_stop;
            core.stop(leave).await;
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
