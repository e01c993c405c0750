//! The meaning of the settings: URLs, limits, secrets, files, topic filters
//! and templates. Each check reports into the [`Collector`] and goes on, so one
//! pass finds every problem.

use std::path::Path;
use std::time::Duration;

use super::errors::Collector;
use super::schema::{Backoff, GatewayConfig, MqttConfig, OtlpConfig, RouteConfig};
use super::values::{Protocol, Secret};
use super::{Credentials, OutputPolicy, Route};
use crate::message::QoS;
use crate::tls::TlsFiles;
use crate::topic::{Template, TopicFilter};

pub(super) fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
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

pub(super) fn check_mqtt(
    m: &MqttConfig,
    base: &Path,
    c: &mut Collector<'_>,
) -> Option<Credentials> {
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
    if m.max_qos == QoS::AtMostOnce {
        c.at(
            "mqtt.max_qos",
            "must be 1 or 2: results at QoS 0 could be lost after their source was acknowledged",
        );
    }
    check_backoff(&m.reconnect, "mqtt.reconnect", c);
    if let Some(tls) = &m.tls {
        check_tls_usable(tls, "mqtt.tls", base, "MQTT", c);
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

pub(super) fn check_otlp(o: &OtlpConfig, c: &mut Collector<'_>) {
    if o.endpoint.starts_with("https://") {
        c.at(
            "telemetry.otlp.endpoint",
            "OTLP over TLS is not supported; send to a collector on this host or network (http://host:4317)",
        );
    } else if let Err(e) = check_url(&o.endpoint, &["http"]) {
        c.at("telemetry.otlp.endpoint", e);
    }
    if o.service_name.is_empty() {
        c.at("telemetry.otlp.service_name", "must not be empty");
    }
    if o.interval.is_zero() {
        c.at("telemetry.otlp.interval", "must be longer than zero");
    }
    if o.max_queue == 0 {
        c.at("telemetry.otlp.max_queue", "must be at least 1");
    }
}

pub(super) fn check_backoff(b: &Backoff, path: &str, c: &mut Collector<'_>) {
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

pub(super) fn check_tls(tls: &TlsFiles, path: &str, base: &Path, c: &mut Collector<'_>) {
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

/// [`check_tls`], then the settings built as a connection would build them:
/// every certificate and key parsed. `peer` names the other side in errors.
fn check_tls_usable(tls: &TlsFiles, path: &str, base: &Path, peer: &str, c: &mut Collector<'_>) {
    let before = c.errors.len();
    check_tls(tls, path, base, c);
    if c.errors.len() == before {
        if let Err(e) = crate::tls::client_config(Some(tls), base, peer) {
            c.at(path, format!("{e:#}"));
        }
    }
}

pub(super) fn check_gateway(g: &GatewayConfig, base: &Path, c: &mut Collector<'_>) {
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
    if !g.keep_alive.interval.is_zero() && g.keep_alive.timeout.is_zero() {
        c.at("gateway.keep_alive.timeout", "must be longer than zero");
    }
    if let Some(tls) = &g.tls {
        check_tls_usable(tls, "gateway.tls", base, "gateway", c);
    }
    for (i, name) in g.forward_user_properties.iter().enumerate() {
        if let Err(e) = check_metadata_name(name) {
            c.at(format!("gateway.forward_user_properties[{i}]"), e);
        }
    }
}

/// A user property name that may travel as a gRPC metadata key: a token of
/// lowercase letters, digits, `-`, `_`, `.` (after lowercasing), not one gRPC
/// or HTTP/2 reserve for themselves, and not binary (`-bin`).
fn check_metadata_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let token =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if lower.is_empty() || !lower.chars().all(token) {
        return Err(format!(
            "{name:?}: a gRPC metadata key has only the characters a-z 0-9 - _ ."
        ));
    }
    const RESERVED: [&str; 6] = [
        "content-type",
        "te",
        "host",
        "user-agent",
        "connection",
        "trailer",
    ];
    if lower.starts_with("grpc-") || RESERVED.contains(&lower.as_str()) {
        return Err(format!("{name:?} is reserved by gRPC or HTTP/2"));
    }
    if lower.ends_with("-bin") {
        return Err(format!("{name:?}: binary (-bin) metadata is not forwarded"));
    }
    Ok(())
}

/// Route and session names: they go into topics (`{route}`), client ids,
/// metric labels and logs, so they keep to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(safe) || name.starts_with('.') {
        return Err(format!(
            "{name:?}: 1 to 64 of the characters A-Z a-z 0-9 - _ . (not starting with a dot)"
        ));
    }
    Ok(())
}

/// An `allow` list: topic filters of topics the bridge may publish to (so not
/// shared subscriptions), each error at `{path}[i]`.
fn topic_filters(list: &[String], path: &str, c: &mut Collector<'_>) -> Vec<TopicFilter> {
    let mut filters = Vec::new();
    for (i, f) in list.iter().enumerate() {
        match TopicFilter::parse(f) {
            Ok(filter) if filter.share_group().is_none() => filters.push(filter),
            Ok(_) => c.at(
                format!("{path}[{i}]"),
                "a filter of topics to publish to, not a shared subscription",
            ),
            Err(e) => c.at(format!("{path}[{i}]"), e),
        }
    }
    filters
}

pub(super) fn check_route(
    rc: RouteConfig,
    path: &str,
    base: &Path,
    fuel_metering: bool,
    c: &mut Collector<'_>,
) -> Option<Route> {
    let before = c.errors.len();
    if let Err(e) = check_name(&rc.name) {
        c.at(format!("{path}.name"), e);
    }
    if rc.function.is_empty() {
        c.at(format!("{path}.function"), "must not be empty");
    }
    if let Some(session) = &rc.session {
        if let Err(e) = check_name(session) {
            c.at(format!("{path}.session"), e);
        }
    }
    let filter = TopicFilter::parse(&rc.topic)
        .map_err(|e| c.at(format!("{path}.topic"), e))
        .ok();
    let captures = filter.as_ref().map_or(0, TopicFilter::capture_count);
    let republish = rc.republish.as_ref().and_then(|r| {
        Template::parse(r.topic.as_deref()?, captures)
            .map_err(|e| c.at(format!("{path}.republish.topic"), e))
            .ok()
    });
    let mut allow = Vec::new();
    if let Some(r) = &rc.republish {
        if r.topic.is_none() && r.allow.is_empty() {
            c.at(
                format!("{path}.republish"),
                "needs a `topic`, or `allow` for results that name their own",
            );
        }
        allow = topic_filters(&r.allow, &format!("{path}.republish.allow"), c);
    }
    let response_allow = topic_filters(&rc.response.allow, &format!("{path}.response.allow"), c);
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
    let filter = filter?;
    let republish = rc.republish.as_ref().and(republish);
    let outputs = OutputPolicy {
        allow,
        template_space: republish.as_ref().map(|t| t.topic_space(&filter, &rc.name)),
        retain: rc.republish.as_ref().is_some_and(|r| r.allow_retain),
    };
    Some(Route {
        filter,
        republish,
        dead_letter: dead_letter?,
        transform_config_json,
        component_path,
        outputs,
        response_allow,
        config: rc,
    })
}
