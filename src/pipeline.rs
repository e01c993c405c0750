//! One message through one route: transform (pre) -> Invoke -> transform (post)
//! -> publish -> done. This is the only place that decides a message's fate.
//!
//! Every path ends in one of three ways:
//! - done: invoked and every result confirmed by the broker, or skipped by the
//!   pre hook, or dead-lettered (the dead letter confirmed by the broker);
//! - abandoned: the bridge is stopping while the gateway is unreachable; the
//!   message is not acknowledged and the broker redelivers it next session;
//! - cancelled: the drain deadline passed; likewise unacknowledged.
//!
//! Only "done" lets the source message be acknowledged ([`RouteDone::success`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, warn};

use crate::ack::RouteDone;
use crate::config::{Protocol, Route};
use crate::deadletter::{self, Failure, Stage};
use crate::gateway::Gateway;
use crate::message::{Inbound, OutMessage, PreDecision};
use crate::metrics::{Metrics, RouteMetrics};
use crate::mqtt::outbound::{PublishError, Publisher};
use crate::mqtt::Publish;
use crate::topic::{check_publish_topic, TemplateContext};
use crate::transform::{HookMessage, RouteTransform};

/// What every route shares: the gateway, the publisher, and the bridge's state.
pub struct Services {
    pub gateway: Gateway,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// Fires when the bridge stops reading; retries against an unreachable
    /// gateway then give up (the message stays with the broker).
    pub stopping: CancellationToken,
    /// Fires at the drain deadline: workers drop their jobs unfinished.
    pub cancel: CancellationToken,
    pub max_payload: usize,
    pub default_timeout: Duration,
    pub protocol: Protocol,
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
    pub msg: Arc<Inbound>,
    /// What the route's wildcards matched.
    pub captures: Vec<String>,
    pub done: RouteDone,
    pub dispatched: Instant,
}

/// The message did not finish and must not be acknowledged.
struct Abandoned;

/// Processes `job` on route `ctx` and reports its fate.
pub async fn process(ctx: &RouteCtx, svc: &Services, job: Job) {
    let Job {
        msg,
        captures,
        done,
        dispatched,
    } = job;
    if !done.start() {
        // The connection was lost while this copy waited, and the broker has
        // since redelivered the message: the redelivery is processed instead.
        count(&ctx.metrics.superseded);
        debug!(route = ctx.route.name(), topic = %msg.topic, "dropped: superseded by the broker's redelivery");
        return;
    }
    ctx.metrics
        .messages
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match run(ctx, svc, &msg, &captures).await {
        Ok(()) => {
            let us = u64::try_from(dispatched.elapsed().as_micros()).unwrap_or(u64::MAX);
            ctx.metrics
                .latency_us_sum
                .fetch_add(us, std::sync::atomic::Ordering::Relaxed);
            done.success();
        }
        Err(Abandoned) => {
            ctx.metrics
                .abandoned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(route = ctx.route.name(), topic = %msg.topic, "left unacknowledged for redelivery");
        }
    }
}

fn count(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn run(
    ctx: &RouteCtx,
    svc: &Services,
    msg: &Inbound,
    captures: &[String],
) -> Result<(), Abandoned> {
    let route = &ctx.route;
    let name = route.name();
    if msg.payload.len() > svc.max_payload {
        let f = Failure::new(
            Stage::Oversize,
            format!(
                "payload of {} bytes exceeds mqtt.max_packet_size ({} bytes)",
                msg.payload.len(),
                svc.max_payload
            ),
        );
        return dead_letter(ctx, svc, msg, captures, f).await;
    }
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
    };

    // 1. Before Invoke.
    let (function, input) = match ctx.transform.as_deref().filter(|t| t.has_before()) {
        None => (route.config.function.clone(), msg.payload.clone()),
        Some(t) => match t.before_invoke(&hook).await {
            Ok(PreDecision::Invoke { input, function }) => {
                let function = function.unwrap_or_else(|| route.config.function.clone());
                if function.is_empty() {
                    let f = Failure::new(
                        Stage::TransformBefore,
                        "the plugin chose an empty function name",
                    );
                    return dead_letter(ctx, svc, msg, captures, f).await;
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
                return dead_letter(ctx, svc, msg, captures, f).await;
            }
        },
    };

    // 2. Invoke.
    let reply = match invoke(ctx, svc, &function, input).await? {
        Ok(reply) => reply,
        Err(f) => return dead_letter(ctx, svc, msg, captures, f).await,
    };

    // 3. After Invoke.
    let outs = match ctx.transform.as_deref().filter(|t| t.has_after()) {
        Some(t) => match t.after_invoke(&hook, &reply).await {
            Ok(outs) => outs,
            Err(e) => {
                let mut f = Failure::new(Stage::TransformAfter, e.to_string());
                f.plugin_error = Some(e.kind());
                return dead_letter(ctx, svc, msg, captures, f).await;
            }
        },
        None if route.republish.is_some() => vec![OutMessage {
            topic: None,
            payload: Bytes::from(reply.into_bytes()),
            qos: None,
            retain: false,
            user_properties: Vec::new(),
        }],
        None => Vec::new(),
    };

    // 4. Publish every result; the source is acknowledged only after all of them.
    for out in outs {
        let publish = match resolve(ctx, msg, captures, out) {
            Ok(p) => p,
            Err(e) => {
                return dead_letter(ctx, svc, msg, captures, Failure::new(Stage::Publish, e)).await
            }
        };
        match publish_confirmed(svc, publish).await? {
            Ok(()) => count(&ctx.metrics.published),
            Err(e) => {
                return dead_letter(ctx, svc, msg, captures, Failure::new(Stage::Publish, e)).await
            }
        }
    }
    Ok(())
}

/// Invokes with the route's retry policy. The outer `Err` means abandoned; the
/// inner one is a failure to dead-letter.
async fn invoke(
    ctx: &RouteCtx,
    svc: &Services,
    function: &str,
    input: Bytes,
) -> Result<Result<String, Failure>, Abandoned> {
    let retry = &ctx.route.config.retry;
    let deadline = ctx.route.config.timeout.unwrap_or(svc.default_timeout);
    let mut counted = 0u32; // attempts that count against retry.attempts
    let mut tries = 0u32;
    loop {
        tries += 1;
        let status = match svc.gateway.invoke(function, input.clone(), deadline).await {
            Ok(reply) => {
                count(&ctx.metrics.invoked);
                return Ok(Ok(reply));
            }
            Err(status) => status,
        };
        count(&ctx.metrics.invoke_failures);
        let code = status.code();
        let waiting = code == Code::Unavailable && retry.wait_while_unavailable;
        if waiting && svc.stopping.is_cancelled() {
            return Err(Abandoned);
        }
        if !waiting {
            counted += 1;
        }
        let retryable = retry.on.iter().any(|c| c.to_tonic() == code);
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
            return Ok(Err(f));
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
            () = svc.stopping.cancelled(), if waiting => return Err(Abandoned),
        }
    }
}

/// Turns a transform's (or the default) result into a publish, filling in the
/// route's republish target where the result leaves it open.
fn resolve(
    ctx: &RouteCtx,
    msg: &Inbound,
    captures: &[String],
    out: OutMessage,
) -> Result<Publish, String> {
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
    Ok(Publish {
        topic,
        payload: out.payload,
        qos: out
            .qos
            .or(target.map(|t| t.qos))
            .unwrap_or(crate::message::QoS::AtLeastOnce),
        retain: out.retain || (default_target && target.is_some_and(|t| t.retain)),
        user_properties: out.user_properties,
        content_type: None,
    })
}

/// Publishes until the broker confirms or refuses. Connection losses are retried
/// (with backoff) because the source message is still unacknowledged.
async fn publish_confirmed(
    svc: &Services,
    publish: Publish,
) -> Result<Result<(), String>, Abandoned> {
    let mut tries = 0u32;
    loop {
        match svc.publisher.publish(publish.clone()).await {
            Ok(()) => return Ok(Ok(())),
            Err(PublishError::Closed) => return Err(Abandoned),
            Err(e) if e.is_transient() => {
                tries += 1;
                let delay = Duration::from_millis(100u64.saturating_mul(1 << tries.min(6)));
                debug!(topic = %publish.topic, error = %e, "publishing again");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Ok(Err(format!("publishing to {:?}: {e}", publish.topic))),
        }
    }
}

/// Publishes the dead letter; the message is done once the broker has it.
async fn dead_letter(
    ctx: &RouteCtx,
    svc: &Services,
    msg: &Inbound,
    captures: &[String],
    failure: Failure,
) -> Result<(), Abandoned> {
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
    let payload = deadletter::envelope(route.name(), &route.config.function, msg, &failure);
    let publish = Publish {
        topic,
        payload: Bytes::from(payload),
        qos: deadletter::QOS,
        retain: false,
        user_properties: Vec::new(),
        content_type: (svc.protocol == Protocol::V5).then(|| "application/json".to_string()),
    };
    match publish_confirmed(svc, publish).await? {
        Ok(()) => {
            count(&ctx.metrics.dead_letters);
            Ok(())
        }
        Err(e) => {
            // A dead letter the broker refuses cannot be delivered anywhere else;
            // keep the message with the broker rather than lose it.
            warn!(route = route.name(), error = %e, "the broker refused the dead letter; leaving the message unacknowledged");
            Err(Abandoned)
        }
    }
}
