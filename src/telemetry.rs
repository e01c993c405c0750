//! Trace context through the bridge: W3C `traceparent`/`tracestate` on a
//! message's way from the broker to the gateway and back, and the spans of
//! its stages, exported over OTLP when `telemetry.otlp` is configured.
//!
//! A message's context comes from its MQTT 5 `traceparent` user property, or
//! the bridge starts a trace when it has none (and under MQTT 3.1.1). The
//! context the bridge passes on is its own span's when spans are exported (so
//! the gateway's and the consumers' spans hang under the bridge's), and the
//! message's otherwise: the gateway gets it as gRPC metadata, and every
//! result and dead letter carries it as a user property.
//!
//! Spans of one message on one route: `receive` (from dispatch to done; a
//! child of the publisher's span when the message had one), and under it
//! `before-invoke`, `invoke` (every attempt), `after-invoke`, one `publish`
//! per result and `dead-letter`. With `telemetry.otlp` unset no span is
//! created: a message costs one scan of its user properties and, when it has
//! no context, 24 random bytes.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer,
    SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tracing::warn;

use crate::config::TelemetryConfig;
use crate::message::Message;

/// The W3C trace context headers, as MQTT 5 user properties and gRPC metadata.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The bridge's telemetry: whether it carries trace context, and the span
/// exporter when one is configured. Cheap to share; built once per core.
pub struct Telemetry {
    propagate: bool,
    exporter: Option<(SdkTracerProvider, SdkTracer)>,
    ids: RandomIdGenerator,
}

impl Telemetry {
    /// Telemetry that does nothing: no context carried, no spans.
    pub fn off() -> Telemetry {
        Telemetry {
            propagate: false,
            exporter: None,
            ids: RandomIdGenerator::default(),
        }
    }

    /// Builds the exporter (inside the tokio runtime: its gRPC channel runs
    /// there); it connects lazily, so a collector that is down costs dropped
    /// spans, never messages.
    pub fn new(config: &TelemetryConfig) -> Result<Telemetry> {
        let exporter = match &config.otlp {
            None => None,
            Some(otlp) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(otlp.endpoint.clone())
                    .with_timeout(Duration::from_secs(10))
                    .build()
                    .with_context(|| format!("OTLP exporter for {}", otlp.endpoint))?;
                let batch = BatchConfigBuilder::default()
                    .with_scheduled_delay(otlp.interval)
                    .with_max_queue_size(otlp.max_queue)
                    .build();
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(
                        BatchSpanProcessor::builder(exporter)
                            .with_batch_config(batch)
                            .build(),
                    )
                    .with_resource(
                        Resource::builder()
                            .with_service_name(otlp.service_name.clone())
                            .build(),
                    )
                    .build();
                let tracer = provider.tracer("fxbridge");
                Some((provider, tracer))
            }
        };
        Ok(Telemetry {
            propagate: config.propagate || exporter.is_some(),
            exporter,
            ids: RandomIdGenerator::default(),
        })
    }

    /// Sends the spans still waiting and stops the exporter. Blocking: call it
    /// off the runtime's worker threads.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporter {
            if let Err(e) = provider.shutdown() {
                warn!(error = %e, "the OTLP exporter did not stop cleanly; spans may be lost");
            }
        }
    }

    /// The trace of `msg` on route `route` (`None`: no route took it),
    /// dispatched at `since`: its `receive` span starts then.
    pub fn start(&self, msg: &Message, route: Option<&str>, since: Instant) -> MessageTrace {
        if !self.propagate {
            return MessageTrace { cx: Trace::Off };
        }
        let Some((_, tracer)) = &self.exporter else {
            // Not exported: pass the message's context on as it came, or a
            // new one; no OpenTelemetry context is built for it.
            let came = first(&msg.user_properties, TRACEPARENT).filter(|tp| valid_traceparent(tp));
            return MessageTrace {
                cx: Trace::Passive(match came {
                    Some(tp) => Passive {
                        traceparent: tp.to_string(),
                        tracestate: first(&msg.user_properties, TRACESTATE)
                            .filter(|ts| !ts.is_empty())
                            .map(str::to_string),
                        as_it_came: true,
                    },
                    None => Passive {
                        traceparent: format!(
                            "00-{}-{}-01",
                            self.ids.new_trace_id(),
                            self.ids.new_span_id()
                        ),
                        tracestate: None,
                        as_it_came: false,
                    },
                }),
            };
        };
        let parent = extract(&msg.user_properties);
        let mut attributes = vec![
            KeyValue::new("messaging.system", "mqtt"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", msg.topic.clone()),
            KeyValue::new("messaging.message.body.size", msg.payload.len() as i64),
        ];
        if let Some(route) = route {
            attributes.push(KeyValue::new("fxbridge.route", route.to_string()));
        }
        let started = SystemTime::now()
            .checked_sub(since.elapsed())
            .unwrap_or_else(SystemTime::now);
        let span = tracer
            .span_builder("receive")
            .with_kind(SpanKind::Consumer)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        MessageTrace {
            cx: Trace::Exported {
                cx: parent.with_span(span),
                tracer: tracer.clone(),
            },
        }
    }
}

/// One message's trace on one route. Ends its `receive` span when dropped.
pub struct MessageTrace {
    cx: Trace,
}

enum Trace {
    /// `telemetry.propagate: false`, no exporter.
    Off,
    /// Propagated, not exported.
    Passive(Passive),
    /// Exported: the context of the `receive` span.
    Exported { cx: Context, tracer: SdkTracer },
}

struct Passive {
    traceparent: String,
    tracestate: Option<String>,
    /// The context is the message's own: properties that carry a
    /// `traceparent` already are passed on as they are.
    as_it_came: bool,
}

impl MessageTrace {
    /// The `receive` span, when exporting.
    fn span(&self) -> Option<&Context> {
        match &self.cx {
            Trace::Exported { cx, .. } => Some(cx),
            _ => None,
        }
    }

    /// A span for one stage, a child of `receive` (a no-op when not exporting).
    pub fn stage(&self, name: &'static str, kind: SpanKind) -> Stage {
        let Trace::Exported { cx, tracer } = &self.cx else {
            return Stage { cx: None };
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, cx);
        Stage {
            cx: Some(cx.with_span(span)),
        }
    }

    /// Marks the message's processing as failed (dead-lettered) with `reason`.
    pub fn fail(&self, reason: &str) {
        if let Some(cx) = self.span() {
            cx.span().set_status(Status::error(reason.to_string()));
        }
    }

    /// Adds an attribute to the `receive` span.
    pub fn note(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = self.span() {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// `properties` with the trace context of `stage` (or of the message when
    /// `stage` is `None` or not exported) in place of any they had.
    pub fn properties<'a>(
        &self,
        stage: Option<&Stage>,
        properties: &'a [(String, String)],
    ) -> Cow<'a, [(String, String)]> {
        let is_context =
            |k: &str| k.eq_ignore_ascii_case(TRACEPARENT) || k.eq_ignore_ascii_case(TRACESTATE);
        let without = || -> Vec<(String, String)> {
            properties
                .iter()
                .filter(|(k, _)| !is_context(k))
                .cloned()
                .collect()
        };
        match &self.cx {
            Trace::Off => Cow::Borrowed(properties),
            Trace::Passive(p) => {
                if p.as_it_came && first(properties, TRACEPARENT).is_some() {
                    return Cow::Borrowed(properties);
                }
                let mut out = without();
                out.push((TRACEPARENT.to_string(), p.traceparent.clone()));
                if let Some(ts) = &p.tracestate {
                    out.push((TRACESTATE.to_string(), ts.clone()));
                }
                Cow::Owned(out)
            }
            Trace::Exported { cx, .. } => {
                let cx = stage.and_then(|s| s.cx.as_ref()).unwrap_or(cx);
                let mut out = without();
                TraceContextPropagator::new().inject_context(cx, &mut Properties(&mut out));
                Cow::Owned(out)
            }
        }
    }

    /// Sets the trace context of `stage` (or the message's) on `msg`.
    pub fn mark(&self, stage: Option<&Stage>, msg: &mut Message) {
        if let Cow::Owned(props) = self.properties(stage, &msg.user_properties) {
            msg.user_properties = props;
        }
    }
}

impl Drop for MessageTrace {
    fn drop(&mut self) {
        if let Some(cx) = self.span() {
            cx.span().end();
        }
    }
}

/// The span of one stage; ends when dropped.
pub struct Stage {
    cx: Option<Context>,
}

impl Stage {
    /// Whether the span is exported (attributes that cost an allocation are
    /// worth making).
    pub fn exported(&self) -> bool {
        self.cx.is_some()
    }

    /// Marks the stage as failed with `reason`.
    pub fn fail(&self, reason: &str) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(reason.to_string()));
        }
    }

    /// Adds an attribute.
    pub fn note(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }
}

/// The context in a message's user properties (an empty one if it has none
/// or an invalid one).
fn extract(properties: &[(String, String)]) -> Context {
    if !properties
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
    {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&PropertiesRef(properties))
}

/// The first value of `key` (compared without case) in `properties`.
fn first<'a>(properties: &'a [(String, String)], key: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// A `traceparent` the W3C Trace Context spec accepts: `vv-<32 hex>-<16 hex>-ff`
/// in lowercase hex, version not `ff`, ids not all zero (a future version
/// may append `-...` fields).
fn valid_traceparent(tp: &str) -> bool {
    let b = tp.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|c| *c == b'0');
    b.len() >= 55
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && (b.len() == 55 || (&b[0..2] != b"00" && b[55] == b'-'))
        && b[2] == b'-'
        && hex(&b[3..35])
        && !zero(&b[3..35])
        && b[35] == b'-'
        && hex(&b[36..52])
        && !zero(&b[36..52])
        && b[52] == b'-'
        && hex(&b[53..55])
}

struct PropertiesRef<'a>(&'a [(String, String)]);

impl Extractor for PropertiesRef<'_> {
    /// The first value of `key` (W3C: a repeated `traceparent` is invalid;
    /// the first is taken, as most MQTT clients send one).
    fn get(&self, key: &str) -> Option<&str> {
        first(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct Properties<'a>(&'a mut Vec<(String, String)>);

impl Injector for Properties<'_> {
    /// Sets `key`; an empty `tracestate` is left out (W3C: "vendors MAY omit
    /// an empty tracestate").
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_string(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn msg(props: &[(&str, &str)]) -> Message {
        let mut m = Message::new("t", &b"x"[..], QoS::AtLeastOnce);
        m.user_properties = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m
    }

    fn on() -> Telemetry {
        Telemetry::new(&TelemetryConfig::default()).unwrap()
    }

    fn get<'a>(props: &'a [(String, String)], key: &str) -> Vec<&'a str> {
        props
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn a_messages_context_is_passed_on_unchanged_when_not_exporting() {
        let m = msg(&[
            ("unit", "C"),
            (TRACEPARENT, PARENT),
            (TRACESTATE, "vendor=x"),
        ]);
        let trace = on().start(&m, Some("r"), Instant::now());
        let props = trace.properties(None, &m.user_properties);
        assert_eq!(get(&props, TRACEPARENT), vec![PARENT]);
        assert_eq!(get(&props, TRACESTATE), vec!["vendor=x"]);
        assert_eq!(get(&props, "unit"), vec!["C"], "other properties kept");
        assert_eq!(props.len(), 3, "replaced, not added: {props:?}");
    }

    #[test]
    fn the_bridge_starts_a_trace_for_a_message_without_one() {
        for m in [msg(&[]), msg(&[(TRACEPARENT, "not a traceparent")])] {
            let trace = on().start(&m, None, Instant::now());
            let props = trace.properties(None, &m.user_properties);
            let tp = get(&props, TRACEPARENT);
            assert_eq!(tp.len(), 1, "{props:?}");
            let parts: Vec<&str> = tp[0].split('-').collect();
            assert_eq!(parts.len(), 4, "{}", tp[0]);
            assert_eq!(
                (parts[0], parts[1].len(), parts[2].len(), parts[3]),
                ("00", 32, 16, "01")
            );
            assert_ne!(parts[1], "0".repeat(32));
            assert!(get(&props, TRACESTATE).is_empty(), "no empty tracestate");
        }
        // Two messages, two traces.
        let a = on()
            .start(&msg(&[]), None, Instant::now())
            .properties(None, &[])
            .into_owned();
        let b = on()
            .start(&msg(&[]), None, Instant::now())
            .properties(None, &[])
            .into_owned();
        assert_ne!(a, b);
    }

    #[test]
    fn traceparents_are_checked_as_the_w3c_spec_says() {
        assert!(valid_traceparent(PARENT));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn off_leaves_the_properties_alone() {
        let m = msg(&[(TRACEPARENT, PARENT)]);
        let off = Telemetry::new(&TelemetryConfig {
            propagate: false,
            otlp: None,
        })
        .unwrap();
        let trace = off.start(&m, None, Instant::now());
        assert!(matches!(
            trace.properties(None, &m.user_properties),
            Cow::Borrowed(_)
        ));
        let trace = Telemetry::off().start(&msg(&[]), None, Instant::now());
        assert!(trace.properties(None, &[]).is_empty());
    }
}
