//! `bridge.yaml`: typed settings, validated completely before anything connects.
//!
//! Loading runs in three passes, each collecting every error it finds:
//! 1. YAML syntax (serde_yaml), which stops at the first syntax error;
//! 2. shape ([`schema`]): each section and each route is deserialised on its
//!    own, with `deny_unknown_fields`, so one bad route does not hide the
//!    errors of another;
//! 3. meaning ([`check`]): topic filters, templates, names, limits, files, TLS
//!    material and secrets.
//!
//! Every error carries the dotted path of the setting (`routes[1].qos`) and its
//! line and column, found through [`locate`] ([`errors`] gathers them). The
//! result is a [`Config`] whose routes are compiled ([`Route`]), so the rest of
//! the bridge never re-parses.

mod check;
mod errors;
pub mod locate;
mod schema;
mod syntax;
mod values;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub use self::errors::{ConfigError, ConfigErrors};
pub use self::schema::{
    AdminConfig, Backoff, BufferConfig, BufferKind, EmbeddedBrokerConfig, GatewayConfig, KeepAlive,
    LogLevel, MqttConfig, Order, OtlpConfig, PluginsConfig, RepublishConfig, ResponseConfig,
    Retained, RetryConfig, RouteConfig, ShutdownConfig, TelemetryConfig, TransformConfig,
    TransformLimits, UnroutedConfig, WhenFull,
};
pub use self::values::{ByteSize, GrpcCode, Protocol, Secret};
pub use crate::tls::TlsFiles;
use crate::topic::{check_publish_topic, Template, TopicFilter};
use check::{check_gateway, check_mqtt, check_otlp, check_route, check_url};
use errors::Collector;
use locate::Positions;

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
    /// Where this route's results may go.
    pub outputs: OutputPolicy,
    /// `response.allow`, parsed.
    pub response_allow: Vec<TopicFilter>,
}

/// Where a route's results may be published (`republish.allow`,
/// `republish.allow_retain`), and what a result with a topic of its own must
/// not reach unless allowed by name: the route's own input (a loop) and any
/// dead-letter topic (forged envelopes).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPolicy {
    /// `republish.allow`, parsed.
    pub allow: Vec<TopicFilter>,
    /// The topics the republish template renders into, when `allow` is empty.
    pub template_space: Option<TopicFilter>,
    /// A result with a topic of its own may set RETAIN.
    pub retain: bool,
}

impl OutputPolicy {
    /// Why a result with its own `topic` (and `retain`) may not be published,
    /// given the route's input filter and `guarded` topic spaces.
    pub fn refuse(
        &self,
        topic: &str,
        retain: bool,
        input: &TopicFilter,
        guarded: &[TopicFilter],
    ) -> Option<String> {
        let allowed = self.allow.iter().any(|f| f.matches(topic).is_some());
        // Only an entry that starts with a name (`n/loop`, `alerts/#`, not `#`
        // or `+/x`) lets a result past the loop and dead-letter guards.
        let named = self
            .allow
            .iter()
            .any(|f| f.starts_with_literal() && f.matches(topic).is_some());
        let in_space = allowed
            || (self.allow.is_empty()
                && self
                    .template_space
                    .as_ref()
                    .is_some_and(|f| f.matches(topic).is_some()));
        if !in_space {
            let allowed: Vec<&str> = match (&self.template_space, self.allow.is_empty()) {
                (_, false) => self.allow.iter().map(TopicFilter::as_str).collect(),
                (Some(space), true) => vec![space.as_str()],
                (None, true) => Vec::new(),
            };
            return Some(format!(
                "the plugin's result topic {topic:?} is outside what the route may publish to ({}; republish.allow)",
                if allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        if !named {
            if input.matches(topic).is_some() {
                return Some(format!(
                    "the plugin's result topic {topic:?} is the route's own input {:?} (a loop); name it in republish.allow to allow it",
                    input.topics()
                ));
            }
            if let Some(dl) = guarded.iter().find(|g| g.matches(topic).is_some()) {
                return Some(format!(
                    "the plugin's result topic {topic:?} is a dead-letter topic ({}); name it in republish.allow to allow it",
                    dl.as_str()
                ));
            }
        }
        if retain && !self.retain {
            return Some(format!(
                "the plugin's result on {topic:?} sets RETAIN, which republish.allow_retain does not allow"
            ));
        }
        None
    }
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Why a request's response topic (chosen by whoever sent it) may not be
    /// published to, given the `guarded` dead-letter topic spaces: it must be
    /// a topic name, inside `response.allow` when set, and neither the route's
    /// own input (a loop) nor a dead-letter topic.
    pub fn refuse_response(&self, topic: &str, guarded: &[TopicFilter]) -> Option<String> {
        if let Err(e) = check_publish_topic(topic, false) {
            return Some(format!(
                "the request's response topic is not publishable: {e}"
            ));
        }
        let allow = &self.response_allow;
        if !allow.is_empty() && !allow.iter().any(|f| f.matches(topic).is_some()) {
            let allowed: Vec<&str> = allow.iter().map(TopicFilter::as_str).collect();
            return Some(format!(
                "the request's response topic {topic:?} is outside routes[].response.allow ({})",
                allowed.join(", ")
            ));
        }
        if self.filter.matches(topic).is_some() {
            return Some(format!(
                "the request's response topic {topic:?} is the route's own input {:?} (a loop)",
                self.filter.topics()
            ));
        }
        if let Some(dl) = guarded.iter().find(|g| g.matches(topic).is_some()) {
            return Some(format!(
                "the request's response topic {topic:?} is a dead-letter topic ({})",
                dl.as_str()
            ));
        }
        None
    }

    /// The subscriber session that receives this route's messages: its
    /// `session`, or its own name.
    pub fn session(&self) -> &str {
        self.config.session.as_deref().unwrap_or(&self.config.name)
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

impl Config {
    /// The client id of the subscriber session `session`.
    pub fn session_client_id(&self, session: &str) -> String {
        format!("{}.{session}", self.mqtt.client_id)
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
    /// `admin.token`, read.
    pub admin_token: Option<String>,
    /// Where a message no route takes is dead-lettered.
    pub unrouted_dead_letter: Template,
    pub telemetry: TelemetryConfig,
    /// Where the bridge keeps what must survive a restart (the subscriptions
    /// of each session); `None` when no directory could be found.
    pub state_dir: Option<PathBuf>,
    pub buffer: BufferConfig,
    /// The journal's file when `buffer.kind` is `disk`.
    pub journal_path: Option<PathBuf>,
    pub routes: Vec<Route>,
    /// Directory that relative paths in the file are taken from.
    pub base_dir: PathBuf,
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

const TOP_LEVEL: &[&str] = &[
    "mqtt",
    "gateway",
    "broker",
    "plugins",
    "shutdown",
    "admin",
    "unrouted",
    "telemetry",
    "state_dir",
    "buffer",
    "routes",
];

/// The state directory when `state_dir` is not set: `$STATE_DIRECTORY`
/// (systemd's `StateDirectory=`), `$XDG_STATE_HOME/fxbridge`, or
/// `~/.local/state/fxbridge`.
fn default_state_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("STATE_DIRECTORY")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("fxbridge")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/fxbridge")))
}

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
        let text = syntax::strip_bom(text);
        if text.trim().is_empty() {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                location: None,
                message: "the file is empty".into(),
            }]));
        }
        if let Some(location) = syntax::too_deep(text) {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                location: Some(location),
                message: format!(
                    "invalid YAML: collections nested more than {} deep",
                    syntax::MAX_DEPTH
                ),
            }]));
        }
        let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            let mut location = e.location().map(|l| locate::Location {
                line: l.line(),
                col: l.column(),
            });
            // serde_yaml writes " at line X column Y" into the message; the
            // location says it already.
            let mut message = strip_positions(&e.to_string());
            if message.contains("repetition limit exceeded") {
                message.push_str(" (aliases expand to more nodes than allowed)");
                location = location.or_else(|| syntax::first_alias(text));
            }
            // At the end of a text without a final line break the parser
            // points one line past it: point at the end of the last line.
            location = location.map(|l| syntax::within(text, l));
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
                for e in &mut errors {
                    e.location = e.location.map(|l| syntax::within(text, l));
                }
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
    let unrouted: Option<UnroutedConfig> = match take("unrouted") {
        Some(v) => c.section("unrouted", v),
        None => Some(UnroutedConfig::default()),
    };
    let telemetry: Option<TelemetryConfig> = match take("telemetry") {
        Some(v) => c.section("telemetry", v),
        None => Some(TelemetryConfig::default()),
    };
    let state_dir: Option<PathBuf> = match take("state_dir") {
        Some(serde_yaml::Value::String(d)) if !d.is_empty() => Some(base_dir.join(d)),
        Some(_) => {
            c.at("state_dir", "must be a directory path");
            None
        }
        None => default_state_dir(),
    };
    let buffer: Option<BufferConfig> = match take("buffer") {
        Some(v) => c.section("buffer", v),
        None => Some(BufferConfig::default()),
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
        check_gateway(g, base_dir, c);
    }
    let unrouted_dead_letter = unrouted.as_ref().and_then(|u| {
        Template::parse(&u.dead_letter, 0)
            .map_err(|e| c.at("unrouted.dead_letter", e))
            .ok()
    });
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
    if let Some(otlp) = telemetry.as_ref().and_then(|t| t.otlp.as_ref()) {
        check_otlp(otlp, c);
    }
    let mut admin_token = None;
    if let Some(Some(a)) = &admin {
        if a.max_connections == 0 {
            c.at("admin.max_connections", "must be at least 1");
        }
        if a.header_timeout.is_zero() {
            c.at("admin.header_timeout", "must be longer than zero");
        }
        if let Some(token) = &a.token {
            match token.resolve(base_dir) {
                Ok(t) if t.trim().is_empty() => c.at("admin.token", "must not be empty"),
                Ok(t) => admin_token = Some(t.trim().to_string()),
                Err(e) => c.at("admin.token", e),
            }
        }
    }

    let mut journal_path = None;
    if let Some(b) = buffer.as_ref().filter(|b| b.kind == BufferKind::Disk) {
        // The journal's smallest size: room for its WAL (4 MiB) and 1 MiB.
        if b.max_size.0 < 5 << 20 {
            c.at("buffer.max_size", "must be at least 5MiB");
        }
        journal_path = match (&b.path, &state_dir) {
            (Some(p), _) => Some(base_dir.join(p)),
            (None, Some(d)) => Some(d.join("journal.db")),
            (None, None) => {
                c.at(
                    "buffer.path",
                    "no state directory to put the journal in: set `buffer.path` or `state_dir`",
                );
                None
            }
        };
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
        let v311 = mqtt.as_ref().is_some_and(|m| m.protocol != Protocol::V5);
        if v311
            && rc
                .republish
                .as_ref()
                .is_some_and(|p| !p.user_properties.is_empty())
        {
            c.at(
                format!("{path}.republish.user_properties"),
                "user properties need MQTT 5 (mqtt.protocol: \"5\")",
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
        admin_token,
        unrouted_dead_letter: unrouted_dead_letter?,
        telemetry: telemetry?,
        state_dir,
        buffer: buffer?,
        journal_path,
        routes,
        base_dir: base_dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;
    use std::time::Duration;

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
        assert_eq!(r.config.ordering, Order::PerTopic);
        assert_eq!(r.dead_letter.as_str(), "fxbridge/dead-letter/{route}");
        assert!(cfg.mqtt.persistent_session);
        assert_eq!(cfg.gateway.timeout, Duration::from_secs(10));
        assert_eq!(r.transform_config_json, "null");
    }

    #[test]
    fn a_response_topic_must_be_a_topic_allowed_and_no_loop() {
        let text = "
mqtt: {url: mqtt://127.0.0.1:1883}
gateway: {url: http://127.0.0.1:1}
routes:
  - {name: open, topic: req/+, function: f}
  - {name: fenced, topic: ask/+, function: f, response: {allow: [resp/#]}}
";
        let cfg = Config::parse(text, "bridge.yaml", Path::new(".")).unwrap();
        let (open, fenced) = (&cfg.routes[0], &cfg.routes[1]);
        let guarded = [TopicFilter::parse("fxbridge/dead-letter/#").unwrap()];
        assert!(open.config.response.enabled);
        assert_eq!(open.refuse_response("anything/at/all", &guarded), None);
        for bad in ["req/x", "fxbridge/dead-letter/open", "a/+", "$SYS/x", ""] {
            assert!(open.refuse_response(bad, &guarded).is_some(), "{bad:?}");
        }
        assert_eq!(fenced.refuse_response("resp/dev-1", &guarded), None);
        let outside = fenced.refuse_response("other/dev-1", &guarded).unwrap();
        assert!(outside.contains("response.allow (resp/#)"), "{outside}");
    }

    #[test]
    fn forwarded_user_properties_must_be_plain_metadata_keys() {
        let with = |names: &str| {
            let text = format!(
                "mqtt: {{url: mqtt://127.0.0.1:1883}}\ngateway: {{url: http://127.0.0.1:1, forward_user_properties: {names}}}\nroutes: [{{name: a, topic: a, function: f}}]\n"
            );
            Config::parse(&text, "bridge.yaml", Path::new("."))
        };
        let ok = with("[TraceParent, x-tenant, baggage]").unwrap();
        assert_eq!(ok.gateway.forward_user_properties.len(), 3);
        let defaults = with("[traceparent, tracestate]").unwrap();
        assert_eq!(
            Config::parse(GOOD, "b.yaml", Path::new("."))
                .unwrap()
                .gateway
                .forward_user_properties,
            defaults.gateway.forward_user_properties
        );
        for bad in [
            "[grpc-timeout]",
            "[content-type]",
            "[trace-bin]",
            "[\"has space\"]",
            "[\"\"]",
            "[\"°C\"]",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("gateway.forward_user_properties[0]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn route_user_properties_and_telemetry_are_checked() {
        let with = |protocol: &str, extra: &str| {
            let text = format!(
                "mqtt: {{url: mqtt://127.0.0.1:1883, protocol: \"{protocol}\"}}\ngateway: {{url: http://127.0.0.1:1}}\n{extra}routes:\n  - {{name: a, topic: a, function: f}}\n  - {{name: b, topic: b, function: f, republish: {{topic: out, user_properties: [[k, v]]}}}}\n"
            );
            Config::parse(&text, "bridge.yaml", Path::new("."))
        };
        let ok = with("5", "").unwrap();
        let props = &ok.routes[1]
            .config
            .republish
            .as_ref()
            .unwrap()
            .user_properties;
        assert_eq!(props, &vec![("k".to_string(), "v".to_string())]);
        assert!(ok.telemetry.propagate && ok.telemetry.otlp.is_none());
        let e = with("3.1.1", "").unwrap_err().to_string();
        assert!(
            e.contains("bridge.yaml:5") && e.contains("routes[1].republish.user_properties"),
            "{e}"
        );
        let e = with(
            "5",
            "telemetry: {otlp: {endpoint: \"https://collector:4317\", interval: 0s}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("telemetry.otlp.endpoint") && e.contains("TLS"),
            "{e}"
        );
        assert!(e.contains("telemetry.otlp.interval"), "{e}");
        let t = with(
            "5",
            "telemetry: {propagate: false, otlp: {endpoint: \"http://127.0.0.1:4317\"}}\n",
        )
        .unwrap()
        .telemetry;
        let otlp = t.otlp.unwrap();
        assert_eq!(
            (otlp.service_name.as_str(), otlp.interval.as_secs()),
            ("fxbridge", 5)
        );
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
    fn a_byte_order_mark_is_accepted() {
        let text = format!("\u{feff}{GOOD}");
        assert!(Config::parse(&text, "b.yaml", Path::new(".")).is_ok());
    }

    #[test]
    fn route_names_keep_to_a_safe_alphabet() {
        for bad in ["a b", "a\"b", "a\nb", ".hidden", "é"] {
            let text = GOOD.replace("name: temp", &format!("name: {bad:?}"));
            let err = Config::parse(&text, "b.yaml", Path::new(".")).unwrap_err();
            assert_eq!(err.errors[0].path, "routes[0].name", "{bad:?}: {err}");
            assert_eq!(err.errors[0].location.map(|l| l.line), Some(8), "{err}");
        }
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
