//! The settings as written in `bridge.yaml`: one serde struct per section,
//! every key optional where a sensible default exists (the `default_*`
//! functions), unknown keys refused. Values are checked for meaning in
//! [`super::check`]; the validated model is [`super::Config`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{ByteSize, GrpcCode, Protocol, Secret};
use crate::message::QoS;
use crate::tls::TlsFiles;

/// `mqtt:` the broker connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`. May be omitted when `broker:`
    /// runs the embedded broker; the bridge then connects to it.
    #[serde(default)]
    pub url: Option<String>,
    /// Must be stable across restarts: the broker keeps the session, and with it
    /// the messages that arrive while the bridge is down, under this id.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// `clean_session = false` (3.1.1) or a session expiry (5). On by default,
    /// because without it messages published while the bridge is away are lost.
    #[serde(default = "yes")]
    pub persistent_session: bool,
    /// MQTT 5 only: how long the broker keeps the session after a disconnect.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    #[serde(default)]
    pub username: Option<Secret>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The largest message the bridge processes. A larger one is dead-lettered
    /// (without its payload) and acknowledged, so it cannot loop forever.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub reconnect: Backoff,
    /// Messages received but not yet finished, across all routes. At this limit
    /// the bridge stops reading from the broker until work completes.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// The highest QoS the bridge publishes at (1 or 2): a result or reply
    /// asked at a higher QoS goes out at this one. For brokers without QoS 2
    /// (NATS closes the connection of a QoS 2 PUBLISH). Under MQTT 5 the
    /// broker's CONNACK Maximum QoS also applies.
    #[serde(default = "default_max_qos")]
    pub max_qos: QoS,
    /// On a graceful stop, unsubscribe the `$share/...` filters first and
    /// finish what the broker still delivers, so a replica that leaves (a
    /// scale-down) strands nothing in its session: the group's other members
    /// take the rest. Off: the broker keeps queueing shares to the stopped
    /// replica's session until it returns (the last member of a group should
    /// keep them, or they are dropped while no member is subscribed).
    #[serde(default = "yes")]
    pub leave_shared_on_stop: bool,
}

fn default_max_qos() -> QoS {
    QoS::ExactlyOnce
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max: Duration,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_initial_backoff(),
            max: default_max_backoff(),
            multiplier: default_multiplier(),
        }
    }
}

impl Backoff {
    /// The delay before retry number `n` (0 for the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// `gateway:` the OpenFx gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `http://host:port` (plaintext, as the stock gateway) or `https://host:port`.
    pub url: String,
    /// Deadline of one Invoke call; the gateway's own is minutes long.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Invoke calls in flight at once, over all routes, on one HTTP/2 channel.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Only with `https://`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Largest reply accepted (gRPC's default, 4 MiB, matches the gateway).
    #[serde(default = "default_grpc_message_size")]
    pub max_message_size: ByteSize,
    /// HTTP/2 PINGs while calls are in flight, to replace a connection that
    /// went silent.
    #[serde(default)]
    pub keep_alive: KeepAlive,
    /// MQTT 5 user properties sent with Invoke as gRPC metadata, by name
    /// (case-insensitive): W3C trace context by default. The gateway ignores
    /// metadata it does not know.
    #[serde(default = "default_forward_user_properties")]
    pub forward_user_properties: Vec<String>,
}

/// `gateway.keep_alive`: HTTP/2 PINGs while calls are in flight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepAlive {
    /// A PING after this long without a frame from the gateway; `0s` turns
    /// PINGs off.
    #[serde(default = "default_keep_alive_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A PING not answered within this closes the connection.
    #[serde(default = "default_keep_alive_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            interval: default_keep_alive_interval(),
            timeout: default_keep_alive_timeout(),
        }
    }
}

/// `unrouted:` what happens to a message no route takes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnroutedConfig {
    /// Topic template of its dead letter: `{topic}`, and `{route}` for the
    /// session that received it.
    #[serde(default = "default_unrouted_dead_letter")]
    pub dead_letter: String,
}

impl Default for UnroutedConfig {
    fn default() -> Self {
        UnroutedConfig {
            dead_letter: default_unrouted_dead_letter(),
        }
    }
}

/// `broker:` run an MQTT broker inside the bridge (rumqttd), for single-binary
/// edge devices and the demo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Address the embedded broker listens on, e.g. `127.0.0.1:1883`.
    pub listen: std::net::SocketAddr,
    #[serde(default = "default_broker_connections")]
    pub max_connections: usize,
}

/// `plugins:` settings of the WebAssembly host that apply to every route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Where compiled components are cached; `~/.cache/fxbridge` by default.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Turns the compile cache off.
    #[serde(default = "yes")]
    pub cache: bool,
    /// WebAssembly stack limit of every plugin call.
    #[serde(default = "default_wasm_stack")]
    pub max_stack: ByteSize,
    /// Enables fuel metering (needed by `limits.fuel`); costs some speed everywhere.
    #[serde(default)]
    pub fuel_metering: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            cache_dir: None,
            cache: true,
            max_stack: default_wasm_stack(),
            fuel_metering: false,
        }
    }
}

/// `shutdown:` how SIGTERM/SIGINT are handled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight messages may take to finish after a stop signal.
    /// What has not finished by then is not acknowledged, so the broker
    /// redelivers it on the next start.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// `buffer:` where received messages wait until they are finished.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    #[serde(default)]
    pub kind: BufferKind,
    /// The journal's file (`kind: disk`); `<state_dir>/journal.db` by default.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The most the journal takes on disk (database and WAL).
    #[serde(default = "default_buffer_max_size")]
    pub max_size: ByteSize,
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferKind::Memory,
            path: None,
            max_size: default_buffer_max_size(),
            when_full: WhenFull::Block,
        }
    }
}

fn default_buffer_max_size() -> ByteSize {
    ByteSize(1 << 30)
}

/// `buffer.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BufferKind {
    /// Messages wait in the broker until they are finished (acknowledged then).
    #[default]
    Memory,
    /// Messages are acknowledged once durably in the local journal and
    /// processed from there (store and forward).
    Disk,
}

/// `buffer.when_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop reading from the broker until there is room (the broker holds the rest).
    #[default]
    Block,
    /// Drop the oldest messages to make room, each counted and logged.
    DropOldest,
}

/// `telemetry:` W3C trace context on every message, and its spans over OTLP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Carry W3C trace context through the bridge: a message's `traceparent`
    /// (and `tracestate`) user property, or a trace the bridge starts when it
    /// has none, goes to the gateway as gRPC metadata and onto every result
    /// and dead letter (MQTT 5).
    #[serde(default = "yes")]
    pub propagate: bool,
    /// Export the spans of every message (receive, before-invoke, invoke,
    /// after-invoke, publish, dead-letter) to an OTLP/gRPC collector.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            propagate: true,
            otlp: None,
        }
    }
}

/// `telemetry.otlp:` where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// How often finished spans are sent (in batches).
    #[serde(default = "default_export_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Spans waiting to be sent at most; beyond it new spans are dropped
    /// (and counted by the exporter), never the messages.
    #[serde(default = "default_span_queue")]
    pub max_queue: usize,
}

fn default_service_name() -> String {
    "fxbridge".to_string()
}

fn default_export_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_span_queue() -> usize {
    2048
}

/// `admin:` an HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback unless you open it on purpose (`0.0.0.0:9090` in a pod).
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// A bearer token every request but `/healthz` and `/readyz` must carry
    /// (`Authorization: Bearer <token>`): a string, `{env: VAR}` or `{file: path}`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Connections served at once; beyond it the endpoint stops accepting
    /// (they wait in the kernel's queue, not in the bridge's file descriptors).
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
    /// A request whose headers do not arrive within this is dropped; a
    /// connection lives at most ten times as long.
    #[serde(default = "default_admin_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
}

/// One entry of `routes:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique; used in logs, counters, templates (`{route}`) and dead letters.
    pub name: String,
    /// MQTT topic filter: `+`, `#`, and `$share/<group>/<filter>`.
    pub topic: String,
    /// QoS of the subscription.
    #[serde(default = "qos1")]
    pub qos: QoS,
    /// OpenFx function invoked with each message.
    pub function: String,
    /// Where the function's reply is published; no republish when absent.
    #[serde(default)]
    pub republish: Option<RepublishConfig>,
    #[serde(default)]
    pub ordering: Order,
    /// Messages of this route in progress at once (queued behind a busy topic
    /// included).
    #[serde(default = "default_route_in_flight")]
    pub max_in_flight: usize,
    /// Overrides `gateway.timeout` for this route.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Topic template for messages that cannot be processed.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    /// The subscriber session (MQTT connection) that receives this route's
    /// messages; the route's own (its name) when absent. Routes in one session
    /// share its acknowledgement order, so a slow one delays the others.
    #[serde(default)]
    pub session: Option<String>,
    /// What to do with retained messages the broker replays on subscribing.
    #[serde(default)]
    pub retained: Retained,
    /// Replies to MQTT 5 requests (messages with a Response Topic).
    #[serde(default)]
    pub response: ResponseConfig,
}

/// `routes[].response`: under MQTT 5, a message with a Response Topic is a
/// request, and the results for the route's republish target are its reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Topic filters a response topic must match; empty: any topic but the
    /// route's own input and dead-letter topics (never allowed).
    #[serde(default)]
    pub allow: Vec<String>,
    /// QoS of the reply; the request's when absent.
    #[serde(default)]
    pub qos: Option<QoS>,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            enabled: true,
            allow: Vec::new(),
            qos: None,
        }
    }
}

/// `routes[].retained`: retained messages, which a broker sends (RETAIN set)
/// whenever a subscription is made, also again after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retained {
    /// Process every retained message the broker sends.
    #[default]
    Process,
    /// Skip the ones replayed on a filter this session subscribed before (a
    /// restart, a reconnect to a broker that lost the session); process them
    /// on a filter new to the session.
    SkipOnResubscribe,
    /// Never process a message delivered with RETAIN set.
    Skip,
}

/// `routes[].republish`: where results go, and where a plugin may publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    /// Template: `{topic}`, `{route}`, `{1}`..`{n}` (the wildcard captures).
    /// Without it, results need a topic of their own (from the plugin).
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default = "qos1")]
    pub qos: QoS,
    #[serde(default)]
    pub retain: bool,
    /// Topic filters a plugin's results may name as their topic. Empty: the
    /// topics `topic` can render into. Also what may pass the loop guard.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Whether a plugin's result with a topic of its own may set RETAIN
    /// (results on `topic` follow `retain`).
    #[serde(default)]
    pub allow_retain: bool,
    /// MQTT 5 user properties added to every result of the route (after the
    /// ones the result has), e.g. `[[source, fxbridge], [site, edge-7]]`.
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
}

/// Order in which a route processes messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Messages of one topic one after another, in arrival order; different
    /// topics in parallel.
    #[default]
    PerTopic,
    /// Everything in parallel, up to `max_in_flight`.
    None,
}

/// `routes[].retry`: what happens when Invoke fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts for an error whose code is in `on`, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// gRPC codes worth retrying; any other code dead-letters at once.
    #[serde(default = "default_retry_codes")]
    pub on: Vec<GrpcCode>,
    /// While the gateway cannot be reached (UNAVAILABLE), keep retrying without
    /// using up attempts: a gateway outage delays messages instead of
    /// dead-lettering them.
    #[serde(default = "yes")]
    pub wait_while_unavailable: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            backoff: Backoff::default(),
            on: default_retry_codes(),
            wait_while_unavailable: true,
        }
    }
}

/// `routes[].transform`: a WebAssembly component run before and/or after Invoke.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Path of the `.wasm` component, relative to bridge.yaml.
    pub component: PathBuf,
    /// Handed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub config: serde_yaml::Value,
    #[serde(default)]
    pub limits: TransformLimits,
}

/// `routes[].transform.limits`: the sandbox of one route's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformLimits {
    /// Wall-clock deadline of one hook call.
    #[serde(default = "default_plugin_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Linear memory an instance may grow to.
    #[serde(default = "default_plugin_memory")]
    pub memory: ByteSize,
    /// Fuel per hook call (needs `plugins.fuel_metering: true`).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Results the post hook may return for one message.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: usize,
    /// Payload bytes of all results of one message together.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: ByteSize,
    /// Lines per second the plugin may log (`host.log`, stdout, stderr), over
    /// all of the route's instances...
    #[serde(default = "default_log_lines_per_second")]
    pub log_lines_per_second: u32,
    /// ...with this many lines of credit for a burst.
    #[serde(default = "default_log_burst")]
    pub log_burst: u32,
    /// The highest level a plugin's line is logged at.
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
}

/// A log level, as `transform.limits.log_level` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Default for TransformLimits {
    fn default() -> Self {
        TransformLimits {
            timeout: default_plugin_timeout(),
            memory: default_plugin_memory(),
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            log_lines_per_second: default_log_lines_per_second(),
            log_burst: default_log_burst(),
            log_level: default_log_level(),
            fuel: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn qos1() -> QoS {
    QoS::AtLeastOnce
}
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "fxbridge".to_string()
    } else {
        format!("fxbridge-{host}")
    }
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_packet_size() -> ByteSize {
    ByteSize::mib(1)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_pending() -> usize {
    1000
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_forward_user_properties() -> Vec<String> {
    vec!["traceparent".into(), "tracestate".into()]
}
fn default_max_concurrent() -> usize {
    64
}
fn default_grpc_message_size() -> ByteSize {
    ByteSize::mib(4)
}
fn default_broker_connections() -> usize {
    1000
}
fn default_wasm_stack() -> ByteSize {
    ByteSize::kib(512)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_route_in_flight() -> usize {
    32
}
fn default_dead_letter() -> String {
    "fxbridge/dead-letter/{route}".to_string()
}
fn default_attempts() -> u32 {
    5
}
fn default_retry_codes() -> Vec<GrpcCode> {
    vec![
        GrpcCode::Unavailable,
        GrpcCode::DeadlineExceeded,
        GrpcCode::ResourceExhausted,
        GrpcCode::Aborted,
        GrpcCode::Internal,
        GrpcCode::Unknown,
    ]
}
fn default_plugin_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_plugin_memory() -> ByteSize {
    ByteSize::mib(64)
}
fn default_log_lines_per_second() -> u32 {
    10
}
fn default_log_burst() -> u32 {
    100
}
fn default_log_level() -> LogLevel {
    LogLevel::Warn
}
fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_admin_connections() -> usize {
    64
}
fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_outputs() -> usize {
    100
}
fn default_max_output_bytes() -> ByteSize {
    ByteSize::mib(4)
}
fn default_keep_alive_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_alive_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_unrouted_dead_letter() -> String {
    "fxbridge/dead-letter/unrouted".to_string()
}
