//! Counters of the bridge, kept as atomics and rendered in the Prometheus text
//! format for the admin endpoint (`/metrics`).
//!
//! Bridge-wide counters live in [`Metrics`]; each route has a [`RouteMetrics`]
//! that survives reloads (looked up by route name), so a reload does not reset
//! what a dashboard shows.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub messages: AtomicU64,
    pub invoked: AtomicU64,
    pub invoke_failures: AtomicU64,
    pub retries: AtomicU64,
    pub skipped: AtomicU64,
    pub published: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Messages that did not finish (shutdown past the drain deadline).
    pub abandoned: AtomicU64,
    /// Waiting copies dropped because the broker redelivered the message after
    /// a reconnect (the redelivery is processed instead).
    pub superseded: AtomicU64,
    /// Retained messages skipped (`retained: skip` or `skip-on-resubscribe`).
    pub retained_skipped: AtomicU64,
    /// MQTT 5 messages whose expiry interval ran out before Invoke.
    pub expired: AtomicU64,
    /// Time from dispatch to done, summed, in microseconds.
    pub latency_us_sum: AtomicU64,
    /// Time from dispatch to done (the message may be acknowledged).
    pub latency: Histogram,
    /// One Invoke call (each attempt).
    pub invoke_latency: Histogram,
    /// The plugin's before-invoke and after-invoke hooks.
    pub before_latency: Histogram,
    pub after_latency: Histogram,
    /// Messages in progress on the route now.
    pub in_flight: AtomicU64,
    /// The route's transform plugin (calls, errors by kind, instances).
    pub plugin: Arc<crate::transform::Counters>,
    /// Dead letters by kind and the last few reasons (for `/api/status`).
    dead_letter_log: Mutex<DeadLetterLog>,
}

/// How many dead letters' reasons a route keeps for the status page.
pub const RECENT_DEAD_LETTERS: usize = 5;

/// Dead letters of one route by kind, and the most recent ones.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterLog {
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Newest last, at most [`RECENT_DEAD_LETTERS`].
    pub recent: VecDeque<DeadLetterEvent>,
}

/// One dead letter, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: &'static str,
    pub topic: String,
    pub reason: String,
}

/// The journal's depth and counters (`/metrics`, `/api/status`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct JournalState {
    /// Messages in the journal (received, not finished).
    pub entries: u64,
    /// The database and its WAL on disk.
    pub disk_bytes: u64,
    /// Age of the oldest message in it (0 when empty).
    pub oldest_age_seconds: f64,
    pub appends: u64,
    /// Commits, each one fsync.
    pub commits: u64,
    pub appended_bytes: u64,
    pub removed: u64,
    /// Appends refused because the journal (or the disk) was full.
    pub full: u64,
    /// Messages dropped to make room (`when_full: drop_oldest`).
    pub dropped: u64,
}

/// One reload's outcome, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEvent {
    pub at_ms: u64,
    pub ok: bool,
    pub summary: String,
}

/// How many reloads the status page's history keeps.
pub const RELOAD_HISTORY: usize = 10;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// At most `max` characters of `text`, marked when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Upper bounds of the latency buckets, in microseconds (rendered in seconds):
/// 0.5 ms to 30 s, roughly 1-2.5-5 per decade.
const BUCKETS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A Prometheus histogram of durations with fixed buckets: one atomic add per
/// bucket search, no lock, nothing allocated per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Cumulative counts per bucket (the last is the total count) and the sum
    /// in microseconds.
    pub fn snapshot(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let mut counts = [0u64; BUCKETS_US.len() + 1];
        let mut total = 0;
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *c = total;
        }
        (counts, self.sum_us.load(Relaxed))
    }

    /// The histogram's lines for one label set (`route="a"`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (counts, sum_us) = self.snapshot();
        for (bound, count) in BUCKETS_US.iter().zip(&counts) {
            let _ = writeln!(
                out,
                "fxbridge_{name}_bucket{{{labels},le=\"{}\"}} {count}",
                seconds(*bound)
            );
        }
        let total = counts[BUCKETS_US.len()];
        let _ = writeln!(
            out,
            "fxbridge_{name}_bucket{{{labels},le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(out, "fxbridge_{name}_sum{{{labels}}} {}", seconds(sum_us));
        let _ = writeln!(out, "fxbridge_{name}_count{{{labels}}} {total}");
    }
}

/// Microseconds as seconds, exactly (`0.0005`, `2.5`, `30`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

impl RouteMetrics {
    /// A retained message this route skipped.
    pub fn count_retained_skip(&self) {
        self.retained_skipped.fetch_add(1, Relaxed);
    }

    /// A message of this route whose dead letter the broker accepted: counted,
    /// by kind, and its reason kept among the last few.
    pub fn dead_lettered(&self, kind: &'static str, topic: &str, reason: &str) {
        self.dead_letters.fetch_add(1, Relaxed);
        let mut log = self
            .dead_letter_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *log.by_kind.entry(kind).or_default() += 1;
        if log.recent.len() == RECENT_DEAD_LETTERS {
            log.recent.pop_front();
        }
        log.recent.push_back(DeadLetterEvent {
            at_ms: now_ms(),
            kind,
            topic: clip(topic, 200),
            reason: clip(reason, 500),
        });
    }

    /// Dead letters by kind and the last few.
    pub fn dead_letter_log(&self) -> DeadLetterLog {
        self.dead_letter_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Upper bounds of the latency buckets in microseconds, for estimating
/// quantiles from [`Histogram::snapshot`]s.
pub const LATENCY_BUCKETS_US: &[u64] = &BUCKETS_US;

/// The state of one subscriber session, for readiness and `/metrics`.
#[derive(Debug)]
pub struct SessionStatus {
    connected: AtomicBool,
    ready: AtomicBool,
    /// False for a session that is only being retired: it does not count
    /// towards readiness.
    serving: AtomicBool,
    /// The bridge-wide readiness, recomputed on every change.
    changed: tokio::sync::watch::Sender<()>,
    /// The session's `mqtt.max_pending` permits and their number: messages
    /// received and not finished are the permits taken.
    pending: Mutex<Option<(Arc<tokio::sync::Semaphore>, usize)>>,
}

impl SessionStatus {
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Relaxed);
        if !up {
            self.ready.store(false, Relaxed);
        }
        self.changed.send_replace(());
    }
    /// Connected with every subscription confirmed.
    pub fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Relaxed) != ready {
            self.changed.send_replace(());
        }
    }
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Relaxed);
        self.changed.send_replace(());
    }
    /// The permits of the session's running task.
    pub fn watch_pending(&self, permits: Arc<tokio::sync::Semaphore>, max: usize) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((permits, max));
    }
    /// Messages received and not finished.
    fn pending(&self) -> usize {
        match &*self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((permits, max)) => max.saturating_sub(permits.available_permits()),
            None => 0,
        }
    }
}

/// Counters of the gateway connection; kept here so a reload that builds a new
/// gateway client goes on counting.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// HTTP/2 connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed (refused, timed out, TLS, handshake).
    pub connect_failures: AtomicU64,
    /// HTTP/2 connections open now (one, normally; 0 while the gateway is away).
    pub open: AtomicU64,
}

/// Bridge-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Every subscriber session by name, serving or retiring.
    sessions: Mutex<BTreeMap<String, Arc<SessionStatus>>>,
    /// Signalled when any session's state changes.
    sessions_changed: tokio::sync::watch::Sender<()>,
    received: AtomicU64,
    acked: AtomicU64,
    unrouted: AtomicU64,
    unrouted_dead_lettered: AtomicU64,
    control_waited: AtomicU64,
    backpressure: AtomicU64,
    subscription_refused: AtomicU64,
    redeliveries_already_done: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload: Mutex<Option<String>>,
    /// The last [`RELOAD_HISTORY`] reloads, newest last.
    reload_history: Mutex<VecDeque<ReloadEvent>>,
    gateway: Arc<GatewayMetrics>,
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// The routes of the running version, in config order (set at start and
    /// on every applied reload).
    live_routes: Mutex<Vec<crate::status::LiveRoute>>,
    /// When this set of metrics was created (the bridge started).
    started_ms: AtomicU64,
    /// The journal, when `buffer.kind` is `disk`.
    journal: Mutex<Option<crate::journal::Journal>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let m = Metrics::default();
        m.started_ms.store(now_ms(), Relaxed);
        Arc::new(m)
    }

    /// When the bridge started, in milliseconds since the Unix epoch.
    pub fn started_ms(&self) -> u64 {
        self.started_ms.load(Relaxed)
    }

    /// The journal whose depth and counters are shown.
    pub fn set_journal(&self, journal: crate::journal::Journal) {
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(journal);
    }

    /// The journal's state, when there is one.
    pub fn journal(&self) -> Option<JournalState> {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let j = journal.as_ref()?;
        let c = j.counters();
        let oldest = c.oldest_at_ms.load(Relaxed);
        Some(JournalState {
            entries: c.entries.load(Relaxed),
            disk_bytes: j.disk_bytes(),
            oldest_age_seconds: if oldest > 0 {
                now_ms().saturating_sub(oldest) as f64 / 1000.0
            } else {
                0.0
            },
            appends: c.appends.load(Relaxed),
            commits: c.commits.load(Relaxed),
            appended_bytes: c.appended_bytes.load(Relaxed),
            removed: c.removed.load(Relaxed),
            full: c.full.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
        })
    }

    /// Records the routes of the version that runs now.
    pub fn set_live_routes(&self, routes: Vec<crate::status::LiveRoute>) {
        *self.live_routes.lock().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// The routes of the version that runs now, in config order.
    pub fn live_routes(&self) -> Vec<crate::status::LiveRoute> {
        self.live_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every subscriber session's state: `(name, connected, ready, serving,
    /// pending)`.
    pub fn sessions(&self) -> Vec<(String, bool, bool, bool, usize)> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.connected.load(Relaxed),
                    s.ready.load(Relaxed),
                    s.serving.load(Relaxed),
                    s.pending(),
                )
            })
            .collect()
    }

    /// Messages no route took, and their dead letters confirmed.
    pub fn unrouted_totals(&self) -> (u64, u64) {
        (
            self.unrouted.load(Relaxed),
            self.unrouted_dead_lettered.load(Relaxed),
        )
    }

    /// The status of session `name` (created on first use); `serving` is
    /// false for a session that is only being retired.
    pub fn session(&self, name: &str, serving: bool) -> Arc<SessionStatus> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let status = sessions.entry(name.to_string()).or_insert_with(|| {
            Arc::new(SessionStatus {
                connected: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                serving: AtomicBool::new(serving),
                changed: self.sessions_changed.clone(),
                pending: Mutex::new(None),
            })
        });
        status.serving.store(serving, Relaxed);
        Arc::clone(status)
    }

    /// Forgets session `name` (it ended).
    pub fn remove_session(&self, name: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(name);
        self.sessions_changed.send_replace(());
    }

    /// Every serving session is connected with its subscriptions in place
    /// (and there is at least one).
    pub fn is_ready(&self) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut serving = sessions
            .values()
            .filter(|s| s.serving.load(Relaxed))
            .peekable();
        serving.peek().is_some() && serving.all(|s| s.ready.load(Relaxed))
    }

    /// Completes once the bridge is ready to receive messages.
    pub async fn wait_ready(&self) {
        let mut rx = self.sessions_changed.subscribe();
        while !self.is_ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every serving session is connected.
    pub fn is_connected(&self) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut serving = sessions
            .values()
            .filter(|s| s.serving.load(Relaxed))
            .peekable();
        serving.peek().is_some() && serving.all(|s| s.connected.load(Relaxed))
    }
    pub fn received(&self) {
        self.received.fetch_add(1, Relaxed);
    }
    pub fn acked(&self) {
        self.acked.fetch_add(1, Relaxed);
    }
    pub fn unrouted(&self) {
        self.unrouted.fetch_add(1, Relaxed);
    }
    /// An unrouted message's dead letter was confirmed by the broker.
    pub fn unrouted_dead_lettered(&self) {
        self.unrouted_dead_lettered.fetch_add(1, Relaxed);
    }
    /// A control packet (acknowledgement, SUBSCRIBE, UNSUBSCRIBE) waited for
    /// room in the client's request channel.
    pub fn control_waited(&self) {
        self.control_waited.fetch_add(1, Relaxed);
    }
    pub fn backpressure(&self) {
        self.backpressure.fetch_add(1, Relaxed);
    }
    /// A redelivery of a message processed completely before a reconnect,
    /// acknowledged without processing it again.
    pub fn redelivery_already_done(&self) {
        self.redeliveries_already_done.fetch_add(1, Relaxed);
    }
    /// How many redeliveries were acknowledged without processing.
    pub fn redeliveries_already_done(&self) -> u64 {
        self.redeliveries_already_done.load(Relaxed)
    }
    pub fn subscription_refused(&self) {
        self.subscription_refused.fetch_add(1, Relaxed);
    }

    /// Records the outcome of a reload: `Ok` holds what changed, `Err` the whole
    /// error text.
    pub fn reload(&self, outcome: Result<String, String>) {
        let (ok, status, summary) = match outcome {
            Ok(summary) => {
                self.reloads_ok.fetch_add(1, Relaxed);
                (true, format!("ok: {summary}"), summary)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                (false, format!("failed: {e}"), e)
            }
        };
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(status);
        }
        let mut history = self
            .reload_history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        history.push_back(ReloadEvent {
            at_ms: now_ms(),
            ok,
            summary: clip(&summary, 2000),
        });
    }

    /// The last reloads, newest last.
    pub fn reload_history(&self) -> Vec<ReloadEvent> {
        self.reload_history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Every route's counters (live and removed), by name.
    pub fn routes(&self) -> BTreeMap<String, Arc<RouteMetrics>> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `(successful, failed, last status)` of reloads so far.
    pub fn reloads(&self) -> (u64, u64, Option<String>) {
        let last = self.last_reload.lock().ok().and_then(|l| l.clone());
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
            last,
        )
    }

    /// Messages received and acknowledged so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.received.load(Relaxed), self.acked.load(Relaxed))
    }

    /// The gateway connection's counters.
    pub fn gateway(&self) -> Arc<GatewayMetrics> {
        Arc::clone(&self.gateway)
    }

    /// The counters of route `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(routes.entry(name.to_string()).or_default())
    }

    /// All counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP fxbridge_{name} {help}\n# TYPE fxbridge_{name} {kind}\nfxbridge_{name} {v}"
            );
        };
        let (connected, ready) = (self.is_connected(), self.is_ready());
        gauge(
            "broker_connected",
            "1 while every subscriber session is connected.",
            "gauge",
            u64::from(connected),
        );
        gauge(
            "ready",
            "1 while every subscriber session is connected with its subscriptions in place.",
            "gauge",
            u64::from(ready),
        );
        gauge(
            "received_total",
            "Messages received from the broker.",
            "counter",
            self.received.load(Relaxed),
        );
        gauge(
            "acked_total",
            "Messages acknowledged to the broker.",
            "counter",
            self.acked.load(Relaxed),
        );
        gauge(
            "unrouted_total",
            "Messages no route took (each is dead-lettered).",
            "counter",
            self.unrouted.load(Relaxed),
        );
        gauge(
            "unrouted_dead_letters_total",
            "Dead letters of unrouted messages confirmed by the broker.",
            "counter",
            self.unrouted_dead_lettered.load(Relaxed),
        );
        gauge(
            "control_waits_total",
            "Times an acknowledgement or (un)subscription waited for room in the MQTT client.",
            "counter",
            self.control_waited.load(Relaxed),
        );
        gauge(
            "backpressure_total",
            "Times reading paused at mqtt.max_pending.",
            "counter",
            self.backpressure.load(Relaxed),
        );
        gauge(
            "subscriptions_refused_total",
            "Subscriptions the broker refused.",
            "counter",
            self.subscription_refused.load(Relaxed),
        );
        gauge(
            "redeliveries_already_done_total",
            "Redeliveries of messages processed before a reconnect, acknowledged without processing again.",
            "counter",
            self.redeliveries_already_done.load(Relaxed),
        );
        gauge(
            "reloads_total",
            "Successful config reloads.",
            "counter",
            self.reloads_ok.load(Relaxed),
        );
        gauge(
            "reload_failures_total",
            "Config reloads rejected (the running config was kept).",
            "counter",
            self.reloads_failed.load(Relaxed),
        );
        gauge(
            "gateway_connects_total",
            "HTTP/2 connections to the gateway established.",
            "counter",
            self.gateway.connects.load(Relaxed),
        );
        gauge(
            "gateway_connect_failures_total",
            "Connection attempts to the gateway that failed.",
            "counter",
            self.gateway.connect_failures.load(Relaxed),
        );
        gauge(
            "gateway_connected",
            "1 while an HTTP/2 connection to the gateway is open.",
            "gauge",
            u64::from(self.gateway.open.load(Relaxed) > 0),
        );
        {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP fxbridge_session_connected 1 while the subscriber session is connected.\n# TYPE fxbridge_session_connected gauge"
            );
            for (name, s) in sessions.iter() {
                let _ = writeln!(
                    out,
                    "fxbridge_session_connected{{session=\"{}\",serving=\"{}\"}} {}",
                    label(name),
                    s.serving.load(Relaxed),
                    u64::from(s.connected.load(Relaxed))
                );
            }
            let _ = writeln!(
                out,
                "# HELP fxbridge_session_pending Messages the session received and has not finished (at mqtt.max_pending it stops reading).\n# TYPE fxbridge_session_pending gauge"
            );
            for (name, s) in sessions.iter() {
                let _ = writeln!(
                    out,
                    "fxbridge_session_pending{{session=\"{}\"}} {}",
                    label(name),
                    s.pending()
                );
            }
        }
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        type Field = fn(&RouteMetrics) -> &AtomicU64;
        let fields: [(&str, &str, Field); 12] = [
            (
                "route_messages_total",
                "Messages taken by the route.",
                |r| &r.messages,
            ),
            ("route_invoked_total", "Successful Invoke calls.", |r| {
                &r.invoked
            }),
            ("route_invoke_failures_total", "Failed Invoke calls.", |r| {
                &r.invoke_failures
            }),
            ("route_retries_total", "Invoke retries.", |r| &r.retries),
            (
                "route_skipped_total",
                "Messages a transform skipped.",
                |r| &r.skipped,
            ),
            ("route_published_total", "Results published.", |r| {
                &r.published
            }),
            ("route_dead_letters_total", "Messages dead-lettered.", |r| {
                &r.dead_letters
            }),
            (
                "route_abandoned_total",
                "Messages left unacknowledged at shutdown.",
                |r| &r.abandoned,
            ),
            (
                "route_superseded_total",
                "Waiting copies dropped because the broker redelivered them after a reconnect.",
                |r| &r.superseded,
            ),
            (
                "route_retained_skipped_total",
                "Retained messages the route skipped (routes[].retained).",
                |r| &r.retained_skipped,
            ),
            (
                "route_expired_total",
                "MQTT 5 messages whose expiry interval ran out before Invoke (not invoked).",
                |r| &r.expired,
            ),
            (
                "route_latency_microseconds_sum",
                "Time from dispatch to done.",
                |r| &r.latency_us_sum,
            ),
        ];
        for (name, help, get) in fields {
            let _ = writeln!(
                out,
                "# HELP fxbridge_{name} {help}\n# TYPE fxbridge_{name} counter"
            );
            for (route, m) in routes.iter() {
                let _ = writeln!(
                    out,
                    "fxbridge_{name}{{route=\"{}\"}} {}",
                    label(route),
                    get(m).load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP fxbridge_route_in_flight Messages the route is processing now.\n# TYPE fxbridge_route_in_flight gauge"
        );
        for (route, m) in routes.iter() {
            let _ = writeln!(
                out,
                "fxbridge_route_in_flight{{route=\"{}\"}} {}",
                label(route),
                m.in_flight.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP fxbridge_route_dead_letters_by_kind_total Dead letters the broker accepted, by route and kind (error_kind of the envelope).\n# TYPE fxbridge_route_dead_letters_by_kind_total counter"
        );
        for (route, m) in routes.iter() {
            for (kind, n) in m.dead_letter_log().by_kind {
                let _ = writeln!(
                    out,
                    "fxbridge_route_dead_letters_by_kind_total{{route=\"{}\",kind=\"{kind}\"}} {n}",
                    label(route)
                );
            }
        }
        type Hist = fn(&RouteMetrics) -> &Histogram;
        let histograms: [(&str, &str, Hist); 4] = [
            (
                "route_latency_seconds",
                "Time from dispatch to done (the message may be acknowledged), per message.",
                |r| &r.latency,
            ),
            (
                "route_invoke_seconds",
                "One Invoke call (every attempt).",
                |r| &r.invoke_latency,
            ),
            (
                "route_before_invoke_seconds",
                "The plugin's before-invoke hook.",
                |r| &r.before_latency,
            ),
            (
                "route_after_invoke_seconds",
                "The plugin's after-invoke hook.",
                |r| &r.after_latency,
            ),
        ];
        for (name, help, get) in histograms {
            let _ = writeln!(
                out,
                "# HELP fxbridge_{name} {help}\n# TYPE fxbridge_{name} histogram"
            );
            for (route, m) in routes.iter() {
                get(m).render(&mut out, name, &format!("route=\"{}\"", label(route)));
            }
        }
        render_plugins(&mut out, &routes);
        if let Some(j) = self.journal() {
            let lines: [(&str, &str, &str, String); 9] = [
                (
                    "journal_entries",
                    "Messages in the journal: received, not finished.",
                    "gauge",
                    j.entries.to_string(),
                ),
                (
                    "journal_disk_bytes",
                    "The journal's database and WAL on disk.",
                    "gauge",
                    j.disk_bytes.to_string(),
                ),
                (
                    "journal_oldest_age_seconds",
                    "Age of the oldest message in the journal (0 when empty).",
                    "gauge",
                    format!("{:.3}", j.oldest_age_seconds),
                ),
                (
                    "journal_appends_total",
                    "Messages appended to the journal.",
                    "counter",
                    j.appends.to_string(),
                ),
                (
                    "journal_commits_total",
                    "Journal commits (one fsync each; appends share them).",
                    "counter",
                    j.commits.to_string(),
                ),
                (
                    "journal_appended_bytes_total",
                    "Bytes appended to the journal (topic, payload, properties).",
                    "counter",
                    j.appended_bytes.to_string(),
                ),
                (
                    "journal_removed_total",
                    "Finished messages removed from the journal.",
                    "counter",
                    j.removed.to_string(),
                ),
                (
                    "journal_full_total",
                    "Appends refused because the journal or its disk was full.",
                    "counter",
                    j.full.to_string(),
                ),
                (
                    "journal_dropped_total",
                    "Messages dropped to make room (buffer.when_full: drop_oldest).",
                    "counter",
                    j.dropped.to_string(),
                ),
            ];
            for (name, help, kind, v) in lines {
                let _ = writeln!(
                    out,
                    "# HELP fxbridge_{name} {help}\n# TYPE fxbridge_{name} {kind}\nfxbridge_{name} {v}"
                );
            }
        }
        out
    }
}

/// A label value in the Prometheus text format: `\`, `"` and newlines escaped
/// (route and session names are restricted anyway; this keeps the page valid
/// whatever they hold).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The transform counters of every route.
fn render_plugins(out: &mut String, routes: &BTreeMap<String, Arc<RouteMetrics>>) {
    let snaps: Vec<(&String, crate::transform::CountersSnapshot)> = routes
        .iter()
        .map(|(name, m)| (name, m.plugin.snapshot()))
        .collect();
    type Get = fn(&crate::transform::CountersSnapshot) -> u64;
    let simple: [(&str, &str, Get); 4] = [
        ("plugin_calls_total", "Transform hook calls.", |s| s.calls),
        (
            "plugin_call_microseconds_sum",
            "Time spent in transform hook calls.",
            |s| s.call_time_us,
        ),
        (
            "plugin_instances_created_total",
            "Plugin instances created and configured.",
            |s| s.instances_created,
        ),
        (
            "plugin_log_suppressed_total",
            "Plugin log lines dropped over the route's log budget.",
            |s| s.log_suppressed,
        ),
    ];
    for (name, help, get) in simple {
        let _ = writeln!(
            out,
            "# HELP fxbridge_{name} {help}\n# TYPE fxbridge_{name} counter"
        );
        for (route, s) in &snaps {
            let _ = writeln!(
                out,
                "fxbridge_{name}{{route=\"{}\"}} {}",
                label(route),
                get(s)
            );
        }
    }
    let kinds: [(&str, Get); 8] = [
        ("guest_error", |s| s.guest_errors),
        ("trap", |s| s.traps),
        ("timeout", |s| s.timeouts),
        ("memory_limit", |s| s.memory_limits),
        ("output_limit", |s| s.output_limits),
        ("fuel_exhausted", |s| s.fuel_exhausted),
        ("configure_failed", |s| s.configure_failed),
        ("instantiation_failed", |s| s.instantiation_failed),
    ];
    let _ = writeln!(
        out,
        "# HELP fxbridge_plugin_errors_total Failed transform calls by kind.\n# TYPE fxbridge_plugin_errors_total counter"
    );
    for (route, s) in &snaps {
        for (kind, get) in kinds {
            let _ = writeln!(
                out,
                "fxbridge_plugin_errors_total{{route=\"{}\",kind=\"{kind}\"}} {}",
                label(route),
                get(s)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_cumulative_buckets_in_seconds() {
        use std::time::Duration;
        assert_eq!(
            [500, 1_000, 2_500, 1_000_000, 30_000_000].map(seconds),
            ["0.0005", "0.001", "0.0025", "1", "30"].map(str::to_string)
        );
        let m = Metrics::new();
        let r = m.route("a");
        for us in [100, 500, 501, 40_000, 60_000_000] {
            r.latency.observe(Duration::from_micros(us));
        }
        let page = m.render();
        let has = |line: &str| assert!(page.contains(line), "{line} in\n{page}");
        has("# TYPE fxbridge_route_latency_seconds histogram");
        // 100 us and 500 us (bounds are inclusive) in the first bucket.
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"0.0005\"} 2\n");
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"0.001\"} 3\n");
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"0.025\"} 3\n");
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"0.05\"} 4\n");
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"30\"} 4\n");
        has("fxbridge_route_latency_seconds_bucket{route=\"a\",le=\"+Inf\"} 5\n");
        has("fxbridge_route_latency_seconds_count{route=\"a\"} 5\n");
        has("fxbridge_route_latency_seconds_sum{route=\"a\"} 60.041101\n");
        has("fxbridge_route_invoke_seconds_count{route=\"a\"} 0\n");
        has("fxbridge_route_in_flight{route=\"a\"} 0\n");
        has("fxbridge_gateway_connected 0\n");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("a\nb"), r"a\nb");
        let m = Metrics::new();
        m.route("odd\"route\n");
        let page = m.render();
        assert!(
            page.contains(r#"fxbridge_route_messages_total{route="odd\"route\n"} 0"#),
            "{page}"
        );
        assert!(
            page.lines().all(|l| !l.ends_with('"')),
            "no line broken by a label"
        );
    }
}
