//! Delivery tests (issue #2) with the bridge running in the test process
//! (`Bridge::start`/`stop`) against a real mosquitto, a real gRPC gateway and
//! real MQTT clients: routing and templates, shared subscriptions, retries and
//! dead letters, binary payloads, PUBACK order on the wire, gateway outages,
//! broker restarts, backpressure and MQTT 5 properties.
//!
//! Every wait is a bounded poll for a condition; nothing sleeps and hopes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::bridge::metric;
use common::mqtt::numbered;
use common::proxy::{MqttProxy, Seen};
use common::{
    publish_all, start_in_process, wait_until, BridgeConfig, Collector, Mosquitto, TestGateway,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(20);

fn msg(topic: &str, payload: &[u8]) -> (String, Vec<u8>) {
    (topic.to_string(), payload.to_vec())
}

/// Waits until the bridge has acknowledged `n` messages to the broker.
async fn wait_acked(bridge: &fxbridge::bridge::Bridge, n: u64) {
    let what = format!("{n} acknowledged messages");
    wait_until(LONG, &what, || bridge.metrics.totals().1 >= n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_route_to_each_matching_route_and_templates_use_captures() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: temps, topic: "wild/+/temp/#", function: fn-temps, republish: {topic: "out/{1}/{2}"}}"#)
        .route(r#"{name: hum, topic: "wild/+/humidity", function: fn-hum, republish: {topic: "copy/{route}/{topic}"}}"#);
    let results = Collector::start(broker.port(), &["out/#", "copy/#"]).await;
    let bridge = start_in_process(&cfg).await;

    publish_all(
        broker.port(),
        &[
            msg("wild/dev1/temp/a/b", b"m1"),
            msg("wild/dev2/temp/c", b"m2"),
            msg("wild/dev1/humidity", b"m3"),
            msg("other/dev3/temp/x", b"m4"),    // no route
            msg("wild/dev4/humidity/x", b"m5"), // + is one level only
        ],
    )
    .await;
    wait_acked(&bridge, 3).await;
    results.wait_for_distinct(3, LONG).await;

    let got: HashSet<(String, Vec<u8>)> = results
        .messages()
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    let want: HashSet<(String, Vec<u8>)> = [
        msg("out/dev1/a/b", b"m1"),
        msg("out/dev2/c", b"m2"),
        msg("copy/hum/wild/dev1/humidity", b"m3"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    assert_eq!(results.duplicates(), 0);
    let mut calls: Vec<(String, Vec<u8>)> = gw
        .invocations()
        .into_iter()
        .map(|i| (i.function, i.input))
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            msg("fn-hum", b"m3"),
            msg("fn-temps", b"m1"),
            msg("fn-temps", b"m2")
        ]
    );
    bridge.stop().await.unwrap();
}

/// Two routes whose filters both match one topic: each route runs once per
/// delivery. Under MQTT 5 the broker may deliver once per matching
/// subscription; subscription identifiers keep each route to its own copy.
async fn overlapping_routes(protocol: &str) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: a, topic: "lap/+/x", function: fa, republish: {topic: "lap-out/a/{1}"}}"#)
        .route(r#"{name: b, topic: "lap/#", function: fb, republish: {topic: "lap-out/b/{1}"}}"#);
    cfg.protocol = protocol.into();
    let results = Collector::start(broker.port(), &["lap-out/#"]).await;
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &[msg("lap/d1/x", b"both")]).await;
    results.wait_for_distinct(2, LONG).await;
    wait_until(LONG, "every delivery acknowledged", || {
        let (received, acked) = bridge.metrics.totals();
        received >= 1 && acked == received
    })
    .await;
    let (received, _) = bridge.metrics.totals();
    let by_fn = |f: &str| gw.invocations().iter().filter(|i| i.function == f).count();
    println!(
        "deliveries from the broker: {received}; fa: {}, fb: {}, republished: {}",
        by_fn("fa"),
        by_fn("fb"),
        results.count()
    );
    assert!(results
        .messages()
        .iter()
        .any(|m| m.topic == "lap-out/a/d1" && m.payload == b"both"));
    assert!(results
        .messages()
        .iter()
        .any(|m| m.topic == "lap-out/b/d1/x" && m.payload == b"both"));
    // Each route processes the message once, however many copies arrived.
    assert_eq!(by_fn("fa"), 1);
    assert_eq!(by_fn("fb"), 1);
    assert_eq!(results.count(), 2);
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_routes_each_process_a_message_once_mqtt311() {
    overlapping_routes("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_routes_each_process_a_message_once_mqtt5() {
    overlapping_routes("5").await;
}

async fn shared_subscription(protocol: &str) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let route = r#"{name: shared, topic: "$share/grp/sh/+/in", function: f, republish: {topic: "sh/{1}/out"}}"#;
    let mut cfg1 = BridgeConfig::new(broker.port(), &gw.url()).route(route);
    let mut cfg2 = BridgeConfig::new(broker.port(), &gw.url()).route(route);
    cfg1.protocol = protocol.into();
    cfg2.protocol = protocol.into();
    assert_ne!(cfg1.client_id, cfg2.client_id);
    let results = Collector::start(broker.port(), &["sh/+/out"]).await;
    let b1 = start_in_process(&cfg1).await;
    let b2 = start_in_process(&cfg2).await;

    let n = 40;
    let msgs: Vec<_> = (0..n)
        .map(|i| msg(&format!("sh/d{}/in", i % 4), format!("s-{i}").as_bytes()))
        .collect();
    publish_all(broker.port(), &msgs).await;
    results.wait_for_distinct(n, LONG).await;
    wait_until(LONG, "both bridges acknowledged everything", || {
        b1.metrics.totals().1 + b2.metrics.totals().1 >= n as u64
    })
    .await;

    let (r1, r2) = (b1.metrics.totals().0, b2.metrics.totals().0);
    println!("bridge 1 received {r1}, bridge 2 received {r2}");
    assert_eq!(r1 + r2, n as u64, "the group received each message once");
    assert!(r1 > 0 && r2 > 0, "the broker shares the group: {r1} / {r2}");
    assert_eq!(gw.calls(), n, "each message invoked once by the group");
    assert_eq!(gw.answered_inputs().len(), n);
    assert_eq!(results.count(), n, "no duplicate republish");
    b1.stop().await.unwrap();
    b2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_processes_each_message_once_across_two_bridges() {
    shared_subscription("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_processes_each_message_once_across_two_bridges_mqtt5() {
    shared_subscription("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_invokes_are_retried_until_they_succeed() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    // attempts: 3 counts INTERNAL failures only; UNAVAILABLE waits without using them.
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: r, topic: "retry/in", function: f, republish: {topic: "retry/out"},
            retry: {attempts: 3, backoff: {initial: 10ms, max: 50ms, multiplier: 2}}}"#,
    );
    let results = Collector::start(broker.port(), &["retry/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.fail_next(4, Code::Unavailable);
    gw.fail_next(2, Code::Internal);
    publish_all(broker.port(), &[msg("retry/in", b"try-me")]).await;
    results.wait_for("retry/out", b"try-me", LONG).await;
    wait_acked(&bridge, 1).await;

    let calls = gw.invocations();
    let codes: Vec<Option<Code>> = calls.iter().map(|c| c.failed).collect();
    let mut want = vec![Some(Code::Unavailable); 4];
    want.extend([Some(Code::Internal), Some(Code::Internal), None]);
    assert_eq!(codes, want);
    assert!(calls.iter().all(|c| c.input == b"try-me"));
    assert_eq!(results.count(), 1, "one result, no dead letter");
    let m = bridge.metrics.route("r");
    assert_eq!(m.retries.load(Relaxed), 6);
    assert_eq!(m.dead_letters.load(Relaxed), 0);
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_the_message_and_acknowledge_it() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: dl, topic: "dl/+/in", function: fails, republish: {topic: "dl/{1}/out"},
            retry: {attempts: 3, backoff: {initial: 10ms, max: 50ms, multiplier: 2}},
            dead_letter: "dead/{route}/{1}"}"#,
    );
    let results = Collector::start(broker.port(), &["dead/#", "dl/+/out"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.fail_next(1000, Code::Internal);
    let payload: &[u8] = &[0xff, 0x00, b'x', 0xfe];
    let before = std::time::SystemTime::now();
    publish_all(broker.port(), &[msg("dl/dev7/in", payload)]).await;
    wait_until(LONG, "a dead letter", || {
        !results.on("dead/dl/dev7").is_empty()
    })
    .await;
    wait_acked(&bridge, 1).await;

    let dead = results.on("dead/dl/dev7");
    assert_eq!(dead.len(), 1);
    let env: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(env["route"], "dl");
    assert_eq!(env["function"], "fails");
    assert_eq!(env["topic"], "dl/dev7/in");
    assert_eq!(
        env["payload_base64"],
        base64::engine::general_purpose::STANDARD.encode(payload)
    );
    assert_eq!(env["payload_size"], payload.len());
    assert_eq!(env["qos"], 1);
    assert_eq!(env["retain"], false);
    assert_eq!(env["error_kind"], "gateway");
    assert_eq!(env["grpc_code"], "INTERNAL");
    assert_eq!(env["attempts"], 3);
    let error = env["error"].as_str().unwrap();
    assert!(
        error.contains("INTERNAL") && error.contains("fails"),
        "{error}"
    );
    let ts = humantime::parse_rfc3339(env["timestamp"].as_str().unwrap()).unwrap();
    assert!(ts >= before - Duration::from_secs(1) && ts <= std::time::SystemTime::now());
    assert_eq!(gw.calls_with(payload), 3, "exactly `attempts` calls");
    assert!(results.on("dl/dev7/out").is_empty(), "nothing republished");
    bridge.stop().await.unwrap();

    // Same client id again: the dead-lettered source was acknowledged, so the
    // broker does not redeliver it. A marker published afterwards comes through
    // (any redelivery would have come first).
    gw.clear_failures();
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &[msg("dl/dev7/in", b"marker")]).await;
    results.wait_for("dl/dev7/out", b"marker", LONG).await;
    wait_acked(&bridge, 1).await;
    assert_eq!(
        gw.calls_with(payload),
        3,
        "the dead-lettered message came back"
    );
    assert_eq!(results.on("dead/dl/dev7").len(), 1);
    assert_eq!(bridge.metrics.totals().0, 1, "only the marker was received");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_reach_the_gateway_byte_exact_and_come_back_as_msg() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: bin, topic: "bin/+/in", function: echo, republish: {topic: "bin/{1}/out"}}"#,
    );
    let results = Collector::start(broker.port(), &["bin/+/out"]).await;
    let bridge = start_in_process(&cfg).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ascii", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("multibyte", "grüße ✓ 温度".as_bytes().to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00, 0x80, b'a', 0xc3]),
    ];
    let msgs: Vec<_> = cases
        .iter()
        .map(|(name, p)| msg(&format!("bin/{name}/in"), p))
        .collect();
    publish_all(broker.port(), &msgs).await;
    results.wait_for_distinct(cases.len(), LONG).await;

    // The gateway saw every input exactly as published.
    let mut inputs: Vec<Vec<u8>> = gw.invocations().into_iter().map(|i| i.input).collect();
    inputs.sort();
    let mut want: Vec<Vec<u8>> = cases.iter().map(|(_, p)| p.clone()).collect();
    want.sort();
    assert_eq!(inputs, want);
    // `Msg` is a protobuf string: the echo of UTF-8 (and of nothing) is the input;
    // the echo of non-UTF-8 is its lossy rendering, republished as UTF-8.
    for (name, p) in &cases {
        let out = results.on(&format!("bin/{name}/out"));
        assert_eq!(out.len(), 1, "{name}");
        let expected = String::from_utf8_lossy(p).into_owned().into_bytes();
        assert_eq!(out[0].payload, expected, "{name}");
        if std::str::from_utf8(p).is_ok() {
            assert_eq!(&out[0].payload, p, "{name} passes through unchanged");
        }
    }
    bridge.stop().await.unwrap();
}

/// Packet ids of the PUBLISHes (on `topic`) and PUBACKs of connection `conn`.
fn wire(seen: &[Seen], conn: usize, topic: &str) -> (Vec<(u16, Vec<u8>)>, Vec<u16>) {
    let mut publishes = Vec::new();
    let mut acks = Vec::new();
    for s in seen {
        match s {
            Seen::Publish {
                conn: c,
                pkid,
                topic: t,
                payload,
            } if *c == conn && t == topic => publishes.push((*pkid, payload.clone())),
            Seen::PubAck { conn: c, pkid } if *c == conn => acks.push(*pkid),
            _ => {}
        }
    }
    (publishes, acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_leave_in_publish_order_although_work_finishes_out_of_order() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let proxy = MqttProxy::start(broker.port()).await;
    let cfg = BridgeConfig::new(proxy.port(), &gw.url()).route(
        r#"{name: ord, topic: "ord/in", function: f, ordering: none, max_in_flight: 16, republish: {topic: "ord/out"}}"#,
    );
    let results = Collector::start(broker.port(), &["ord/out"]).await;
    let bridge = start_in_process(&cfg).await;
    // The route's own session: client id `<client_id>.<route>`.
    let conns = proxy.connections_of(&format!("{}.ord", cfg.client_id));
    assert_eq!(
        conns.len(),
        1,
        "one subscriber connection: {:?}",
        proxy.seen()
    );
    let conn = conns[0];

    let n = 8;
    let k = 2; // held at the gateway while the later ones finish
    let held = format!("m-{k}").into_bytes();
    gw.hold(&held);
    publish_all(broker.port(), &numbered("ord/in", "m", 0..n)).await;
    let later: Vec<Vec<u8>> = (0..n)
        .filter(|i| *i != k)
        .map(|i| format!("m-{i}").into_bytes())
        .collect();
    wait_until(LONG, "every message but the held one republished", || {
        let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
        later.iter().all(|p| got.contains(p))
    })
    .await;
    // The ones before k are acknowledged; k and everything after it wait for k.
    wait_until(LONG, "the PUBACKs before the held message", || {
        wire(&proxy.seen(), conn, "ord/in").1.len() >= k
    })
    .await;
    let (publishes, acks) = wire(&proxy.seen(), conn, "ord/in");
    assert_eq!(publishes.len(), n);
    let order: Vec<u16> = publishes.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        acks,
        order[..k].to_vec(),
        "while message {k} is held, only the ones before it may be acknowledged"
    );
    assert_eq!(gw.calls(), n, "all ran concurrently");

    gw.release();
    wait_until(LONG, "every PUBACK", || {
        wire(&proxy.seen(), conn, "ord/in").1.len() >= n
    })
    .await;
    let (publishes, acks) = wire(&proxy.seen(), conn, "ord/in");
    let payloads: Vec<Vec<u8>> = publishes.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        payloads,
        numbered("ord/in", "m", 0..n)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    );
    assert_eq!(acks, order, "PUBACKs in PUBLISH order");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_outage_delays_messages_but_loses_none() {
    let broker = Mosquitto::start();
    let mut gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: out, topic: "outage/+/in", function: f, ordering: none, max_in_flight: 64,
            republish: {topic: "outage/{1}/out"},
            retry: {attempts: 2, backoff: {initial: 50ms, max: 300ms, multiplier: 2}}}"#,
    );
    let results =
        Collector::start(broker.port(), &["outage/+/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.stop().await;

    let n = 30;
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            msg(
                &format!("outage/d{}/in", i % 3),
                format!("o-{i}").as_bytes(),
            )
        })
        .collect();
    publish_all(broker.port(), &msgs).await;
    let m = bridge.metrics.route("out");
    // Every message the bridge holds has failed more than `attempts` times:
    // UNAVAILABLE does not use them up.
    // mosquitto sends at most MAX_INFLIGHT unacknowledged messages to a client;
    // the rest wait in the bridge's session at the broker.
    let window = n.min(common::mosquitto::MAX_INFLIGHT) as u64;
    let failing = common::wait::try_wait_until(LONG, || {
        bridge.metrics.totals().0 >= window && m.invoke_failures.load(Relaxed) >= 3 * window
    })
    .await;
    assert!(
        failing,
        "not every message failing against the stopped gateway: {}",
        bridge.metrics.render()
    );
    // The outage lasts a few seconds while the bridge keeps retrying.
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(results.count(), 0);
    gw.restart().await;
    results.wait_for_distinct(n, Duration::from_secs(30)).await;
    wait_acked(&bridge, n as u64).await;
    // The outage shows in the gateway counters: failed attempts while it was
    // down (the bridge had not connected before), then a connection.
    let gateway = bridge.metrics.gateway();
    assert!(
        gateway.connect_failures.load(Relaxed) >= 1,
        "{}",
        bridge.metrics.render()
    );
    assert!(
        gateway.connects.load(Relaxed) >= 1,
        "{}",
        bridge.metrics.render()
    );
    println!(
        "outage {:?}; failed calls {}, answered calls {}",
        down.elapsed(),
        m.invoke_failures.load(Relaxed),
        gw.calls()
    );
    let answered = gw.answered_inputs();
    for (_, p) in &msgs {
        assert!(
            answered.contains(p),
            "{:?} never invoked",
            String::from_utf8_lossy(p)
        );
    }
    assert!(results.on("fxbridge/dead-letter/out").is_empty());
    assert_eq!(m.dead_letters.load(Relaxed), 0);
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    broker_restart_mid_stream("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_mqtt5() {
    broker_restart_mid_stream("5").await;
}

async fn broker_restart_mid_stream(protocol: &str) {
    let mut broker = Mosquitto::start_persistent();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(5));
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: br, topic: "brk/+/in", function: f, ordering: none, max_in_flight: 8, republish: {topic: "brk/{1}/out"}}"#,
    );
    cfg.protocol = protocol.into();
    let collector_id = common::wait::unique("collector");
    let results = Collector::start_persistent(broker.port(), &collector_id, &["brk/+/out"]).await;
    let bridge = start_in_process(&cfg).await;

    let first: Vec<_> = (0..150)
        .map(|i| msg(&format!("brk/d{}/in", i % 5), format!("b-{i}").as_bytes()))
        .collect();
    publish_all(broker.port(), &first).await;
    results.wait_for_distinct(20, LONG).await;
    let before = results.distinct();
    tokio::task::block_in_place(|| broker.restart());
    println!("broker restarted after {before} results");
    let second: Vec<_> = (150..300)
        .map(|i| msg(&format!("brk/d{}/in", i % 5), format!("b-{i}").as_bytes()))
        .collect();
    publish_all(broker.port(), &second).await;

    let all: Vec<_> = first.iter().chain(&second).collect();
    let want: HashSet<Vec<u8>> = all.iter().map(|(_, p)| p.clone()).collect();
    let complete = common::wait::try_wait_until(Duration::from_secs(60), || {
        let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
        want.is_subset(&got)
    })
    .await;
    let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
    assert!(
        complete,
        "{} of {} messages never republished (lost)",
        want.difference(&got).count(),
        want.len()
    );
    let answered = gw.answered_inputs();
    assert!(want.is_subset(&answered), "some message was never invoked");
    // The bridge held many messages when the broker went away (150 published,
    // 8 at a time through a 5 ms function, restart after 20 results); the broker
    // redelivers them, and each redelivery is settled against the held copy.
    let superseded = bridge.metrics.route("br").superseded.load(Relaxed);
    let already_done = bridge.metrics.redeliveries_already_done();
    assert!(
        superseded + already_done > 0,
        "no redelivery was recognised: {}",
        bridge.metrics.render()
    );
    println!(
        "broker restart (MQTT {protocol}): sent {}, invocations {}, distinct invoked {}, results {}, duplicate results {}, held copies superseded {superseded}, redeliveries only acknowledged {already_done}",
        want.len(),
        gw.calls(),
        answered.len(),
        results.count(),
        results.duplicates()
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_what_the_bridge_holds() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let max_pending = 4;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: bp, topic: "bp/in", function: f, ordering: none, max_in_flight: 2, republish: {topic: "bp/out"}}"#,
    );
    cfg.max_pending = max_pending;
    let results = Collector::start(broker.port(), &["bp/out"]).await;
    let bridge = start_in_process(&cfg).await;
    let n = 20;
    let msgs = numbered("bp/in", "p", 0..n);
    for (_, p) in &msgs {
        gw.hold(p);
    }
    publish_all(broker.port(), &msgs).await;
    // Nothing finishes while the gateway holds every call: the bridge takes
    // `max_pending` messages (plus the one waiting for room) and stops reading.
    wait_until(LONG, "the bridge full", || {
        bridge.metrics.totals().0 >= max_pending as u64 && gw.in_flight() == 2
    })
    .await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(1) {
        let (received, _) = bridge.metrics.totals();
        assert!(
            received <= max_pending as u64 + 1,
            "received {received} with {max_pending} pending allowed"
        );
        assert!(gw.in_flight() <= 2, "{} calls at once", gw.in_flight());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.calls(), 2, "max_in_flight caps concurrent calls");

    gw.release();
    results.wait_for_distinct(n, LONG).await;
    wait_acked(&bridge, n as u64).await;
    assert_eq!(gw.max_in_flight(), 2);
    let page = bridge.metrics.render();
    let paused = metric(&page, "backpressure_total").unwrap();
    assert!(paused > 0, "reading paused at the limit:\n{page}");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_user_properties_reach_the_dead_letter_envelope() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: five, topic: "v5/+/in", function: f, republish: {topic: "v5/{1}/out"}}"#);
    cfg.protocol = "5".into();
    let client =
        common::mqtt5::Client::start(broker.port(), &["v5/+/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    let props = vec![
        ("trace-id".to_string(), "abc-123".to_string()),
        ("unit".to_string(), "°C".to_string()),
        ("trace-id".to_string(), "second".to_string()),
    ];

    // INVALID_ARGUMENT is not retried: straight to the dead letter.
    gw.fail_next(1, Code::InvalidArgument);
    client.publish("v5/dev1/in", b"bad", props.clone());
    wait_until(LONG, "the dead letter", || {
        !client.on("fxbridge/dead-letter/five").is_empty()
    })
    .await;
    let dead = client.on("fxbridge/dead-letter/five");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].content_type.as_deref(), Some("application/json"));
    let env: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    let expected: serde_json::Value = props
        .iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect();
    assert_eq!(env["user_properties"], expected, "in order, repeats kept");
    assert_eq!(env["grpc_code"], "INVALID_ARGUMENT");
    assert_eq!(env["attempts"], 1);

    // Without a transform the result is the reply, keeping the request's user
    // properties (in order, repeats kept), with no content type; the bridge
    // adds the trace context it started (the request had none).
    client.publish("v5/dev1/in", b"good", props.clone());
    wait_until(LONG, "the result", || !client.on("v5/dev1/out").is_empty()).await;
    let out = client.on("v5/dev1/out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, b"good");
    let (trace, kept): (Vec<_>, Vec<_>) = out[0]
        .user_properties
        .iter()
        .cloned()
        .partition(|(k, _)| k == "traceparent");
    assert_eq!(kept, props);
    assert_eq!(trace.len(), 1, "{:?}", out[0].user_properties);
    assert_eq!(out[0].content_type, None);
    wait_acked(&bridge, 2).await;
    let by: BTreeMap<String, usize> = gw.invocations().iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(String::from_utf8_lossy(&i.input).into_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(by.get("bad"), Some(&1));
    assert_eq!(by.get("good"), Some(&1));
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_order_holds_back_a_topic_but_not_the_others() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: pt, topic: "pt/+/in", function: f, ordering: per-topic, max_in_flight: 8, republish: {topic: "pt/{1}/out"}}"#,
    );
    let results = Collector::start(broker.port(), &["pt/+/out"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.hold(b"a-0");
    let mut msgs = numbered("pt/a/in", "a", 0..3);
    msgs.extend(numbered("pt/b/in", "b", 0..3));
    publish_all(broker.port(), &msgs).await;
    // Topic b is not held up by topic a.
    wait_until(LONG, "topic b's results", || {
        results.on("pt/b/out").len() >= 3
    })
    .await;
    assert_eq!(
        gw.calls_with(b"a-1") + gw.calls_with(b"a-2"),
        0,
        "a-1/a-2 ran before a-0 finished"
    );
    assert!(results.on("pt/a/out").is_empty());

    gw.release();
    wait_until(LONG, "topic a's results", || {
        results.on("pt/a/out").len() >= 3
    })
    .await;
    let out: Vec<Vec<u8>> = results
        .on("pt/a/out")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(out, vec![b"a-0".to_vec(), b"a-1".to_vec(), b"a-2".to_vec()]);
    let calls: Vec<Vec<u8>> = gw
        .invocations()
        .into_iter()
        .map(|i| i.input)
        .filter(|i| i.starts_with(b"a-"))
        .collect();
    assert_eq!(
        calls,
        vec![b"a-0".to_vec(), b"a-1".to_vec(), b"a-2".to_vec()]
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_the_session_gets_the_subscriptions_again() {
    // No persistence: after the restart the broker knows nothing of the bridge,
    // which must subscribe again by itself (rumqttc does not).
    let mut broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: rs, topic: "rs/in", function: f, republish: {topic: "rs/out"}}"#);
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &numbered("rs/in", "before", 0..1)).await;
    wait_acked(&bridge, 1).await;

    tokio::task::block_in_place(|| broker.restart());
    let results = Collector::start(broker.port(), &["rs/out"]).await;
    // Probe until the bridge is subscribed again (bounded): before that, nobody
    // is subscribed and the broker drops the probes.
    let deadline = Instant::now() + LONG;
    let mut i = 0;
    while results.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the bridge never subscribed again"
        );
        publish_all(broker.port(), &numbered("rs/in", "probe", i..i + 1)).await;
        i += 1;
        common::wait::try_wait_until(Duration::from_millis(300), || results.count() > 0).await;
    }
    let msgs = numbered("rs/in", "after", 0..20);
    publish_all(broker.port(), &msgs).await;
    wait_until(LONG, "every message after the restart", || {
        let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
        msgs.iter().all(|(_, p)| got.contains(p))
    })
    .await;
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_the_gateway_is_down_leaves_messages_for_the_next_start() {
    let broker = Mosquitto::start();
    let mut gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: gd, topic: "gd/in", function: f, ordering: none, republish: {topic: "gd/out"},
            retry: {backoff: {initial: 50ms, max: 200ms, multiplier: 2}}}"#,
    );
    let results = Collector::start(broker.port(), &["gd/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.stop().await;
    let msgs = numbered("gd/in", "g", 0..5);
    publish_all(broker.port(), &msgs).await;
    let m = bridge.metrics.route("gd");
    wait_until(LONG, "every message failing", || {
        bridge.metrics.totals().0 >= 5 && m.invoke_failures.load(Relaxed) >= 10
    })
    .await;
    // Waiting for the gateway ends at the stop: no drain wait, no dead letter.
    let stopping = Instant::now();
    bridge.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert_eq!(m.abandoned.load(Relaxed), 5);
    assert_eq!(results.count(), 0);

    gw.restart().await;
    let bridge = start_in_process(&cfg).await;
    results.wait_for_distinct(5, LONG).await;
    let out: HashSet<Vec<u8>> = results
        .on("gd/out")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(out, msgs.iter().map(|(_, p)| p.clone()).collect());
    assert!(results.on("fxbridge/dead-letter/gd").is_empty());
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_drain_deadline_unfinished_messages_are_redelivered() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: dd, topic: "dd/in", function: f, ordering: none, republish: {topic: "dd/out"}}"#,
    );
    cfg.drain_timeout = "1s".into();
    let results = Collector::start(broker.port(), &["dd/out"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.hold(b"slow");
    publish_all(
        broker.port(),
        &[
            msg("dd/in", b"fast-0"),
            msg("dd/in", b"slow"),
            msg("dd/in", b"fast-1"),
        ],
    )
    .await;
    results.wait_for("dd/out", b"fast-1", LONG).await;
    results.wait_for("dd/out", b"fast-0", LONG).await;
    wait_until(LONG, "the slow call in flight", || gw.in_flight() == 1).await;

    let stopping = Instant::now();
    bridge.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "stop took {took:?} with a 1 s drain timeout"
    );
    assert!(results.on("dd/out").iter().all(|m| m.payload != b"slow"));

    // The next start gets "slow" again (it was never acknowledged) and finishes it.
    gw.release();
    let bridge = start_in_process(&cfg).await;
    results.wait_for("dd/out", b"slow", LONG).await;
    assert_eq!(gw.calls_with(b"slow"), 2);
    bridge.stop().await.unwrap();
}

/// A payload over `mqtt.max_packet_size` is dead-lettered without its payload and
/// acknowledged, under both protocol versions.
async fn oversize_is_dead_lettered(protocol: &str) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: big, topic: "big/in", function: f, republish: {topic: "big/out"}}"#);
    cfg.protocol = protocol.into();
    cfg.max_packet_size = Some("1KiB".into());
    let results = Collector::start(broker.port(), &["big/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    let big = vec![b'x'; 4096];
    publish_all(
        broker.port(),
        &[msg("big/in", &big), msg("big/in", b"small")],
    )
    .await;
    results.wait_for("big/out", b"small", LONG).await;
    wait_until(LONG, "the oversize dead letter", || {
        !results.on("fxbridge/dead-letter/big").is_empty()
    })
    .await;
    let dead = results.on("fxbridge/dead-letter/big");
    let env: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(env["error_kind"], "oversize");
    assert_eq!(env["payload_size"], big.len());
    assert!(env["payload_base64"].is_null());
    assert_eq!(gw.calls_with(&big), 0);
    wait_acked(&bridge, 2).await;
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_dead_lettered_under_mqtt311() {
    oversize_is_dead_lettered("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_dead_lettered_under_mqtt5() {
    oversize_is_dead_lettered("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_deadline_cuts_a_hanging_call_and_retries_it() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: dl2, topic: "hang/+/in", function: f, timeout: 200ms, republish: {topic: "hang/{1}/out"},
            retry: {attempts: 2, backoff: {initial: 10ms, max: 50ms, multiplier: 2}}}"#,
    );
    let results = Collector::start(broker.port(), &["hang/+/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.delay_input(b"hangs", Duration::from_secs(30));
    let started = Instant::now();
    publish_all(
        broker.port(),
        &[msg("hang/a/in", b"hangs"), msg("hang/b/in", b"quick")],
    )
    .await;
    results.wait_for("hang/b/out", b"quick", LONG).await;
    wait_until(LONG, "the dead letter", || {
        !results.on("fxbridge/dead-letter/dl2").is_empty()
    })
    .await;
    let took = started.elapsed();
    let env: serde_json::Value =
        serde_json::from_slice(&results.on("fxbridge/dead-letter/dl2")[0].payload).unwrap();
    assert_eq!(env["grpc_code"], "DEADLINE_EXCEEDED");
    assert_eq!(env["attempts"], 2);
    assert_eq!(gw.calls_with(b"hangs"), 2);
    assert!(
        took >= Duration::from_millis(400),
        "two 200 ms deadlines took {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    wait_acked(&bridge, 2).await;
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_routes_keep_working_across_a_restart() {
    // A QoS 2 handshake left at PUBREC by a stop (or a lost connection) makes the
    // broker resend PUBREL on the next session; the bridge must not choke on it.
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: q2, topic: "q2/in", qos: 2, function: f, ordering: none, republish: {topic: "q2/out", qos: 2}}"#,
    );
    let results = Collector::start(broker.port(), &["q2/out"]).await;
    let bridge = start_in_process(&cfg).await;
    let msgs = numbered("q2/in", "e", 0..20);
    common::mqtt::publish_all_qos(broker.port(), &msgs, rumqttc::QoS::ExactlyOnce).await;
    results.wait_for_distinct(20, LONG).await;
    wait_acked(&bridge, 20).await;
    bridge.stop().await.unwrap();
    assert_eq!(gw.calls(), 20);

    // Nothing comes back on the next start: every PUBREC was followed through.
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &numbered("q2/in", "marker", 0..1)).await;
    let through = common::wait::try_wait_until(LONG, || {
        results
            .on("q2/out")
            .iter()
            .any(|m| m.payload == b"marker-0")
    })
    .await;
    let log = broker.log();
    let connects = log.matches(&format!("as {} (", cfg.client_id)).count();
    assert!(
        through,
        "the marker never came through; the bridge connected {connects} times:\n{}",
        log.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(gw.calls(), 21, "a QoS 2 message was delivered again");
    assert_eq!(results.count(), 21);
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_max_concurrent_caps_calls_across_routes() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: c1, topic: "cc/1", function: f, ordering: none, max_in_flight: 4, republish: {topic: "cc/out"}}"#)
        .route(r#"{name: c2, topic: "cc/2", function: f, ordering: none, max_in_flight: 4, republish: {topic: "cc/out"}}"#);
    cfg.gateway_max_concurrent = Some(3);
    let results = Collector::start(broker.port(), &["cc/out"]).await;
    let bridge = start_in_process(&cfg).await;
    let mut msgs = numbered("cc/1", "one", 0..6);
    msgs.extend(numbered("cc/2", "two", 0..6));
    for (_, p) in &msgs {
        gw.hold(p);
    }
    publish_all(broker.port(), &msgs).await;
    wait_until(LONG, "three calls in flight", || gw.in_flight() == 3).await;
    // Eight jobs run (4 per route) but only three calls reach the gateway.
    wait_until(LONG, "every job started", || {
        bridge.metrics.route("c1").messages.load(Relaxed) == 4
            && bridge.metrics.route("c2").messages.load(Relaxed) == 4
    })
    .await;
    assert_eq!(gw.calls(), 3);
    gw.release();
    results.wait_for_distinct(12, LONG).await;
    assert_eq!(gw.max_in_flight(), 3);
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_retain_is_honoured() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: rt, topic: "rt/+/in", function: f, republish: {topic: "rt/{1}/state", retain: true}}"#,
    );
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &[msg("rt/d1/in", b"on")]).await;
    wait_acked(&bridge, 1).await;
    // A subscriber that comes later gets the retained result.
    let late = Collector::start(broker.port(), &["rt/+/state"]).await;
    late.wait_for("rt/d1/state", b"on", LONG).await;
    assert!(late.on("rt/d1/state")[0].retain);
    bridge.stop().await.unwrap();
}

/// A gateway whose reply is not a protobuf `Message`: asking again would get
/// the same reply, so the message is dead-lettered after one call, not five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_reply_is_dead_lettered_without_retries() {
    let broker = Mosquitto::start();
    let gw = common::MalformedGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: bad, topic: "bad/in", function: f, republish: {topic: "bad/out"},
            retry: {attempts: 5, backoff: {initial: 10ms, max: 20ms}}}"#,
    );
    let results = Collector::start(broker.port(), &["bad/out", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    publish_all(broker.port(), &[msg("bad/in", b"x")]).await;
    wait_until(LONG, "the dead letter", || {
        !results.on("fxbridge/dead-letter/bad").is_empty()
    })
    .await;
    let env: serde_json::Value =
        serde_json::from_slice(&results.on("fxbridge/dead-letter/bad")[0].payload).unwrap();
    assert_eq!(env["error_kind"], "gateway");
    assert_eq!(env["grpc_code"], "INTERNAL");
    assert_eq!(env["attempts"], 1, "{env}");
    assert!(
        env["error"]
            .as_str()
            .unwrap()
            .contains("not a valid Message"),
        "{env}"
    );
    assert_eq!(gw.calls(), 1);
    assert!(results.on("bad/out").is_empty());
    bridge.stop().await.unwrap();
}

/// The gateway's connection goes silent (a black-holed route: no reset, no
/// close) while a call is in flight. HTTP/2 PINGs find it: the connection is
/// replaced and the message is invoked again on a new one long before its
/// 30 s deadline, instead of the call waiting it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_connection_is_replaced_before_the_call_deadline() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let proxy = common::tcp::TcpProxy::start(gw.port()).await;
    let url = format!("http://127.0.0.1:{}", proxy.port());
    let mut cfg = BridgeConfig::new(broker.port(), &url).route(
        r#"{name: bh, topic: "bh/in", function: f, republish: {topic: "bh/out"}, timeout: 30s,
            retry: {backoff: {initial: 50ms, max: 200ms}}}"#,
    );
    cfg.gateway_timeout = "30s".into();
    let yaml = cfg.to_yaml().replace(
        "  connect_timeout: 1s\n",
        "  connect_timeout: 1s\n  keep_alive: {interval: 1s, timeout: 1s}\n",
    );
    let config = fxbridge::config::Config::parse(&yaml, "bh.yaml", std::path::Path::new("."))
        .expect("config");
    let results = Collector::start(broker.port(), &["bh/out"]).await;
    let bridge = fxbridge::bridge::Bridge::start(config, fxbridge::metrics::Metrics::new())
        .await
        .expect("start");
    common::bridge::wait_ready(&bridge.metrics).await;
    publish_all(broker.port(), &[msg("bh/in", b"before")]).await;
    results.wait_for("bh/out", b"before", LONG).await;

    proxy.black_hole();
    let started = Instant::now();
    publish_all(broker.port(), &[msg("bh/in", b"silent")]).await;
    wait_until(LONG, "the call retried", || {
        bridge.metrics.route("bh").retries.load(Relaxed) >= 1
    })
    .await;
    proxy.heal();
    results.wait_for("bh/out", b"silent", LONG).await;
    let took = started.elapsed();
    let page = bridge.metrics.render();
    eprintln!(
        "silent connection replaced: result after {took:?} (call deadline 30 s); gateway connections {:?}",
        metric(&page, "gateway_connects_total")
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(metric(&page, "gateway_connects_total").unwrap() >= 2);
    bridge.stop().await.unwrap();
}

/// A retained message (kept by the broker before the bridge subscribed) and a
/// restart of the bridge, which subscribes again and gets it replayed:
/// `retained: process` runs it each time, `skip-on-resubscribe` only the first
/// time its filter is subscribed, `skip` never. A live message published with
/// RETAIN while the bridge is subscribed is processed in every mode.
async fn retained_replays(mode: &str, first: usize, second: usize) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(&format!(
        r#"{{name: rt, topic: "st/+", function: f, retained: {mode}, republish: {{topic: "st-out/{{1}}"}}}}"#
    ));
    common::mqtt::publish_retained(broker.port(), &[msg("st/x", b"state")]).await;
    let results = Collector::start(broker.port(), &["st-out/+"]).await;
    let states = || {
        results
            .on("st-out/x")
            .iter()
            .filter(|m| m.payload == b"state")
            .count()
    };
    for (run, want) in [(1, first), (2, second)] {
        let bridge = start_in_process(&cfg).await;
        // Messages of one topic run in arrival order: once the fence's result
        // is out, the replayed state before it was either processed or skipped.
        let fence = format!("fence-{run}");
        publish_all(broker.port(), &[msg("st/x", fence.as_bytes())]).await;
        results.wait_for("st-out/x", fence.as_bytes(), LONG).await;
        assert_eq!(states(), want, "run {run} with retained: {mode}");
        bridge.stop().await.unwrap();
    }
    // Live, while subscribed: delivered without RETAIN, so always processed.
    let bridge = start_in_process(&cfg).await;
    common::mqtt::publish_retained(broker.port(), &[msg("st/x", b"live")]).await;
    results.wait_for("st-out/x", b"live", LONG).await;
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_processed_on_every_subscription_by_default() {
    retained_replays("process", 1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_replayed_on_resubscribe_can_be_skipped() {
    retained_replays("skip-on-resubscribe", 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_can_be_skipped_altogether() {
    retained_replays("skip", 0, 0).await;
}
