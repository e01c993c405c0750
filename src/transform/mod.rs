//! WebAssembly transforms: the wasmtime host that runs a route's plugin before
//! and after Invoke (contract: `wit/transform.wit`, package
//! `fxbridge:transform@0.1.0`).
//!
//! - [`PluginHost`] (one per process): the engine (async, epoch interruption,
//!   pooling allocator, optional fuel), the linker (WASI p2 with every
//!   capability off + the `host` interface), the epoch ticker, and the compile
//!   cache on disk and in memory.
//! - [`Plugin`]: one compiled, linked component; shared by every route that
//!   uses the same file content.
//! - [`RouteTransform`]: one route's use of a plugin: its config, its limits,
//!   its pool of instances and its [`Counters`].
//!
//! # State semantics
//! An instance is configured once (`setup.configure` with the route's config)
//! and then reused for message after message, so a plugin's in-memory state
//! persists between messages *of the same instance*. A call never runs on an
//! instance that another call is using: a call takes an idle instance from the
//! route's pool, or creates (and configures) a new one when none is idle, and
//! gives it back afterwards. With concurrent messages a route may therefore
//! have several instances, each with its own state. A guest error (`err` from
//! a hook) keeps the instance; anything else (trap, timeout, memory cap, fuel)
//! discards it, and the next call gets a fresh one. A reload builds a new
//! [`RouteTransform`], hence new instances; in-flight messages finish on the
//! old one.
//!
//! # Sandbox of one call
//! Wall-clock deadline `limits.timeout`, enforced twice: on every epoch tick
//! (guest code is interrupted and yields to tokio) and by `tokio::time::timeout`
//! around the call (a guest blocked in a WASI host call, e.g. a sleep). Each
//! linear memory is capped at `limits.memory`; a call that hits the cap and
//! traps is reported as `memory_limit`. Fuel per call when `plugins.fuel_metering`
//! and `limits.fuel` are set. Instantiation + `configure` get the same limits,
//! with a deadline of at least [`MIN_SETUP_TIMEOUT`].

mod bindings;
mod host;
mod log;
mod plugin;
mod route;
mod sandbox;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use host::{
    default_cache_dir, precompile, precompiled_path, CacheSnapshot, PluginHost,
    PRECOMPILED_EXTENSION,
};
pub use plugin::{Origin, Plugin, WIT_PACKAGE, WIT_VERSION};
pub use route::{RouteTransform, MIN_SETUP_TIMEOUT};
pub use sandbox::{PoolLimits, EPOCH_TICK, MAX_MEMORY, POOL};

use crate::message::QoS;

/// What a hook sees of a message.
#[derive(Debug, Clone, Copy)]
pub struct HookMessage<'a> {
    pub route: &'a str,
    pub function: &'a str,
    pub topic: &'a str,
    pub captures: &'a [String],
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub user_properties: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    /// MQTT 5 payload format indicator (UTF-8, checked).
    pub utf8: bool,
    pub response_topic: Option<&'a str>,
    pub correlation_data: Option<&'a [u8]>,
}

/// A hook call that failed. Only [`TransformError::Guest`] keeps the instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The hook returned `err(reason)`.
    #[error("plugin error: {0}")]
    Guest(String),
    /// The guest trapped (panic, `unreachable`, stack overflow, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call did not finish within the route's `limits.timeout`.
    #[error("plugin call exceeded its {0:?} deadline")]
    Timeout(Duration),
    /// A linear memory would have grown past `limits.memory`.
    #[error("plugin exceeded its memory limit of {limit} bytes: {detail}")]
    MemoryLimit { limit: u64, detail: String },
    /// The call used up `limits.fuel`.
    #[error("plugin ran out of fuel ({0} units per call)")]
    FuelExhausted(u64),
    /// `setup.configure` returned `err(reason)` for the route's config.
    #[error("plugin configure failed: {0}")]
    ConfigureFailed(String),
    /// A new instance could not be created (for example the instance pool is full).
    #[error("plugin instantiation failed: {0}")]
    InstantiationFailed(String),
    /// The hook returned more data than the host takes out of a guest in one
    /// call (`limits.max_output_bytes` and the largest input).
    #[error("plugin returned too much data: {0}")]
    OutputLimit(String),
}

impl TransformError {
    /// The failure class, as put in dead letters and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::Guest(_) => "guest_error",
            TransformError::Trap(_) => "trap",
            TransformError::Timeout(_) => "timeout",
            TransformError::MemoryLimit { .. } => "memory_limit",
            TransformError::FuelExhausted(_) => "fuel_exhausted",
            TransformError::ConfigureFailed(_) => "configure_failed",
            TransformError::InstantiationFailed(_) => "instantiation_failed",
            TransformError::OutputLimit(_) => "output_limit",
        }
    }

    /// The guest was stopped (trap, timeout, memory cap, fuel): its instance is gone.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            TransformError::Trap(_)
                | TransformError::Timeout(_)
                | TransformError::MemoryLimit { .. }
                | TransformError::FuelExhausted(_)
                | TransformError::OutputLimit(_)
        )
    }
}

/// Per-route counters; read them with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Hook calls (before and after), whatever their outcome.
    pub calls: AtomicU64,
    pub guest_errors: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_limits: AtomicU64,
    /// Calls whose results were more than the host takes out of a guest.
    pub output_limits: AtomicU64,
    pub fuel_exhausted: AtomicU64,
    pub configure_failed: AtomicU64,
    pub instantiation_failed: AtomicU64,
    /// Total time spent in hook calls, µs (instantiation included when a call needed one).
    pub call_time_us: AtomicU64,
    /// Instances created (and configured) for this route.
    pub instances_created: AtomicU64,
    /// Instances dropped after a failure.
    pub instances_discarded: AtomicU64,
    /// Lines the plugin wrote with `host.log`, stdout and stderr.
    pub log_lines: AtomicU64,
    /// Of those, lines dropped because the route's log budget was spent.
    pub log_suppressed: AtomicU64,
    pub stdout_lines: AtomicU64,
    pub stderr_lines: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub calls: u64,
    pub guest_errors: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub memory_limits: u64,
    pub output_limits: u64,
    pub fuel_exhausted: u64,
    pub configure_failed: u64,
    pub instantiation_failed: u64,
    pub call_time_us: u64,
    pub instances_created: u64,
    pub instances_discarded: u64,
    pub log_lines: u64,
    pub log_suppressed: u64,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
}

impl CountersSnapshot {
    /// Errors of every kind.
    pub fn errors(&self) -> u64 {
        self.guest_errors
            + self.traps
            + self.timeouts
            + self.memory_limits
            + self.output_limits
            + self.fuel_exhausted
            + self.configure_failed
            + self.instantiation_failed
    }
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            calls: g(&self.calls),
            guest_errors: g(&self.guest_errors),
            traps: g(&self.traps),
            timeouts: g(&self.timeouts),
            memory_limits: g(&self.memory_limits),
            output_limits: g(&self.output_limits),
            fuel_exhausted: g(&self.fuel_exhausted),
            configure_failed: g(&self.configure_failed),
            instantiation_failed: g(&self.instantiation_failed),
            call_time_us: g(&self.call_time_us),
            instances_created: g(&self.instances_created),
            instances_discarded: g(&self.instances_discarded),
            log_lines: g(&self.log_lines),
            log_suppressed: g(&self.log_suppressed),
            stdout_lines: g(&self.stdout_lines),
            stderr_lines: g(&self.stderr_lines),
        }
    }

    fn count_error(&self, e: &TransformError) {
        let c = match e {
            TransformError::Guest(_) => &self.guest_errors,
            TransformError::Trap(_) => &self.traps,
            TransformError::Timeout(_) => &self.timeouts,
            TransformError::MemoryLimit { .. } => &self.memory_limits,
            TransformError::FuelExhausted(_) => &self.fuel_exhausted,
            TransformError::ConfigureFailed(_) => &self.configure_failed,
            TransformError::InstantiationFailed(_) => &self.instantiation_failed,
            TransformError::OutputLimit(_) => &self.output_limits,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
