//! [`RouteTransform`]: one route's use of a plugin (config JSON, limits, a pool
//! of configured instances, counters) and the guarded hook calls.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{After, Before};
use super::host::PluginHost;
use super::log::LogGate;
use super::plugin::Plugin;
use super::sandbox::MAX_MEMORY;
use super::state::HostState;
use super::{Counters, CountersSnapshot, HookMessage, TransformError};
use crate::config::{Route, TransformLimits};
use crate::message::{OutMessage, PreDecision};

/// Instantiation and `configure` get at least this long, whatever `limits.timeout`.
pub const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(1);

/// One configured instance.
struct Live {
    store: Store<HostState>,
    before: Option<Before>,
    after: Option<After>,
}

/// One route's transform: shareable, callable from many tasks at once.
pub struct RouteTransform {
    host: Arc<PluginHost>,
    plugin: Arc<Plugin>,
    route: Arc<str>,
    config_json: String,
    timeout: Duration,
    memory: u64,
    fuel: Option<u64>,
    /// The most bytes the host takes out of a guest in one call (wasmtime's
    /// hostcall fuel: list and string data lifted, counted at host size).
    lift_limit: usize,
    idle: Mutex<Vec<Live>>,
    /// Held while an instance is created: one at a time per route, so a burst
    /// of messages with no idle instance (at start, after traps) does not start
    /// `max_in_flight` instantiations that share the CPU and all miss their
    /// deadline.
    creating: tokio::sync::Mutex<()>,
    counters: Arc<Counters>,
    log: Arc<LogGate>,
}

impl std::fmt::Debug for RouteTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTransform")
            .field("route", &self.route)
            .field("plugin", &self.plugin)
            .field("timeout", &self.timeout)
            .field("memory", &self.memory)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

impl RouteTransform {
    /// A route's use of `plugin`. Creates no instance yet: call
    /// [`RouteTransform::prepare`] to configure one eagerly. A memory limit above
    /// [`MAX_MEMORY`] is lowered to it (see [`RouteTransform::for_route`], which
    /// refuses it instead).
    pub fn new(
        host: &Arc<PluginHost>,
        plugin: Arc<Plugin>,
        route_name: &str,
        config_json: String,
        limits: &TransformLimits,
    ) -> Arc<RouteTransform> {
        Self::with_counters(
            host,
            plugin,
            route_name,
            config_json,
            limits,
            Arc::new(Counters::default()),
        )
    }

    /// [`RouteTransform::new`] counting into `counters` (e.g. the route's
    /// metrics, which outlive reloads).
    pub fn with_counters(
        host: &Arc<PluginHost>,
        plugin: Arc<Plugin>,
        route_name: &str,
        config_json: String,
        limits: &TransformLimits,
        counters: Arc<Counters>,
    ) -> Arc<RouteTransform> {
        let route: Arc<str> = Arc::from(route_name);
        let log = Arc::new(LogGate::new(
            Arc::clone(&route),
            limits.log_lines_per_second,
            limits.log_burst,
            limits.log_level,
            Arc::clone(&counters),
        ));
        Arc::new(RouteTransform {
            host: Arc::clone(host),
            plugin,
            route,
            log,
            config_json,
            timeout: limits.timeout,
            memory: limits.memory.0.min(MAX_MEMORY),
            fuel: limits.fuel.filter(|_| host.fuel_metering),
            lift_limit: lift_limit(limits),
            idle: Mutex::new(Vec::new()),
            creating: tokio::sync::Mutex::new(()),
            counters,
        })
    }

    /// Loads the route's component, and creates and configures its first
    /// instance, so a bad component or a config the plugin refuses fails here
    /// (at start or reload) rather than on the first message.
    pub async fn for_route(host: &Arc<PluginHost>, route: &Route) -> Result<Arc<RouteTransform>> {
        Self::for_route_with_counters(host, route, Arc::new(Counters::default())).await
    }

    /// [`RouteTransform::for_route`] counting into `counters`.
    pub async fn for_route_with_counters(
        host: &Arc<PluginHost>,
        route: &Route,
        counters: Arc<Counters>,
    ) -> Result<Arc<RouteTransform>> {
        let path = route
            .component_path
            .as_deref()
            .with_context(|| format!("route {} has no transform component", route.name()))?;
        let limits = route
            .config
            .transform
            .as_ref()
            .map(|t| t.limits.clone())
            .unwrap_or_default();
        if limits.memory.0 > MAX_MEMORY {
            anyhow::bail!(
                "route {}: transform.limits.memory ({} bytes) is above the host's maximum of {MAX_MEMORY} bytes",
                route.name(),
                limits.memory.0
            );
        }
        let plugin = host.load(path)?;
        let t = RouteTransform::with_counters(
            host,
            plugin,
            route.name(),
            route.transform_config_json.clone(),
            &limits,
            counters,
        );
        t.prepare()
            .await
            .with_context(|| format!("route {}: plugin {}", route.name(), path.display()))?;
        Ok(t)
    }

    /// Creates and configures an instance and keeps it idle for the next call.
    pub async fn prepare(&self) -> Result<(), TransformError> {
        match self.instantiate().await {
            Ok(live) => {
                self.give_back(live);
                Ok(())
            }
            Err(e) => {
                self.counters.count_error(&e);
                Err(e)
            }
        }
    }

    /// Drops every idle instance: the next call starts on a fresh one.
    pub fn discard_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Instances currently idle in the pool.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }
    pub fn route(&self) -> &str {
        &self.route
    }
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
    pub fn snapshot(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }
    pub fn has_before(&self) -> bool {
        self.plugin.has_before()
    }
    pub fn has_after(&self) -> bool {
        self.plugin.has_after()
    }

    /// Runs `before-invoke`; without that export, invokes with the payload unchanged.
    pub async fn before_invoke(
        &self,
        msg: &HookMessage<'_>,
    ) -> Result<PreDecision, TransformError> {
        if !self.has_before() {
            return Ok(PreDecision::Invoke {
                input: Bytes::copy_from_slice(msg.payload),
                function: None,
            });
        }
        let started = Instant::now();
        let result = self.before_inner(msg).await;
        self.account(started, &result);
        result
    }

    /// Runs `after-invoke` on the function's reply; without that export,
    /// publishes the reply once to the route's topic.
    pub async fn after_invoke(
        &self,
        msg: &HookMessage<'_>,
        reply: &str,
    ) -> Result<Vec<OutMessage>, TransformError> {
        if !self.has_after() {
            return Ok(vec![OutMessage::reply(reply.to_string(), Vec::new())]);
        }
        let started = Instant::now();
        let result = self.after_inner(msg, reply).await;
        self.account(started, &result);
        result
    }

    fn account<T>(&self, started: Instant, result: &Result<T, TransformError>) {
        let c = &self.counters;
        c.calls.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        c.call_time_us.fetch_add(us, Ordering::Relaxed);
        if let Err(e) = result {
            c.count_error(e);
        }
    }

    async fn before_inner(&self, msg: &HookMessage<'_>) -> Result<PreDecision, TransformError> {
        let mut live = self.take().await?;
        let Live { store, before, .. } = &mut live;
        let Some(guest) = before.as_ref() else {
            return Err(TransformError::Trap("before-invoke is not exported".into()));
        };
        self.arm(store, self.timeout);
        let call = guest.call_transform(&mut *store, msg);
        let raw = tokio::time::timeout(self.timeout, call).await;
        self.finish(live, raw, self.timeout, "")
    }

    async fn after_inner(
        &self,
        msg: &HookMessage<'_>,
        reply: &str,
    ) -> Result<Vec<OutMessage>, TransformError> {
        let mut live = self.take().await?;
        let Live { store, after, .. } = &mut live;
        let Some(guest) = after.as_ref() else {
            return Err(TransformError::Trap("after-invoke is not exported".into()));
        };
        self.arm(store, self.timeout);
        let call = guest.call_transform(&mut *store, msg, reply);
        let raw = tokio::time::timeout(self.timeout, call).await;
        self.finish(live, raw, self.timeout, "")
    }

    /// Classifies the outcome of a guest call and returns the instance to the
    /// pool unless the guest was stopped.
    fn finish<T>(
        &self,
        live: Live,
        raw: Result<wasmtime::Result<Result<T, String>>, tokio::time::error::Elapsed>,
        timeout: Duration,
        context: &str,
    ) -> Result<T, TransformError> {
        match classify(&live.store, raw, timeout, self.memory, self.fuel, context) {
            Ok(Ok(v)) => {
                self.give_back(live);
                Ok(v)
            }
            Ok(Err(reason)) => {
                self.give_back(live);
                Err(TransformError::Guest(reason))
            }
            Err(e) => {
                self.counters
                    .instances_discarded
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Sets the deadline (and fuel) of the next guest call.
    fn arm(&self, store: &mut Store<HostState>, timeout: Duration) {
        let data = store.data_mut();
        data.deadline = Some(Instant::now() + timeout);
        data.timed_out = false;
        data.limiter.hit.store(false, Ordering::Relaxed);
        if let Ok(mut tail) = data.stderr_tail.lock() {
            tail.clear();
        }
        store.set_epoch_deadline(1);
        if self.host.fuel_metering {
            // Without a per-route fuel limit the call may use (practically) all.
            let _ = store.set_fuel(self.fuel.unwrap_or(u64::MAX));
        }
    }

    /// An idle instance, or a new one. A caller that waited for its turn to
    /// create looks again first: an instance may have come back meanwhile.
    async fn take(&self) -> Result<Live, TransformError> {
        if let Some(live) = self.pop_idle() {
            return Ok(live);
        }
        let _turn = self.creating.lock().await;
        match self.pop_idle() {
            Some(live) => Ok(live),
            None => self.instantiate().await,
        }
    }

    fn pop_idle(&self) -> Option<Live> {
        self.idle.lock().ok().and_then(|mut i| i.pop())
    }

    fn give_back(&self, live: Live) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(live);
        }
    }

    /// Creates an instance and runs `configure` on it.
    async fn instantiate(&self) -> Result<Live, TransformError> {
        let memory = usize::try_from(self.memory).unwrap_or(usize::MAX);
        let state = HostState::new(memory, Arc::clone(&self.counters), Arc::clone(&self.log));
        let mut store = Store::new(&self.host.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.lift_limit);
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            if data.deadline.is_some_and(|d| Instant::now() >= d) {
                data.timed_out = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let setup_timeout = self.timeout.max(MIN_SETUP_TIMEOUT);
        // Errors are counted by the caller (a hook call, or `prepare`).
        self.arm(&mut store, setup_timeout);
        let instance = match tokio::time::timeout(
            setup_timeout,
            self.plugin.pre.instantiate_async(&mut store),
        )
        .await
        {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                let memory_hit = store.data().limiter.hit.load(Ordering::Relaxed);
                return Err(if memory_hit {
                    TransformError::MemoryLimit {
                        limit: self.memory,
                        detail: format!("while instantiating: {}", summary(&e)),
                    }
                } else {
                    TransformError::InstantiationFailed(summary(&e))
                });
            }
            Err(_) => return Err(TransformError::Timeout(setup_timeout)),
        };
        fn exported<G>(r: wasmtime::Result<G>) -> Result<G, TransformError> {
            r.map_err(|e| TransformError::InstantiationFailed(summary(&e)))
        }
        let setup = exported(self.plugin.setup.load(&mut store, &instance))?;
        let before = match &self.plugin.before {
            Some(i) => Some(exported(i.load(&mut store, &instance))?),
            None => None,
        };
        let after = match &self.plugin.after {
            Some(i) => Some(exported(i.load(&mut store, &instance))?),
            None => None,
        };
        self.counters
            .instances_created
            .fetch_add(1, Ordering::Relaxed);
        self.arm(&mut store, setup_timeout);
        let raw = tokio::time::timeout(
            setup_timeout,
            setup.call_configure(&mut store, &self.config_json),
        )
        .await;
        match classify(
            &store,
            raw,
            setup_timeout,
            self.memory,
            self.fuel,
            "in configure: ",
        ) {
            Ok(Ok(())) => Ok(Live {
                store,
                before,
                after,
            }),
            Ok(Err(reason)) => Err(TransformError::ConfigureFailed(reason)),
            Err(e) => Err(e),
        }
    }
}

/// Sorts a guest call's outcome: `Ok(Ok)` returned, `Ok(Err)` a guest error,
/// `Err` the guest was stopped.
fn classify<T>(
    store: &Store<HostState>,
    raw: Result<wasmtime::Result<Result<T, String>>, tokio::time::error::Elapsed>,
    timeout: Duration,
    memory: u64,
    fuel: Option<u64>,
    context: &str,
) -> Result<Result<T, String>, TransformError> {
    let e = match raw {
        Ok(Ok(r)) => return Ok(r),
        Err(_) => return Err(TransformError::Timeout(timeout)),
        Ok(Err(e)) => e,
    };
    let data = store.data();
    // wasmtime's error type for exhausted hostcall fuel is private; its text is
    // the documented sign that lifting the results hit the limit.
    if e.root_cause()
        .to_string()
        .contains("too much data is being copied between the host and the guest")
    {
        return Err(TransformError::OutputLimit(format!(
            "{context}the results need more than the host takes out of a plugin in one call; raise transform.limits.max_output_bytes"
        )));
    }
    let trap = e.downcast_ref::<Trap>().copied();
    if data.timed_out || trap == Some(Trap::Interrupt) {
        return Err(TransformError::Timeout(timeout));
    }
    if trap == Some(Trap::OutOfFuel) {
        return Err(TransformError::FuelExhausted(fuel.unwrap_or(u64::MAX)));
    }
    let mut detail = format!("{context}{}", summary(&e));
    if let Some(tail) = data.stderr_tail() {
        detail.push_str(&format!(" (stderr: {tail})"));
    }
    if data.limiter.hit.load(Ordering::Relaxed) {
        return Err(TransformError::MemoryLimit {
            limit: memory,
            detail,
        });
    }
    Err(TransformError::Trap(detail))
}

/// The error's cause (the trap message) and the first frames of its wasm
/// backtrace, on one line, bounded.
fn summary(e: &wasmtime::Error) -> String {
    let mut out = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    let full = format!("{e:?}");
    let frames: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .take(3)
        .collect();
    if !frames.is_empty() {
        out.push_str(" (at ");
        out.push_str(&frames.join("; "));
        out.push(')');
    }
    if out.len() > 1024 {
        let mut end = 1024;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The most bytes the host lifts out of one call: room for every result's
/// payload (`max_output_bytes`) and their records, or for a pre hook's input
/// as large as the gateway's default message limit (4 MiB), whichever is more.
fn lift_limit(limits: &TransformLimits) -> usize {
    const RECORD: usize = 256; // an `outgoing` on the host, strings aside
    let outputs = limits
        .max_output_bytes
        .as_usize()
        .saturating_add(limits.max_outputs.saturating_mul(RECORD));
    outputs.max(4 << 20).saturating_add(64 << 10)
}
