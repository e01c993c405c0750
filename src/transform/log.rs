//! What a route's plugin may write to the bridge's log: a token bucket shared
//! by all the route's instances (`limits.log_lines_per_second`, with
//! `limits.log_burst` lines of credit) and a ceiling on the level
//! (`limits.log_level`: a plugin's `error` is logged at `warn` by default).
//! `host.log`, stdout and stderr all draw on it. Lines over the budget are
//! counted (`fxbridge_plugin_log_suppressed_total`), and the next line that
//! gets through says how many were dropped, so a flooding plugin costs the
//! log at most its budget.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Counters;
use crate::config::LogLevel;

/// The log budget of one route.
#[derive(Debug)]
pub struct LogGate {
    route: Arc<str>,
    per_second: f64,
    burst: f64,
    max_level: LogLevel,
    bucket: Mutex<Bucket>,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Lines dropped since the last one that got through.
    dropped: u64,
}

impl LogGate {
    pub fn new(
        route: Arc<str>,
        per_second: u32,
        burst: u32,
        max_level: LogLevel,
        counters: Arc<Counters>,
    ) -> LogGate {
        LogGate {
            route,
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            max_level,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst.max(1)),
                last: Instant::now(),
                dropped: 0,
            }),
            counters,
        }
    }

    /// Logs `line` at `level` (capped) if the budget allows.
    pub fn log(&self, level: LogLevel, line: &str, stream: Option<&'static str>) {
        let dropped = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.last).as_secs_f64() * self.per_second;
            b.tokens = (b.tokens + refill).min(self.burst);
            b.last = now;
            if b.tokens < 1.0 {
                b.dropped += 1;
                self.counters.log_suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.dropped)
        };
        let route = &*self.route;
        if dropped > 0 {
            tracing::warn!(target: "fxbridge::plugin", route, dropped, "plugin log over its budget: lines dropped");
        }
        let stream = stream.unwrap_or("log");
        match level.min(self.max_level) {
            LogLevel::Trace => tracing::trace!(target: "fxbridge::plugin", route, stream, "{line}"),
            LogLevel::Debug => tracing::debug!(target: "fxbridge::plugin", route, stream, "{line}"),
            LogLevel::Info => tracing::info!(target: "fxbridge::plugin", route, stream, "{line}"),
            LogLevel::Warn => tracing::warn!(target: "fxbridge::plugin", route, stream, "{line}"),
            LogLevel::Error => tracing::error!(target: "fxbridge::plugin", route, stream, "{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let counters = Arc::new(Counters::default());
        let gate = LogGate::new(Arc::from("r"), 1, 5, LogLevel::Warn, Arc::clone(&counters));
        for i in 0..50 {
            gate.log(LogLevel::Error, &format!("line {i}"), None);
        }
        let s = counters.snapshot();
        // 5 of credit, and at most one more for the time the loop took.
        assert!((44..=45).contains(&s.log_suppressed), "{s:?}");
    }
}
