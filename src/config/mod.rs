//! `bridge.yaml`: typed settings, validated completely before anything connects.
//!
//! Loading runs in three passes, each collecting every error it finds:
//! 1. YAML syntax (serde_yaml), which stops at the first syntax error;
//! 2. shape: each section and each route is deserialised on its own, with
//!    `deny_unknown_fields`, so one bad route does not hide the errors of another;
//! 3. meaning: topic filters, templates, names, limits, files and secrets.
//!
//! Every error carries the dotted path of the setting (`routes[1].qos`) and its
//! line and column, found through [`locate`]. The result is a [`Config`] whose
//! routes are compiled ([`Route`]), so the rest of the bridge never re-parses.

pub mod locate;
mod values;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use self::values::{ByteSize, GrpcCode, Protocol, Secret};
use crate::message::QoS;
use crate::topic::{Template, TopicFilter};
use locate::Positions;

// ---------------------------------------------------------------------------
// The settings, as written in bridge.yaml.
// ---------------------------------------------------------------------------

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
}

/// Certificates for `mqtts://` or `https://`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM CA bundle; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Server name to verify, when it differs from the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
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

/// `admin:` an HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
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
    pub ordering: Ordering,
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
}

/// `routes[].republish`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    /// Template: `{topic}`, `{route}`, `{1}`..`{n}` (the wildcard captures).
    pub topic: String,
    #[serde(default = "qos1")]
    pub qos: QoS,
    #[serde(default)]
    pub retain: bool,
}

/// Order in which a route processes messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
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
}

impl Default for TransformLimits {
    fn default() -> Self {
        TransformLimits {
            timeout: default_plugin_timeout(),
            memory: default_plugin_memory(),
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

// ---------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------

/// A route after validation: its settings plus the parsed filter and templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub config: RouteConfig,
    pub filter: TopicFilter,
    pub republish: Option<Template>,
    pub dead_letter: Template,
    /// `transform.config` as a JSON document (`null` when absent).
    pub transform_config_json: String,
    /// `transform.component` resolved against bridge.yaml's directory.
    pub component_path: Option<PathBuf>,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Credentials after their secrets were read.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A complete, validated bridge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mqtt: MqttConfig,
    /// `mqtt.url`, or the embedded broker's address.
    pub mqtt_url: String,
    pub credentials: Option<Credentials>,
    pub gateway: GatewayConfig,
    pub broker: Option<EmbeddedBrokerConfig>,
    pub plugins: PluginsConfig,
    pub shutdown: ShutdownConfig,
    pub admin: Option<AdminConfig>,
    pub routes: Vec<Route>,
    /// Directory that relative paths in the file are taken from.
    pub base_dir: PathBuf,
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the setting, e.g. `routes[1].qos`; empty for the whole file.
    pub path: String,
    pub location: Option<locate::Location>,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file as named by the user.
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(loc) = e.location {
                write!(f, ":{}:{}", loc.line, loc.col)?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Collects errors with their locations while the file is checked.
struct Collector<'a> {
    positions: &'a Positions,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        // Whole-file problems have no single line to point at.
        let location = if path.is_empty() {
            None
        } else {
            self.positions.nearest(&path)
        };
        self.errors.push(ConfigError {
            path,
            location,
            message: message.into(),
        });
    }

    /// Deserialises one section, recording every error it can find.
    ///
    /// serde stops at the first error, so after each one the offending key is
    /// removed and the section is tried again (up to a bound): an unknown field,
    /// a value of the wrong type, and a bad value elsewhere in the same route are
    /// all reported in one pass. The section is returned (with defaults where keys
    /// were removed) so that the semantic checks can run on it too; the file is
    /// rejected anyway because errors were recorded.
    fn section<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        mut value: serde_yaml::Value,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..32 {
            let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut segments: Vec<PathSegment> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => {
                        Some(PathSegment::Key(key.clone()))
                    }
                    _ => None,
                })
                .collect();
            let message = err.into_inner().to_string();
            // serde names an unknown field only in its message.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                if segments.last() != Some(&PathSegment::Key(field.to_string())) {
                    segments.push(PathSegment::Key(field.to_string()));
                }
            }
            let path = render_path(prefix, &segments);
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                // A key removed after an earlier error is not missing for the user.
                let missing = render_path(&path, &[PathSegment::Key(field.to_string())]);
                if !removed.contains(&missing) {
                    self.at(path, message);
                }
                return None;
            }
            let location = if message.starts_with("unknown field") {
                self.positions.key(&path)
            } else {
                self.positions.nearest(&path)
            };
            self.errors.push(ConfigError {
                path: path.clone(),
                location,
                message,
            });
            if segments.is_empty() || !remove_at(&mut value, &segments) {
                return None;
            }
            removed.push(path);
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Key(String),
    Index(usize),
}

fn render_path(prefix: &str, segments: &[PathSegment]) -> String {
    let mut out = prefix.to_string();
    for s in segments {
        match s {
            PathSegment::Key(k) if out.is_empty() => out.push_str(k),
            PathSegment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the node at `path` from `value`; false if there is none.
fn remove_at(value: &mut serde_yaml::Value, path: &[PathSegment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (PathSegment::Key(k), serde_yaml::Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(n) => n,
                None => return false,
            },
            (PathSegment::Index(i), serde_yaml::Value::Sequence(s)) => match s.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (PathSegment::Key(k), serde_yaml::Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (PathSegment::Index(i), serde_yaml::Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

const TOP_LEVEL: &[&str] = &[
    "mqtt", "gateway", "broker", "plugins", "shutdown", "admin", "routes",
];

impl Config {
    /// Reads and validates `path`. Relative paths inside are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Validates YAML `text`; `file` names it in errors, `base_dir` anchors relative paths.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: file.to_string(),
            errors,
        };
        if text.trim().is_empty() {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                location: None,
                message: "the file is empty".into(),
            }]));
        }
        let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            let location = e.location().map(|l| locate::Location {
                line: l.line(),
                col: l.column(),
            });
            // serde_yaml writes " at line X column Y" into the message; the
            // location says it already.
            let message = strip_positions(&e.to_string());
            fail(vec![ConfigError {
                path: String::new(),
                location,
                message: format!("invalid YAML: {message}"),
            }])
        })?;
        let positions = Positions::index(text);
        let mut c = Collector {
            positions: &positions,
            errors: Vec::new(),
        };
        let config = build(doc, base_dir, &mut c);
        match config {
            Some(cfg) if c.errors.is_empty() => Ok(cfg),
            _ => {
                let mut errors = c.errors;
                // In file order; errors without a line (whole-file ones) first.
                errors.sort_by_key(|e| e.location.map(|l| (l.line, l.col)));
                Err(fail(errors))
            }
        }
    }
}

/// Removes " at line X column Y" from a serde_yaml message.
fn strip_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " at line ".len()..];
        let skip = tail
            .find(|c: char| !(c.is_ascii_digit() || c == ' ' || "column".contains(c)))
            .unwrap_or(tail.len());
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

fn build(doc: serde_yaml::Value, base_dir: &Path, c: &mut Collector<'_>) -> Option<Config> {
    let serde_yaml::Value::Mapping(mut top) = doc else {
        c.at(
            "",
            "the top level must be a mapping with `mqtt`, `gateway` and `routes`",
        );
        return None;
    };
    for key in top.keys() {
        match key.as_str() {
            Some(k) if TOP_LEVEL.contains(&k) => {}
            _ => {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_string);
                let location = c.positions.key(&name);
                c.errors.push(ConfigError {
                    path: name.clone(),
                    location,
                    message: format!(
                        "unknown field `{name}`, expected one of {}",
                        TOP_LEVEL
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    let mut take = |name: &str| top.remove(name);

    let mqtt: Option<MqttConfig> = match take("mqtt") {
        Some(v) => c.section("mqtt", v),
        None => c.section("mqtt", serde_yaml::Value::Mapping(Default::default())),
    };
    let gateway: Option<GatewayConfig> = match take("gateway") {
        Some(v) => c.section("gateway", v),
        None => {
            c.at("", "missing section `gateway` (at least `gateway.url`)");
            None
        }
    };
    let broker: Option<Option<EmbeddedBrokerConfig>> = match take("broker") {
        Some(v) => c.section("broker", v).map(Some),
        None => Some(None),
    };
    let plugins: Option<PluginsConfig> = match take("plugins") {
        Some(v) => c.section("plugins", v),
        None => Some(PluginsConfig::default()),
    };
    let shutdown: Option<ShutdownConfig> = match take("shutdown") {
        Some(v) => c.section("shutdown", v),
        None => Some(ShutdownConfig::default()),
    };
    let admin: Option<Option<AdminConfig>> = match take("admin") {
        Some(v) => c.section("admin", v).map(Some),
        None => Some(None),
    };
    let raw_routes: Vec<Option<RouteConfig>> = match take("routes") {
        Some(serde_yaml::Value::Sequence(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| c.section(&format!("routes[{i}]"), v))
            .collect(),
        Some(serde_yaml::Value::Null) | None => {
            c.at("routes", "no routes: add at least one under `routes:`");
            Vec::new()
        }
        Some(_) => {
            c.at("routes", "`routes` must be a list");
            Vec::new()
        }
    };

    let credentials = mqtt.as_ref().and_then(|m| check_mqtt(m, base_dir, c));
    let mqtt_url = match (&mqtt, &broker) {
        (Some(m), Some(b)) => match (&m.url, b) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(b)) => Some(format!("mqtt://{}", b.listen)),
            (None, None) => {
                c.at(
                    "mqtt",
                    "missing `mqtt.url` (or a `broker:` section to run the embedded broker)",
                );
                None
            }
        },
        _ => None,
    };
    if let Some(url) = &mqtt_url {
        if let Err(e) = check_url(url, &["mqtt", "mqtts"]) {
            c.at("mqtt.url", e);
        }
        if let Some(m) = &mqtt {
            if m.tls.is_some() && url.starts_with("mqtt://") {
                c.at(
                    "mqtt.tls",
                    "TLS settings need an mqtts:// URL; refusing to connect in plaintext",
                );
            }
        }
    }
    if let Some(g) = &gateway {
        check_gateway(g, c);
    }
    if let Some(p) = &plugins {
        if p.max_stack.0 < 64 * 1024 {
            c.at("plugins.max_stack", "must be at least 64KiB");
        }
    }
    if let Some(s) = &shutdown {
        if s.drain_timeout.is_zero() {
            c.at("shutdown.drain_timeout", "must be longer than zero");
        }
    }

    let fuel_metering = plugins.as_ref().is_some_and(|p| p.fuel_metering);
    let mut names = HashSet::new();
    let mut routes = Vec::new();
    for (i, rc) in raw_routes.into_iter().enumerate() {
        let Some(rc) = rc else { continue };
        let path = format!("routes[{i}]");
        if !names.insert(rc.name.clone()) {
            c.at(
                format!("{path}.name"),
                format!("route name {:?} is used twice", rc.name),
            );
        }
        if let Some(route) = check_route(rc, &path, base_dir, fuel_metering, c) {
            routes.push(route);
        }
    }

    Some(Config {
        mqtt: mqtt?,
        mqtt_url: mqtt_url?,
        credentials,
        gateway: gateway?,
        broker: broker?,
        plugins: plugins?,
        shutdown: shutdown?,
        admin: admin?,
        routes,
        base_dir: base_dir.to_path_buf(),
    })
}

fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL; expected {}://host:port", schemes[0]))?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "unsupported scheme {scheme:?} in {url:?}; use {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port"))?;
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{url:?} has an invalid port {port:?}"))?;
    Ok(())
}

fn check_mqtt(m: &MqttConfig, base: &Path, c: &mut Collector<'_>) -> Option<Credentials> {
    if m.client_id.is_empty() {
        c.at(
            "mqtt.client_id",
            "must not be empty with a persistent session",
        );
    }
    if m.client_id.len() > 23 && m.protocol == Protocol::V311 {
        // MQTT 3.1.1 servers must accept 1..23 characters; most accept more.
        tracing::debug!("client id longer than 23 characters; some 3.1.1 brokers refuse it");
    }
    if m.keep_alive < Duration::from_secs(1) {
        c.at("mqtt.keep_alive", "must be at least 1s");
    }
    if m.max_packet_size.0 < 1024 || m.max_packet_size.0 > 268_435_455 {
        c.at(
            "mqtt.max_packet_size",
            "must be between 1KiB and 268435455 bytes (MQTT's limit)",
        );
    }
    if m.max_pending == 0 {
        c.at("mqtt.max_pending", "must be at least 1");
    }
    check_backoff(&m.reconnect, "mqtt.reconnect", c);
    if let Some(tls) = &m.tls {
        check_tls(tls, "mqtt.tls", base, c);
    }
    let mut resolve = |s: &Option<Secret>, field: &str| -> Option<String> {
        s.as_ref().and_then(|s| match s.resolve(base) {
            Ok(v) => Some(v),
            Err(e) => {
                c.at(format!("mqtt.{field}"), e);
                None
            }
        })
    };
    let username = resolve(&m.username, "username");
    let password = resolve(&m.password, "password");
    match (username, &m.password) {
        (Some(username), _) => Some(Credentials { username, password }),
        (None, Some(_)) if m.username.is_none() => {
            c.at("mqtt.password", "a password needs a username");
            None
        }
        _ => None,
    }
}

fn check_backoff(b: &Backoff, path: &str, c: &mut Collector<'_>) {
    if b.initial.is_zero() {
        c.at(format!("{path}.initial"), "must be longer than zero");
    }
    if b.max < b.initial {
        c.at(format!("{path}.max"), "must not be shorter than `initial`");
    }
    if !(1.0..=10.0).contains(&b.multiplier) {
        c.at(format!("{path}.multiplier"), "must be between 1 and 10");
    }
}

fn check_tls(tls: &TlsFiles, path: &str, base: &Path, c: &mut Collector<'_>) {
    for (field, file) in [
        ("ca_file", &tls.ca_file),
        ("client_cert_file", &tls.client_cert_file),
        ("client_key_file", &tls.client_key_file),
    ] {
        if let Some(f) = file {
            let full = base.join(f);
            if !full.is_file() {
                c.at(
                    format!("{path}.{field}"),
                    format!("{} does not exist", full.display()),
                );
            }
        }
    }
    if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
        c.at(path, "client_cert_file and client_key_file go together");
    }
}

fn check_gateway(g: &GatewayConfig, c: &mut Collector<'_>) {
    if let Err(e) = check_url(&g.url, &["http", "https"]) {
        c.at("gateway.url", e);
    }
    if g.tls.is_some() && g.url.starts_with("http://") {
        c.at(
            "gateway.tls",
            "TLS settings need an https:// URL; refusing to call the gateway in plaintext",
        );
    }
    if g.timeout.is_zero() {
        c.at("gateway.timeout", "must be longer than zero");
    }
    if g.max_concurrent == 0 {
        c.at("gateway.max_concurrent", "must be at least 1");
    }
}

fn check_route(
    rc: RouteConfig,
    path: &str,
    base: &Path,
    fuel_metering: bool,
    c: &mut Collector<'_>,
) -> Option<Route> {
    let before = c.errors.len();
    if rc.name.is_empty() || rc.name.contains(['/', '+', '#', '\0']) {
        c.at(
            format!("{path}.name"),
            "must be non-empty and contain no '/', '+', '#' or NUL",
        );
    }
    if rc.function.is_empty() {
        c.at(format!("{path}.function"), "must not be empty");
    }
    let filter = TopicFilter::parse(&rc.topic)
        .map_err(|e| c.at(format!("{path}.topic"), e))
        .ok();
    let captures = filter.as_ref().map_or(0, TopicFilter::capture_count);
    let republish = rc.republish.as_ref().and_then(|r| {
        Template::parse(&r.topic, captures)
            .map_err(|e| c.at(format!("{path}.republish.topic"), e))
            .ok()
    });
    let dead_letter = Template::parse(&rc.dead_letter, captures)
        .map_err(|e| c.at(format!("{path}.dead_letter"), e))
        .ok();
    if rc.max_in_flight == 0 {
        c.at(format!("{path}.max_in_flight"), "must be at least 1");
    }
    if rc.timeout.is_some_and(|t| t.is_zero()) {
        c.at(format!("{path}.timeout"), "must be longer than zero");
    }
    if rc.retry.attempts == 0 {
        c.at(
            format!("{path}.retry.attempts"),
            "must be at least 1 (the first attempt counts)",
        );
    }
    check_backoff(&rc.retry.backoff, &format!("{path}.retry.backoff"), c);
    let mut transform_config_json = "null".to_string();
    let mut component_path = None;
    if let Some(t) = &rc.transform {
        let full = base.join(&t.component);
        if !full.is_file() {
            c.at(
                format!("{path}.transform.component"),
                format!("{} does not exist", full.display()),
            );
        }
        component_path = Some(full);
        match serde_json::to_string(&t.config) {
            Ok(json) => transform_config_json = json,
            Err(e) => c.at(
                format!("{path}.transform.config"),
                format!("cannot be expressed as JSON: {e}"),
            ),
        }
        if t.limits.timeout.is_zero() {
            c.at(
                format!("{path}.transform.limits.timeout"),
                "must be longer than zero",
            );
        }
        if t.limits.memory.0 < 64 * 1024 {
            c.at(
                format!("{path}.transform.limits.memory"),
                "must be at least 64KiB (one WebAssembly page)",
            );
        }
        if t.limits.fuel.is_some() && !fuel_metering {
            c.at(
                format!("{path}.transform.limits.fuel"),
                "needs `plugins.fuel_metering: true`",
            );
        }
    }
    if c.errors.len() > before {
        return None;
    }
    Some(Route {
        filter: filter?,
        republish: rc.republish.as_ref().and(republish),
        dead_letter: dead_letter?,
        transform_config_json,
        component_path,
        config: rc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
mqtt:
  url: mqtt://127.0.0.1:1883
  client_id: t
gateway:
  url: http://127.0.0.1:31113
routes:
  - name: temp
    topic: sensors/+/temp
    function: echo
    republish:
      topic: out/{1}
";

    #[test]
    fn a_minimal_file_gets_its_defaults() {
        let cfg = Config::parse(GOOD, "bridge.yaml", Path::new(".")).unwrap();
        let r = &cfg.routes[0];
        assert_eq!(r.config.qos, QoS::AtLeastOnce);
        assert_eq!(r.config.ordering, Ordering::PerTopic);
        assert_eq!(r.dead_letter.as_str(), "fxbridge/dead-letter/{route}");
        assert!(cfg.mqtt.persistent_session);
        assert_eq!(cfg.gateway.timeout, Duration::from_secs(10));
        assert_eq!(r.transform_config_json, "null");
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = "
mqtt:
  url: ftp://x:1
gateway:
  url: http://127.0.0.1:31113
routes:
  - name: a
    topic: a/#/b
    function: f
  - name: b
    topic: b/+
    function: f
    qos: 7
  - name: c
    topic: c/+
    function: f
    republish:
      topic: out/{2}
";
        let err = Config::parse(text, "b.yaml", Path::new(".")).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.errors.len(), 4, "{shown}");
        assert!(shown.contains("b.yaml:8:12: routes[0].topic:"), "{shown}");
        assert!(
            shown.contains("b.yaml:13:10: routes[1].qos: QoS must be 0, 1 or 2, not 7"),
            "{shown}"
        );
        assert!(
            shown.contains("b.yaml:18:14: routes[2].republish.topic:"),
            "{shown}"
        );
        assert!(
            shown.contains("b.yaml:3:8: mqtt.url: unsupported scheme \"ftp\""),
            "{shown}"
        );
    }

    #[test]
    fn unknown_fields_point_at_the_key() {
        let text = GOOD.replace("    function: echo", "    function: echo\n    qoss: 1");
        let err = Config::parse(&text, "b.yaml", Path::new(".")).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].path, "routes[0].qoss");
        assert_eq!(err.errors[0].location.map(|l| l.line), Some(11));
    }

    #[test]
    fn an_empty_file_is_an_error_not_an_empty_config() {
        let err = Config::parse("\n  \n", "b.yaml", Path::new(".")).unwrap_err();
        assert_eq!(err.to_string(), "b.yaml: the file is empty");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            multiplier: 2.0,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(5), Duration::from_millis(350));
    }
}
