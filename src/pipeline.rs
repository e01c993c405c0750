//! One message through one route: transform (pre) -> Invoke -> transform (post)
//! -> publish -> done. This is the only place that decides a message's fate.
//!
//! Every path ends in one of three ways:
//! - done: invoked and every result confirmed by the broker, or skipped by the
//!   pre hook, or dead-lettered (the dead letter confirmed by the broker);
//! - abandoned: the bridge is stopping while the gateway is unreachable, or
//!   the broker refused the dead letter; the message is not acknowledged and
//!   the broker redelivers it next session;
//! - cancelled: the drain deadline passed; likewise unacknowledged.
//!
//! The stages return `Result<_, Fate>`; [`process`] turns a [`Fate`] into a
//! dead letter or an abandonment in one place. Only "done" lets the source
//! message be acknowledged ([`RouteDone::success`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::trace::SpanKind;
use tracing::{debug, error, warn};

use crate::ack::RouteDone;
use crate::config::{Protocol, Route};
use crate::deadletter::{self, Failure, Source, Stage};
use crate::gateway::{Gateway, InvokeError};
use crate::message::{Message, OutMessage, PreDecision};
use crate::metrics::{Metrics, RouteMetrics};
use crate::mqtt::outbound::{PublishError, Publisher};
use crate::shutdown::Shutdown;
use crate::telemetry::{MessageTrace, Stage as TraceStage, Telemetry};
use crate::topic::{check_publish_topic, Template, TemplateContext, TopicFilter};
use crate::transform::{HookMessage, RouteTransform};

/// What every route shares: the gateway, the publisher, and the bridge's state.
pub struct Services {
    pub gateway: Gateway,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// The core's shutdown: once reading stopped, retries against an
    /// unreachable gateway give up (the message stays with the broker); at the
    /// deadline, workers drop their jobs unfinished.
    pub shutdown: Shutdown,
    pub max_payload: usize,
    pub default_timeout: Duration,
    pub protocol: Protocol,
    /// Where a message no route takes is dead-lettered (`{route}` is the
    /// session that received it).
    pub unrouted_dead_letter: Template,
    /// Trace context and spans.
    pub telemetry: Telemetry,
}

/// One route of one config version, as the pipeline needs it.
pub struct RouteCtx {
    pub route: Route,
    pub transform: Option<Arc<RouteTransform>>,
    /// sha256 of the plugin file this version loaded (hex), so a reload can tell
    /// an unchanged route from one whose component was replaced in place.
    pub plugin_digest: Option<String>,
    pub metrics: Arc<RouteMetrics>,
}

/// A message handed to a route.
pub struct Job {
    pub msg: Arc<Message>,
    /// What the route's wildcards matched.
    pub captures: Vec<String>,
    pub done: RouteDone,
    pub dispatched: Instant,
    /// Dead-letter topic spaces of the table version that dispatched it.
    pub guarded: Arc<Vec<TopicFilter>>,
}

/// A message no route of its session takes.
pub struct UnroutedJob {
    pub msg: Message,
    pub session: String,
    pub done: RouteDone,
}

/// How a message's processing ended when it did not simply succeed.
enum Fate {
    /// It cannot be processed: dead-letter it (after which it is done).
    DeadLetter(Failure),
    /// It did not finish and must not be acknowledged.
    Abandon,
    /// Its MQTT 5 expiry interval ran out before it was invoked: it is done,
    /// without a call or a result.
    Expired,
}

impl From<Failure> for Fate {
    fn from(f: Failure) -> Fate {
        Fate::DeadLetter(f)
    }
}

/// Processes `job` on route `ctx` and reports its fate.
pub async fn process(ctx: &RouteCtx, svc: &Services, job: Job) {
    let Job {
        msg,
        captures,
        done,
        dispatched,
        guarded,
    } = job;
    if !done.start() {
        // The connection was lost while this copy waited, and the broker has
        // since redelivered the message: the redelivery is processed instead.
        count(&ctx.metrics.superseded);
        debug!(route = ctx.route.name(), topic = %msg.topic, "dropped: superseded by the broker's redelivery");
        return;
    }
    count(&ctx.metrics.messages);
    let _in_flight = InFlight::new(&ctx.metrics);
    let trace = svc
        .telemetry
        .start(&msg, Some(ctx.route.name()), dispatched);
    let outcome = match run(ctx, svc, &msg, &captures, &guarded, dispatched, &trace).await {
        Ok(()) => true,
        Err(Fate::Expired) => {
            count(&ctx.metrics.expired);
            trace.note("fxbridge.expired", true);
            debug!(route = ctx.route.name(), topic = %msg.topic, "expired before it was invoked");
            true
        }
        Err(Fate::DeadLetter(failure)) => {
            trace.fail(&failure.error);
            dead_letter(ctx, svc, &msg, &captures, failure, &trace).await
        }
        Err(Fate::Abandon) => {
            trace.note("fxbridge.abandoned", true);
            false
        }
    };
    if outcome {
        let elapsed = dispatched.elapsed();
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        ctx.metrics
            .latency_us_sum
            .fetch_add(us, std::sync::atomic::Ordering::Relaxed);
        ctx.metrics.latency.observe(elapsed);
        done.success();
    } else {
        count(&ctx.metrics.abandoned);
        debug!(route = ctx.route.name(), topic = %msg.topic, "left unacknowledged for redelivery");
    }
}

fn count(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts a message in the route's in-flight gauge while it lives (also when
/// its future is dropped at the drain deadline).
struct InFlight<'a>(&'a RouteMetrics);

impl<'a> InFlight<'a> {
    fn new(m: &'a RouteMetrics) -> InFlight<'a> {
        m.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run(
    ctx: &RouteCtx,
    svc: &Services,
    msg: &Message,
    captures: &[String],
    guarded: &[TopicFilter],
    dispatched: Instant,
    trace: &MessageTrace,
) -> Result<(), Fate> {
    let route = &ctx.route;
    let expires = msg
        .expiry_interval
        .map(|s| dispatched + Duration::from_secs(u64::from(s)));
    if expires.is_some_and(|e| Instant::now() >= e) {
        return Err(Fate::Expired);
    }
    let name = route.name();
    if msg.payload.len() > svc.max_payload {
        return Err(Failure::new(
            Stage::Oversize,
            format!(
                "payload of {} bytes exceeds mqtt.max_packet_size ({} bytes)",
                msg.payload.len(),
                svc.max_payload
            ),
        )
        .into());
    }
    // MQTT 5: a publisher that says its payload is UTF-8 text and sends
    // something else has sent a malformed message (MQTT-3.3.2-2 lets a
    // receiver refuse it); it is dead-lettered, not passed on as text.
    if msg.utf8 && std::str::from_utf8(&msg.payload).is_err() {
        return Err(Failure::new(
            Stage::PayloadFormatInvalid,
            "the payload format indicator says UTF-8, but the payload is not valid UTF-8",
        )
        .into());
    }
    // An MQTT 5 request: refuse a response topic the route may not publish to
    // before anything runs for it.
    let respond_to = match &msg.response_topic {
        Some(topic) if route.config.response.enabled => {
            if let Some(reason) = route.refuse_response(topic, guarded) {
                return Err(Failure::new(Stage::OutputRefused, reason).into());
            }
            Some(topic.as_str())
        }
        _ => None,
    };
    let hook = HookMessage {
        route: name,
        function: &route.config.function,
        topic: &msg.topic,
        captures,
        payload: &msg.payload,
        qos: msg.qos,
        retain: msg.retain,
        user_properties: &msg.user_properties,
        content_type: msg.content_type.as_deref(),
        utf8: msg.utf8,
        response_topic: msg.response_topic.as_deref(),
        correlation_data: msg.correlation_data.as_deref(),
    };

    // 1. Before Invoke.
    let (function, input) = match ctx.transform.as_deref().filter(|t| t.has_before()) {
        None => (route.config.function.clone(), msg.payload.clone()),
        Some(t) => match before_invoke(t, &hook, trace, &ctx.metrics).await {
            Ok(PreDecision::Invoke { input, function }) => {
                let function = function.unwrap_or_else(|| route.config.function.clone());
                if function.is_empty() {
                    return Err(Failure::new(
                        Stage::TransformBefore,
                        "the plugin chose an empty function name",
                    )
                    .into());
                }
                (function, input)
            }
            Ok(PreDecision::Skip { reason }) => {
                count(&ctx.metrics.skipped);
                debug!(route = name, topic = %msg.topic, %reason, "skipped by the plugin");
                return Ok(());
            }
            Err(e) => {
                let mut f = Failure::new(Stage::TransformBefore, e.to_string());
                f.plugin_error = Some(e.kind());
                return Err(f.into());
            }
        },
    };

    // 2. Invoke.
    let reply = invoke(ctx, svc, &function, input, msg, expires, trace).await?;

    // 3. After Invoke.
    let outs = match ctx.transform.as_deref().filter(|t| t.has_after()) {
        Some(t) => {
            let _span = trace.stage("after-invoke", SpanKind::Internal);
            let started = Instant::now();
            let outs = t.after_invoke(&hook, &reply).await;
            ctx.metrics.after_latency.observe(started.elapsed());
            outs
        }
        .map_err(|e| {
            let mut f = Failure::new(Stage::TransformAfter, e.to_string());
            f.plugin_error = Some(e.kind());
            f
        })?,
        // MQTT 5: the result keeps the request's user properties (trace
        // context, units, ...).
        None if route.republish.is_some() || respond_to.is_some() => {
            vec![OutMessage::reply(reply, msg.user_properties.clone())]
        }
        None => Vec::new(),
    };

    // 4. Check every result, then publish them all; the source is
    // acknowledged only after all of them. A result that may not be published
    // fails the message before any result is (all or nothing).
    let mut publishes = Vec::with_capacity(outs.len());
    if let Some(t) = &route.config.transform {
        let bytes: usize = outs.iter().map(|o| o.payload.len()).sum();
        let limits = &t.limits;
        if outs.len() > limits.max_outputs || bytes > limits.max_output_bytes.as_usize() {
            return Err(Failure::new(
                Stage::OutputLimit,
                format!(
                    "the plugin returned {} results of {bytes} bytes; the route allows {} results and {} bytes (transform.limits.max_outputs, max_output_bytes)",
                    outs.len(),
                    limits.max_outputs,
                    limits.max_output_bytes.as_usize()
                ),
            )
            .into());
        }
    }
    for out in outs {
        let own_topic = out.topic.is_some();
        if let (false, Some(topic)) = (own_topic, respond_to) {
            // The reply to a request, first; then, if the route republishes,
            // the same result there too.
            let mut reply = response(route, msg, topic, &out);
            let span = publish_span(svc, trace, &mut reply);
            svc.publisher
                .check(&reply)
                .map_err(|e| too_large(&reply, &e))?;
            publishes.push((reply, span));
            if route.republish.is_none() {
                continue;
            }
        }
        let mut publish =
            resolve(ctx, msg, captures, out).map_err(|e| Failure::new(Stage::Publish, e))?;
        if own_topic {
            if let Some(reason) =
                route
                    .outputs
                    .refuse(&publish.topic, publish.retain, &route.filter, guarded)
            {
                return Err(Failure::new(Stage::OutputRefused, reason).into());
            }
        }
        let span = publish_span(svc, trace, &mut publish);
        svc.publisher
            .check(&publish)
            .map_err(|e| too_large(&publish, &e))?;
        publishes.push((publish, span));
    }
    for (publish, span) in publishes {
        publish_confirmed(svc, publish)
            .await
            .inspect_err(|_| span.fail("not published"))?;
        count(&ctx.metrics.published);
    }
    Ok(())
}

/// The `publish` span of a result, whose trace context the result carries
/// (MQTT 5).
fn publish_span(svc: &Services, trace: &MessageTrace, publish: &mut Message) -> TraceStage {
    let span = trace.stage("publish", SpanKind::Producer);
    if span.exported() {
        span.note("messaging.destination.name", publish.topic.clone());
    }
    if svc.protocol == Protocol::V5 {
        trace.mark(Some(&span), publish);
    }
    span
}

/// The plugin's before-invoke hook, in its span.
async fn before_invoke(
    t: &RouteTransform,
    hook: &HookMessage<'_>,
    trace: &MessageTrace,
    metrics: &RouteMetrics,
) -> Result<PreDecision, crate::transform::TransformError> {
    let _span = trace.stage("before-invoke", SpanKind::Internal);
    let started = Instant::now();
    let decision = t.before_invoke(hook).await;
    metrics.before_latency.observe(started.elapsed());
    decision
}

/// The failure of a result larger than the broker accepts.
fn too_large(publish: &Message, e: &PublishError) -> Fate {
    Failure::new(
        Stage::ResultTooLarge,
        format!(
            "the result for {:?}: {e} (mqtt.max_packet_size, or the broker's own limit)",
            publish.topic
        ),
    )
    .into()
}

/// Invokes with the route's retry policy; a message that `expires` is not
/// invoked (again) once that time has passed.
async fn invoke(
    ctx: &RouteCtx,
    svc: &Services,
    function: &str,
    input: Bytes,
    msg: &Message,
    expires: Option<Instant>,
    trace: &MessageTrace,
) -> Result<String, Fate> {
    let span = trace.stage("invoke", SpanKind::Client);
    span.note("rpc.system", "grpc");
    span.note("rpc.method", "pb.FxGateway/Invoke");
    if span.exported() {
        span.note("faas.invoked_name", function.to_string());
    }
    // The gateway's spans hang under this one.
    let properties = trace.properties(Some(&span), &msg.user_properties);
    let result = invoke_attempts(ctx, svc, function, input, &properties, expires).await;
    match &result {
        Ok(_) => {}
        Err(Fate::DeadLetter(f)) => span.fail(&f.error),
        Err(Fate::Expired) => span.note("fxbridge.expired", true),
        Err(Fate::Abandon) => span.note("fxbridge.abandoned", true),
    }
    result
}

async fn invoke_attempts(
    ctx: &RouteCtx,
    svc: &Services,
    function: &str,
    input: Bytes,
    properties: &[(String, String)],
    expires: Option<Instant>,
) -> Result<String, Fate> {
    let retry = &ctx.route.config.retry;
    let deadline = ctx.route.config.timeout.unwrap_or(svc.default_timeout);
    let mut counted = 0u32; // attempts that count against retry.attempts
    let mut tries = 0u32;
    loop {
        if expires.is_some_and(|e| Instant::now() >= e) {
            return Err(Fate::Expired);
        }
        tries += 1;
        let started = Instant::now();
        let call = svc
            .gateway
            .invoke(function, input.clone(), deadline, properties)
            .await;
        ctx.metrics.invoke_latency.observe(started.elapsed());
        let error = match call {
            Ok(reply) => {
                count(&ctx.metrics.invoked);
                return Ok(reply);
            }
            Err(e) => e,
        };
        count(&ctx.metrics.invoke_failures);
        let (status, permanent) = match &error {
            InvokeError::Status(s) => (s, false),
            // The gateway answered, but not with a `Message`: the same call
            // would get the same answer.
            InvokeError::InvalidReply(s) => (s, true),
        };
        let code = status.code();
        // Only a gateway that could not be reached at all is waited for; a
        // call lost after its request went out counts as an attempt.
        let waiting = error.unreachable() && retry.wait_while_unavailable;
        if waiting && svc.shutdown.is_reading_stopped() {
            return Err(Fate::Abandon);
        }
        if !waiting {
            counted += 1;
        }
        let retryable = !permanent && retry.on.iter().any(|c| c.to_tonic() == code);
        if !waiting && (!retryable || counted >= retry.attempts) {
            let mut f = Failure::new(
                Stage::Gateway,
                format!(
                    "Invoke({function}) failed: {}: {}",
                    deadletter::code_name(code),
                    status.message()
                ),
            );
            f.grpc_code = Some(code);
            f.attempts = tries;
            return Err(f.into());
        }
        let delay = retry
            .backoff
            .delay(if waiting { tries - 1 } else { counted - 1 });
        count(&ctx.metrics.retries);
        if tries == 1 || tries.is_power_of_two() {
            warn!(route = ctx.route.name(), function, code = %deadletter::code_name(code), message = status.message(), tries, "Invoke failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = svc.shutdown.reading_stopped(), if waiting => return Err(Fate::Abandon),
        }
    }
}

/// Turns a transform's (or the default) result into a message, filling in the
/// route's republish target where the result leaves it open.
fn resolve(
    ctx: &RouteCtx,
    msg: &Message,
    captures: &[String],
    out: OutMessage,
) -> Result<Message, String> {
    let route = &ctx.route;
    let target = route.config.republish.as_ref();
    let default_target = out.topic.is_none();
    let topic = match out.topic {
        Some(t) => {
            check_publish_topic(&t, false)
                .map_err(|e| format!("the plugin's topic is not publishable: {e}"))?;
            t
        }
        None => {
            let template = route
                .republish
                .as_ref()
                .ok_or("the result has no topic and the route has no republish target")?;
            template
                .render(TemplateContext {
                    topic: &msg.topic,
                    route: route.name(),
                    captures,
                })
                .map_err(|e| format!("republish topic {:?}: {e}", template.as_str()))?
        }
    };
    let mut user_properties = out.user_properties;
    if let Some(t) = target {
        user_properties.extend(t.user_properties.iter().cloned());
    }
    Ok(Message {
        topic,
        payload: out.payload,
        qos: out
            .qos
            .or(target.map(|t| t.qos))
            .unwrap_or(crate::message::QoS::AtLeastOnce),
        retain: out.retain || (default_target && target.is_some_and(|t| t.retain)),
        user_properties,
        content_type: out.content_type,
        utf8: out.utf8,
        response_topic: None,
        correlation_data: out.correlation_data,
        expiry_interval: None,
    })
}

/// The reply to a request: `out` on the request's response topic, with the
/// request's correlation data and content type (unless the result has its
/// own), never retained.
fn response(route: &Route, request: &Message, topic: &str, out: &OutMessage) -> Message {
    Message {
        topic: topic.to_string(),
        payload: out.payload.clone(),
        qos: route.config.response.qos.unwrap_or(request.qos),
        retain: false,
        user_properties: out.user_properties.clone(),
        content_type: out
            .content_type
            .clone()
            .or_else(|| request.content_type.clone()),
        utf8: out.utf8,
        response_topic: None,
        correlation_data: out
            .correlation_data
            .clone()
            .or_else(|| request.correlation_data.clone()),
        expiry_interval: None,
    }
}

/// Publishes until the broker confirms or refuses. Connection losses are retried
/// (with backoff) because the source message is still unacknowledged.
async fn publish_confirmed(svc: &Services, publish: Message) -> Result<(), Fate> {
    let mut tries = 0u32;
    loop {
        match svc.publisher.publish(publish.clone()).await {
            Ok(()) => return Ok(()),
            Err(PublishError::Closed) => return Err(Fate::Abandon),
            Err(e @ PublishError::TooLarge { .. }) => return Err(too_large(&publish, &e)),
            Err(e) if e.is_transient() => {
                tries += 1;
                let delay = Duration::from_millis(100u64.saturating_mul(1 << tries.min(6)));
                debug!(topic = %publish.topic, error = %e, "publishing again");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(Failure::new(
                    Stage::Publish,
                    format!("publishing to {:?}: {e}", publish.topic),
                )
                .into())
            }
        }
    }
}

/// Publishes a dead letter for `source` on `topic`, fitted to what the broker
/// accepts. True once the broker has it.
async fn publish_dead_letter(
    svc: &Services,
    topic: String,
    source: Source<'_>,
    failure: &Failure,
    trace: &MessageTrace,
) -> bool {
    let span = trace.stage("dead-letter", SpanKind::Producer);
    if span.exported() {
        span.note("messaging.destination.name", topic.clone());
    }
    span.note("error.type", failure.stage.as_str());
    let mut dead = Message::new(topic, Bytes::new(), deadletter::QOS);
    if svc.protocol == Protocol::V5 {
        dead.content_type = Some("application/json".to_string());
        dead.utf8 = true;
        trace.mark(Some(&span), &mut dead);
    }
    let overhead = svc.publisher.packet_size(&dead);
    let budget = svc.publisher.max_packet_size().saturating_sub(overhead);
    let Some(payload) = deadletter::envelope(source, failure, budget) else {
        error!(dead_letter = %dead.topic, budget, "not even the shortest dead letter fits the broker's packet size; leaving the message unacknowledged");
        return false;
    };
    dead.payload = Bytes::from(payload);
    match publish_confirmed(svc, dead).await {
        // (Publishing has no expiry: `Expired` does not come from here.)
        Ok(()) | Err(Fate::Expired) => true,
        Err(Fate::Abandon) => false,
        Err(Fate::DeadLetter(e)) => {
            // A dead letter the broker refuses cannot be delivered anywhere else;
            // keep the message with the broker rather than lose it.
            warn!(error = %e.error, "the broker refused the dead letter; leaving the message unacknowledged");
            false
        }
    }
}

/// Dead-letters a message of a route; true once the broker has the dead letter.
async fn dead_letter(
    ctx: &RouteCtx,
    svc: &Services,
    msg: &Message,
    captures: &[String],
    failure: Failure,
    trace: &MessageTrace,
) -> bool {
    let route = &ctx.route;
    let topic = route
        .dead_letter
        .render(TemplateContext {
            topic: &msg.topic,
            route: route.name(),
            captures,
        })
        .unwrap_or_else(|e| {
            warn!(route = route.name(), error = %e, "dead-letter template failed; using fxbridge/dead-letter");
            "fxbridge/dead-letter".to_string()
        });
    warn!(route = route.name(), topic = %msg.topic, dead_letter = %topic, error = %failure.error, "dead-lettering");
    let source = Source {
        route: Some(route.name()),
        function: Some(&route.config.function),
        msg,
    };
    let ok = publish_dead_letter(svc, topic, source, &failure, trace).await;
    if ok {
        ctx.metrics
            .dead_lettered(failure.stage.as_str(), &msg.topic, &failure.error);
    }
    ok
}

/// Dead-letters a message that no route of its session takes.
pub async fn unrouted(svc: &Services, job: UnroutedJob) {
    let UnroutedJob { msg, session, done } = job;
    let topic = svc
        .unrouted_dead_letter
        .render(TemplateContext {
            topic: &msg.topic,
            route: &session,
            captures: &[],
        })
        .unwrap_or_else(|e| {
            warn!(error = %e, "unrouted dead-letter template failed; using fxbridge/dead-letter/unrouted");
            "fxbridge/dead-letter/unrouted".to_string()
        });
    let failure = Failure::new(
        Stage::Unrouted,
        format!(
            "no route of session {session:?} takes topic {:?} (its route was removed, or an earlier configuration subscribed it)",
            msg.topic
        ),
    );
    warn!(%session, topic = %msg.topic, dead_letter = %topic, "no route takes this message; dead-lettering it");
    let source = Source {
        route: None,
        function: None,
        msg: &msg,
    };
    let trace = svc.telemetry.start(&msg, None, Instant::now());
    trace.fail(&failure.error);
    if publish_dead_letter(svc, topic, source, &failure, &trace).await {
        svc.metrics.unrouted_dead_lettered();
        done.success();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::QoS;

    fn ctx(route: &str) -> RouteCtx {
        let yaml = format!(
            "mqtt: {{url: \"mqtt://127.0.0.1:1883\"}}\ngateway: {{url: \"http://127.0.0.1:1\"}}\nroutes:\n  - {route}\n"
        );
        let config = Config::parse(&yaml, "t.yaml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        RouteCtx {
            route: config.routes[0].clone(),
            transform: None,
            plugin_digest: None,
            metrics: Arc::default(),
        }
    }

    fn out(topic: Option<&str>, qos: Option<QoS>, retain: bool) -> OutMessage {
        OutMessage {
            topic: topic.map(str::to_string),
            payload: Bytes::from_static(b"r"),
            qos,
            retain,
            user_properties: vec![("k".into(), "v".into())],
            content_type: None,
            utf8: false,
            correlation_data: None,
        }
    }

    #[test]
    fn a_result_without_a_topic_takes_the_routes_republish_target() {
        let c = ctx(
            r#"{name: r, topic: "s/+/in", function: f, republish: {topic: "s/{1}/out", qos: 0, retain: true}}"#,
        );
        let msg = Message::new("s/dev-1/in", Bytes::from_static(b"x"), QoS::AtLeastOnce);
        let caps = vec!["dev-1".to_string()];
        let m = resolve(&c, &msg, &caps, out(None, None, false)).unwrap();
        assert_eq!(m.topic, "s/dev-1/out");
        assert_eq!(m.qos, QoS::AtMostOnce, "the republish QoS");
        assert!(m.retain, "the republish retain applies to its own topic");
        assert_eq!(m.user_properties, vec![("k".to_string(), "v".to_string())]);
        // A plugin's own topic and QoS win; the route's retain does not apply there.
        let m = resolve(
            &c,
            &msg,
            &caps,
            out(Some("elsewhere"), Some(QoS::AtLeastOnce), false),
        )
        .unwrap();
        assert_eq!(
            (m.topic.as_str(), m.qos, m.retain),
            ("elsewhere", QoS::AtLeastOnce, false)
        );
    }

    #[test]
    fn unpublishable_results_are_refused_with_the_reason() {
        let c = ctx(r#"{name: r, topic: "s/#", function: f}"#);
        let msg = Message::new("s/a", Bytes::from_static(b"x"), QoS::AtLeastOnce);
        let e = resolve(&c, &msg, &[], out(None, None, false)).unwrap_err();
        assert!(e.contains("no republish target"), "{e}");
        let e = resolve(&c, &msg, &[], out(Some("a/+/b"), None, false)).unwrap_err();
        assert!(
            e.contains("not publishable") && e.contains("wildcard"),
            "{e}"
        );
        // With a plugin topic and no republish target, QoS defaults to 1.
        let m = resolve(&c, &msg, &[], out(Some("ok"), None, true)).unwrap();
        assert_eq!((m.qos, m.retain), (QoS::AtLeastOnce, true));
    }
}
