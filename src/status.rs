//! The operator's view: the document `/api/status` returns and the page at
//! the admin endpoint's `/` shows (`status.html`, self-contained: no build
//! step, no CDN, it polls `/api/status` once a second).
//!
//! Counters live in [`Metrics`]; this module turns them into what an operator
//! looks at: per-route rates and latency percentiles over the last
//! [`WINDOW`] (from a [`Sampler`] that copies the counters once a second, so
//! nothing is added to a message's path), in-flight and pending messages,
//! dead letters by kind with the last reasons, the plugin each route runs,
//! the reload history and the connection states.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::{DeadLetterEvent, Metrics, ReloadEvent, RouteMetrics, LATENCY_BUCKETS_US};
use crate::pipeline::RouteCtx;

/// The page served at `/`.
pub const PAGE: &str = include_str!("status.html");

/// Rates and percentiles are over (about) this long.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How often the [`Sampler`] copies the counters.
const TICK: Duration = Duration::from_secs(1);

/// A route of the running version, as configured.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRoute {
    pub name: String,
    pub topic: String,
    pub function: String,
    pub session: String,
    /// The republish topic template, when the route has one.
    pub republish: Option<String>,
    pub plugin: Option<PluginInfo>,
}

/// The transform a route runs.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub path: String,
    pub sha256: String,
    /// The WIT contract version the component implements.
    pub wit_version: String,
    pub before_invoke: bool,
    pub after_invoke: bool,
}

impl LiveRoute {
    /// What the status page shows of a loaded route.
    pub(crate) fn of(ctx: &RouteCtx) -> LiveRoute {
        let route = &ctx.route;
        LiveRoute {
            name: route.name().to_string(),
            topic: route.config.topic.clone(),
            function: route.config.function.clone(),
            session: route.session().to_string(),
            republish: route
                .config
                .republish
                .as_ref()
                .and_then(|r| r.topic.clone()),
            plugin: ctx.transform.as_ref().map(|t| {
                let p = t.plugin();
                PluginInfo {
                    path: p.path().display().to_string(),
                    sha256: p.sha256_hex(),
                    wit_version: p.wit_version().to_string(),
                    before_invoke: p.has_before(),
                    after_invoke: p.has_after(),
                }
            }),
        }
    }
}

/// One route's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct RouteSample {
    messages: u64,
    published: u64,
    dead_letters: u64,
    /// Cumulative latency bucket counts (the last is the total).
    latency: [u64; LATENCY_BUCKETS_US.len() + 1],
}

impl RouteSample {
    fn of(m: &RouteMetrics) -> RouteSample {
        RouteSample {
            messages: m.messages.load(Relaxed),
            published: m.published.load(Relaxed),
            dead_letters: m.dead_letters.load(Relaxed),
            latency: m.latency.snapshot().0,
        }
    }
}

/// Every route's counters at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    routes: BTreeMap<String, RouteSample>,
}

impl Sample {
    fn take(metrics: &Metrics) -> Sample {
        Sample {
            at: Instant::now(),
            routes: metrics
                .routes()
                .iter()
                .map(|(name, m)| (name.clone(), RouteSample::of(m)))
                .collect(),
        }
    }
}

/// Copies of the counters over the last [`WINDOW`], once a second.
#[derive(Debug)]
pub struct Sampler {
    metrics: Arc<Metrics>,
    samples: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Sampler> {
        let first = Sample::take(&metrics);
        Arc::new(Sampler {
            metrics,
            samples: Mutex::new(VecDeque::from([first])),
        })
    }

    /// Samples once a second until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.sample(),
            }
        }
    }

    fn sample(&self) {
        let now = Sample::take(&self.metrics);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        // Keep one sample at least WINDOW old, so the window is full.
        while samples.len() > 1 && now.at.duration_since(samples[1].at) >= WINDOW {
            samples.pop_front();
        }
        samples.push_back(now);
    }

    /// The oldest sample of the window.
    fn base(&self) -> Option<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.front().cloned()
    }

    /// The whole status document, now.
    pub fn status(&self) -> Status {
        let m = &self.metrics;
        let now = Sample::take(m);
        let base = self.base();
        let window = base
            .as_ref()
            .map(|b| now.at.duration_since(b.at))
            .unwrap_or_default();
        let all = m.routes();
        let routes = m
            .live_routes()
            .into_iter()
            .map(|live| {
                let metrics = all.get(&live.name).cloned().unwrap_or_default();
                let current = now.routes.get(&live.name).copied().unwrap_or_default();
                let before = base
                    .as_ref()
                    .and_then(|b| b.routes.get(&live.name).copied())
                    .unwrap_or_default();
                RouteStatus::new(live, &metrics, current, before, window)
            })
            .collect();
        let sessions: Vec<SessionState> = m
            .sessions()
            .into_iter()
            .map(|(name, connected, ready, serving, pending)| SessionState {
                name,
                connected,
                ready,
                serving,
                pending,
            })
            .collect();
        let gateway = m.gateway();
        let (received, acked) = m.totals();
        let (unrouted, unrouted_dead_lettered) = m.unrouted_totals();
        let (applied, rejected, _) = m.reloads();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_ms: m.started_ms(),
            now_ms: crate::metrics::now_ms(),
            window_seconds: window.as_secs_f64(),
            ready: m.is_ready(),
            broker: BrokerState {
                connected: m.is_connected(),
                sessions,
            },
            gateway: GatewayState {
                connected: gateway.open.load(Relaxed) > 0,
                connects: gateway.connects.load(Relaxed),
                connect_failures: gateway.connect_failures.load(Relaxed),
            },
            totals: Totals {
                received,
                acked,
                unrouted,
                unrouted_dead_lettered,
            },
            routes,
            reloads: Reloads {
                applied,
                rejected,
                history: m.reload_history(),
            },
            journal: m.journal(),
        }
    }
}

/// The document at `/api/status` (README, "Status page").
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_ms: u64,
    pub now_ms: u64,
    /// What the rates and percentiles are measured over (0 right after start).
    pub window_seconds: f64,
    pub ready: bool,
    pub broker: BrokerState,
    pub gateway: GatewayState,
    pub totals: Totals,
    pub routes: Vec<RouteStatus>,
    pub reloads: Reloads,
    /// The durable journal's state; `null` with `buffer.kind: memory`.
    pub journal: Option<crate::metrics::JournalState>,
}

#[derive(Debug, Serialize)]
pub struct BrokerState {
    /// Every serving session is connected.
    pub connected: bool,
    pub sessions: Vec<SessionState>,
}

#[derive(Debug, Serialize)]
pub struct SessionState {
    pub name: String,
    pub connected: bool,
    pub ready: bool,
    /// False for a session that is only being retired.
    pub serving: bool,
    /// Messages received and not finished.
    pub pending: usize,
}

#[derive(Debug, Serialize)]
pub struct GatewayState {
    pub connected: bool,
    pub connects: u64,
    pub connect_failures: u64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub received: u64,
    pub acked: u64,
    pub unrouted: u64,
    pub unrouted_dead_lettered: u64,
}

#[derive(Debug, Serialize)]
pub struct Reloads {
    pub applied: u64,
    pub rejected: u64,
    /// The last few, newest last.
    pub history: Vec<ReloadEvent>,
}

/// One route: configuration, rates, latency, counters, dead letters.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    #[serde(flatten)]
    pub route: LiveRoute,
    /// Messages taken per second over the window (`null` right after start).
    pub rate_in: Option<f64>,
    /// Results published per second.
    pub rate_out: Option<f64>,
    /// Dead letters per second.
    pub rate_dead_letters: Option<f64>,
    /// End-to-end latency percentiles over the window, in milliseconds
    /// (`null` when no message finished in it); estimated from the
    /// `fxbridge_route_latency_seconds` buckets as Prometheus's
    /// `histogram_quantile` does.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_flight: u64,
    pub messages: u64,
    pub invoked: u64,
    pub invoke_failures: u64,
    pub retries: u64,
    pub skipped: u64,
    pub published: u64,
    pub dead_letters: u64,
    pub dead_letter_kinds: BTreeMap<&'static str, u64>,
    /// The last few, newest last.
    pub recent_dead_letters: Vec<DeadLetterEvent>,
    pub plugin_calls: u64,
    pub plugin_errors: u64,
}

impl RouteStatus {
    fn new(
        route: LiveRoute,
        m: &RouteMetrics,
        now: RouteSample,
        before: RouteSample,
        window: Duration,
    ) -> RouteStatus {
        let secs = window.as_secs_f64();
        let rate = |a: u64, b: u64| (secs >= 0.5).then(|| a.saturating_sub(b) as f64 / secs);
        let mut delta = [0u64; LATENCY_BUCKETS_US.len() + 1];
        for (d, (a, b)) in delta
            .iter_mut()
            .zip(now.latency.iter().zip(&before.latency))
        {
            *d = a.saturating_sub(*b);
        }
        let log = m.dead_letter_log();
        let plugin = m.plugin.snapshot();
        RouteStatus {
            route,
            rate_in: rate(now.messages, before.messages),
            rate_out: rate(now.published, before.published),
            rate_dead_letters: rate(now.dead_letters, before.dead_letters),
            p50_ms: quantile_us(0.5, &delta).map(|us| us / 1000.0),
            p99_ms: quantile_us(0.99, &delta).map(|us| us / 1000.0),
            in_flight: m.in_flight.load(Relaxed),
            messages: now.messages,
            invoked: m.invoked.load(Relaxed),
            invoke_failures: m.invoke_failures.load(Relaxed),
            retries: m.retries.load(Relaxed),
            skipped: m.skipped.load(Relaxed),
            published: now.published,
            dead_letters: now.dead_letters,
            dead_letter_kinds: log.by_kind,
            recent_dead_letters: log.recent.into_iter().collect(),
            plugin_calls: plugin.calls,
            plugin_errors: plugin.errors(),
        }
    }
}

/// The `q` quantile (0..1) in microseconds of cumulative bucket counts over
/// [`LATENCY_BUCKETS_US`] (the last count is the total), interpolated
/// linearly inside the bucket; `None` without observations. Beyond the last
/// bound it answers that bound, as `histogram_quantile` does.
fn quantile_us(q: f64, cumulative: &[u64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = LATENCY_BUCKETS_US.get(i) else {
        return LATENCY_BUCKETS_US.last().map(|&b| b as f64);
    };
    let (lower, below) = match i {
        0 => (0, 0),
        _ => (LATENCY_BUCKETS_US[i - 1], cumulative[i - 1]),
    };
    let in_bucket = (cumulative[i] - below) as f64;
    let into = if in_bucket > 0.0 {
        (rank - below as f64) / in_bucket
    } else {
        1.0
    };
    Some(lower as f64 + (upper - lower) as f64 * into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(per_bucket: &[(usize, u64)]) -> Vec<u64> {
        let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
        for &(i, n) in per_bucket {
            counts[i] += n;
        }
        let mut total = 0;
        counts
            .iter()
            .map(|c| {
                total += c;
                total
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        assert_eq!(quantile_us(0.5, &cumulative(&[])), None);
        // 100 observations in (1 ms, 2.5 ms]: the median is half-way.
        let one_bucket = cumulative(&[(2, 100)]);
        assert_eq!(quantile_us(0.5, &one_bucket), Some(1750.0));
        assert_eq!(quantile_us(0.99, &one_bucket), Some(2485.0));
        // 90 fast (<= 0.5 ms), 10 slow (in (100, 250] ms): p50 is fast, p99 slow.
        let split = cumulative(&[(0, 90), (8, 10)]);
        let p50 = quantile_us(0.5, &split).unwrap_or_default();
        assert!(p50 > 0.0 && p50 <= 500.0, "{p50}");
        let p99 = quantile_us(0.99, &split).unwrap_or_default();
        assert!(p99 > 100_000.0 && p99 <= 250_000.0, "{p99}");
        // Past the last bound: the last bound.
        let slow = cumulative(&[(LATENCY_BUCKETS_US.len(), 5)]);
        assert_eq!(quantile_us(0.5, &slow), Some(30_000_000.0));
    }

    #[test]
    fn rates_and_percentiles_cover_the_window_only() {
        let m = Metrics::new();
        let r = m.route("a");
        m.set_live_routes(vec![LiveRoute {
            name: "a".into(),
            topic: "in/+".into(),
            function: "echo".into(),
            session: "a".into(),
            republish: None,
            plugin: None,
        }]);
        // Before the window: slow messages that must not show in its p99.
        for _ in 0..50 {
            r.messages.fetch_add(1, Relaxed);
            r.latency.observe(Duration::from_secs(2));
        }
        let sampler = Sampler::new(Arc::clone(&m));
        {
            // Pretend the first sample is 2 s old.
            let mut samples = sampler.samples.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = samples.front_mut() {
                s.at -= Duration::from_secs(2);
            }
        }
        for _ in 0..20 {
            r.messages.fetch_add(1, Relaxed);
            r.published.fetch_add(1, Relaxed);
            r.latency.observe(Duration::from_micros(800));
        }
        r.dead_lettered("invoke", "in/x", "the gateway said no");
        let status = sampler.status();
        let route = &status.routes[0];
        let rate = route.rate_in.unwrap_or_default();
        assert!((9.0..=10.1).contains(&rate), "20 in about 2 s: {rate}");
        let p99 = route.p99_ms.unwrap_or_default();
        assert!(p99 > 0.5 && p99 <= 1.0, "only the window's messages: {p99}");
        assert_eq!(route.messages, 70);
        assert_eq!(route.dead_letter_kinds.get("invoke"), Some(&1));
        assert_eq!(route.recent_dead_letters[0].reason, "the gateway said no");
        let json = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(json["routes"][0]["name"], "a", "{json}");
        assert_eq!(json["routes"][0]["topic"], "in/+");
        assert!(json["journal"].is_null());
    }
}
