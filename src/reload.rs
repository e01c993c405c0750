//! Hot reload of `bridge.yaml` and the plugin files it references.
//!
//! A reload is triggered by SIGHUP or by a change in the directory of the config
//! file or of a plugin. Directories, not files, are watched, so an editor's
//! write-and-rename and a Kubernetes ConfigMap's `..data` symlink swap are both
//! seen. Events are debounced (quiet for [`QUIET`], at most [`MAX_WAIT`]), then
//! the content is fingerprinted (the config text plus the sha256 of every plugin
//! it names): a burst of events that ends in the same content as the last
//! attempt causes no reload, and one that changes it causes exactly one.
//!
//! The new version is built completely before anything changes: parsed and
//! validated, every new or changed route's plugin compiled, instantiated and
//! configured. Any failure keeps the running version, logs the whole error and
//! counts it (`fxbridge_reload_failures_total`, `/reload` on the admin endpoint).
//!
//! What a valid new version changes:
//! - routes only: the routing table is swapped atomically. Unchanged routes
//!   (same settings, same plugin bytes) keep their worker and plugin instances;
//!   a changed route's new worker starts after the old one has finished its
//!   messages, so every message runs on one version, pre and post hook alike,
//!   and per-topic order holds. Added filters are subscribed, removed ones
//!   unsubscribed, unchanged ones left alone.
//! - `mqtt`, `gateway`, `shutdown`, `plugins`, `unrouted` or `state_dir`: the
//!   new settings are built first (TLS material read, URLs parsed; a failure
//!   here changes nothing), then the core is drained (in-flight messages finish
//!   and are acknowledged) and restarted with them, which is a clean
//!   reconnect; the persistent sessions keep what arrives meanwhile.
//! - `broker` (the embedded broker) or `admin`: cannot change in a running
//!   process; the reload applies everything else and says, in the log and in
//!   the reload status, that these need a restart.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use notify::{EventKind, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::bridge::{file_digest, load_routes, Bridge, Core, Plugins, ReloadPlan};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::RouteCtx;

/// A burst of file events ends after this long without another.
pub const QUIET: Duration = Duration::from_millis(250);
/// A reload starts at the latest this long after the first event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Watches the directories of the config file and the plugins.
pub struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    dirs: BTreeSet<PathBuf>,
}

impl FileWatcher {
    pub fn new() -> Result<FileWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                // Reading a file (ours included) is not a change.
                Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = tx.send(());
                }
                Err(e) => warn!(error = %e, "file watcher error"),
            }
        })
        .context("cannot start the file watcher")?;
        Ok(FileWatcher {
            watcher,
            events,
            dirs: BTreeSet::new(),
        })
    }

    /// Watches the directories holding `files` (and stops watching others).
    pub fn watch<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let wanted: BTreeSet<PathBuf> = files
            .into_iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        for gone in self.dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there need SIGHUP");
            }
        }
        self.dirs = wanted;
    }

    /// Completes at the end of the next burst of changes.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            return std::future::pending().await;
        }
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(QUIET, self.events.recv()).await {
                Ok(Some(())) => continue,
                _ => break,
            }
        }
    }
}

/// The files a config depends on: itself and every plugin it names.
fn watched_files(path: &Path, config: Option<&Config>) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Some(c) = config {
        files.extend(c.routes.iter().filter_map(|r| r.component_path.clone()));
    }
    files
}

/// What the config file and its plugins contain at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// One hash over the config text and every plugin's path and sha256.
    pub hash: String,
    /// sha256 (hex) of each plugin file the config names, read once.
    pub plugins: HashMap<PathBuf, String>,
}

/// Reads the config file and hashes every plugin it names, once.
pub fn fingerprint(path: &Path) -> Fingerprint {
    let mut h = Sha256::new();
    let mut plugins = HashMap::new();
    match std::fs::read(path) {
        Ok(bytes) => {
            h.update(&bytes);
            let base = path.parent().unwrap_or(Path::new("."));
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(cfg) = Config::parse(&text, &path.display().to_string(), base) {
                for p in cfg.routes.iter().filter_map(|r| r.component_path.as_ref()) {
                    let digest = file_digest(p).unwrap_or_default();
                    h.update(p.to_string_lossy().as_bytes());
                    h.update(digest.as_bytes());
                    plugins.insert(p.clone(), digest);
                }
            }
        }
        Err(e) => h.update(format!("unreadable: {}", e.kind()).as_bytes()),
    }
    Fingerprint {
        hash: format!("{:x}", h.finalize()),
        plugins,
    }
}

/// Loads every plugin a validated `config` needs, exactly as a reload would,
/// without touching a running bridge: the second half of `fxbridge check`.
pub async fn check_plugins(config: &Config) -> Result<()> {
    load_routes(
        config,
        &Metrics::new(),
        &Plugins::new(&config.plugins),
        |_| None,
    )
    .await?;
    Ok(())
}

/// Applies `path` to the running `bridge`. On error nothing has changed.
/// Returns a summary of what changed.
pub async fn reload(bridge: &mut Bridge, path: &Path) -> Result<String> {
    let p = path.to_path_buf();
    let now = tokio::task::spawn_blocking(move || fingerprint(&p))
        .await
        .context("fingerprint task failed")?;
    reload_with(bridge, path, &now.plugins).await
}

/// [`reload`], with the plugin digests already read (`fingerprint`).
async fn reload_with(
    bridge: &mut Bridge,
    path: &Path,
    digests: &HashMap<PathBuf, String>,
) -> Result<String> {
    let new = Config::load(path).map_err(|e| anyhow!("{e}"))?;
    let plan = plan(bridge, new, digests).await?;
    Ok(bridge.apply(plan).await)
}

/// What `new` changes in the running `bridge`, with everything it needs built
/// and checked: new and changed routes loaded (plugins compiled, instantiated,
/// configured), unchanged ones reused, and, when connection settings changed,
/// the new core's settings prepared. Nothing running is touched; an error
/// here leaves the bridge as it was.
pub async fn plan(
    bridge: &Bridge,
    new: Config,
    digests: &HashMap<PathBuf, String>,
) -> Result<ReloadPlan> {
    let old = bridge
        .config()
        .ok_or_else(|| anyhow!("the bridge is stopping"))?;
    let mut needs_restart = Vec::new();
    if new.broker != old.broker {
        needs_restart.push("broker");
    }
    if new.admin != old.admin || new.admin_token != old.admin_token {
        needs_restart.push("admin");
    }
    if new.buffer != old.buffer || new.journal_path != old.journal_path {
        needs_restart.push("buffer");
    }
    let new_host = new.plugins != old.plugins;
    let reconnect = new_host
        || new.mqtt != old.mqtt
        || new.mqtt_url != old.mqtt_url
        || new.credentials != old.credentials
        || new.gateway != old.gateway
        || new.telemetry != old.telemetry
        || new.shutdown != old.shutdown
        || new.unrouted_dead_letter != old.unrouted_dead_letter
        || new.state_dir != old.state_dir
        || new.base_dir != old.base_dir;

    let plugins = if new_host {
        Plugins::new(&new.plugins)
    } else {
        bridge.plugins()
    };
    // Build every new or changed route; reuse the unchanged ones as they run.
    let reusable = |route: &crate::config::Route| -> Option<Arc<RouteCtx>> {
        if new_host {
            return None;
        }
        let digest = match &route.component_path {
            Some(p) => Some(digests.get(p)?.as_str()),
            None => None,
        };
        bridge.reusable(route, digest)
    };
    let routes = load_routes(&new, &bridge.metrics, &plugins, reusable).await?;
    let reconnect = if reconnect {
        Some(
            Core::prepare(new.clone(), &bridge.metrics)
                .context("the new connection settings cannot be used")?,
        )
    } else {
        None
    };
    Ok(ReloadPlan {
        config: new,
        routes,
        reconnect,
        plugins: new_host.then_some(plugins),
        needs_restart,
    })
}

/// Runs the bridge from the config file at `path`, reloading it on change or
/// SIGHUP, until `shutdown` completes; then drains and stops.
pub async fn run(path: PathBuf, shutdown: impl Future<Output = ()>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(&path).map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
    let mut last = fingerprint(&path).hash;
    let mut watcher = FileWatcher::new()?;
    watcher.watch(
        watched_files(&path, Some(&config))
            .iter()
            .map(PathBuf::as_path),
    );
    let mut bridge = Bridge::start(config, Metrics::new()).await?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::pin!(shutdown);
    loop {
        let forced = tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => true,
            () = watcher.changed() => false,
        };
        let p = path.clone();
        let now = tokio::task::spawn_blocking(move || fingerprint(&p))
            .await
            .context("fingerprint task failed")?;
        if !forced && now.hash == last {
            debug!("files touched, content unchanged: nothing to reload");
            continue;
        }
        last = now.hash;
        info!(trigger = if forced { "SIGHUP" } else { "file change" }, config = %path.display(), "reloading");
        match reload_with(&mut bridge, &path, &now.plugins).await {
            Ok(summary) => {
                info!(%summary, "reload applied");
                bridge.metrics.reload(Ok(summary));
            }
            Err(e) => {
                let text = format!("{e:#}");
                error!(error = %text, "reload rejected; the running version stays");
                bridge.metrics.reload(Err(text));
            }
        }
        let files = watched_files(&path, bridge.config());
        watcher.watch(files.iter().map(PathBuf::as_path));
    }
    bridge.stop().await
}
