//! Delivery at the bridge's limits (issue #9): results larger than the broker
//! accepts, reloads and stops while reading is paused at `mqtt.max_pending`,
//! control packets under load, messages of removed routes, a reconnect reload
//! that fails, and one stuck route next to a healthy one. Real mosquitto, a real
//! gRPC gateway, the bridge in the test process (or the binary where a signal is
//! part of the story).
//!
//! Every wait is a bounded poll for a condition; nothing sleeps and hopes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use common::bridge::metric;
use common::mqtt::numbered;
use common::{
    free_port, publish_all, start_in_process, wait_until, BridgeConfig, BridgeProcess, Collector,
    ConfigFile, Mosquitto, TestGateway,
};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(30);

fn payloads(msgs: &[(String, Vec<u8>)]) -> HashSet<Vec<u8>> {
    msgs.iter().map(|(_, p)| p.clone()).collect()
}

/// A reply too large to publish is dead-lettered (`result-too-large`) with an
/// envelope that fits, its source is acknowledged once, and the other route's
/// 100 messages flow meanwhile. `broker_limit` is mosquitto's `max_packet_size`
/// (announced to MQTT 5 clients in CONNACK).
async fn oversized_result(protocol: &str, bridge_limit: Option<&str>, broker_limit: Option<usize>) {
    let broker = match broker_limit {
        Some(n) => Mosquitto::start_with(&format!("max_packet_size {n}")),
        None => Mosquitto::start(),
    };
    let gw = TestGateway::start().await;
    // Like OpenFx runtimes that prefix their reply: 80,000 bytes more than the input.
    gw.reply_prefix("grow", &"p".repeat(80_000));
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: big, topic: "big/in", function: grow, republish: {topic: "big/out"}}"#)
        .route(
            r#"{name: small, topic: "small/+", function: f, republish: {topic: "small-out/{1}"}}"#,
        );
    cfg.protocol = protocol.into();
    cfg.max_packet_size = bridge_limit.map(str::to_string);
    let results = Collector::start(
        broker.port(),
        &["big/out", "small-out/+", "fxbridge/dead-letter/#"],
    )
    .await;
    let bridge = start_in_process(&cfg).await;

    let input = vec![b'i'; 60_000];
    publish_all(broker.port(), &[("big/in".to_string(), input.clone())]).await;
    let small: Vec<_> = (0..100)
        .map(|i| (format!("small/{}", i % 10), format!("s-{i}").into_bytes()))
        .collect();
    publish_all(broker.port(), &small).await;

    wait_until(LONG, "100 results of the other route", || {
        results
            .messages()
            .iter()
            .filter(|m| m.topic.starts_with("small-out/"))
            .map(|m| m.payload.clone())
            .collect::<HashSet<_>>()
            .len()
            == 100
    })
    .await;
    wait_until(LONG, "the dead letter of the oversized result", || {
        !results.on("fxbridge/dead-letter/big").is_empty()
    })
    .await;
    wait_until(LONG, "101 acknowledged", || {
        bridge.metrics.totals().1 >= 101
    })
    .await;
    assert!(
        results.on("big/out").is_empty(),
        "the oversized result was published"
    );
    let dead = results.on("fxbridge/dead-letter/big");
    assert_eq!(dead.len(), 1);
    let env: serde_json::Value = serde_json::from_slice(&dead[0].payload).expect("JSON envelope");
    assert_eq!(env["error_kind"], "result-too-large", "{env}");
    assert_eq!(env["payload_size"], input.len());
    let limit = broker_limit.unwrap_or(64 * 1024);
    assert!(dead[0].payload.len() < limit, "the envelope fits the limit");
    match env["payload_base64"].as_str() {
        Some(b64) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64");
            assert_eq!(decoded, input);
        }
        None => assert_eq!(
            env["payload_sha256"],
            format!("{:x}", Sha256::digest(&input)),
            "a payload left out is identified by its hash: {env}"
        ),
    }
    let error = env["error"].as_str().unwrap_or_default();
    // PUBLISH of 140,000 bytes to big/out at QoS 1: fixed header (1), remaining
    // length (3), topic (2 + 7), packet id (2); under MQTT 5 the properties:
    // their length (1), the payload format indicator (2) and the user property
    // `traceparent` (1 + 2 + 11 + 2 + 55).
    let v5 = if protocol == "5" { 1 + 2 + 71 } else { 0 };
    let packet = 1 + 3 + 2 + 7 + 2 + 140_000 + v5;
    let expected = format!(
        "a packet of {packet} bytes; the broker accepts at most {} bytes",
        broker_limit.unwrap_or(64 * 1024)
    );
    assert!(error.contains(&expected), "{error}");
    assert_eq!(
        gw.calls_with(&input),
        1,
        "invoked once, not again and again"
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_dead_lettered_and_other_routes_flow_mqtt311() {
    oversized_result("3.1.1", Some("64KiB"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_dead_lettered_and_other_routes_flow_mqtt5() {
    oversized_result("5", Some("64KiB"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_brokers_announced_limit_is_dead_lettered_mqtt5() {
    oversized_result("5", None, Some(100_000)).await;
}

/// 20 messages against `max_pending: 5` and a slow gateway: the bridge holds 5
/// and one more waits for room when `act` runs (a reconnecting reload or a
/// stop and start). Every message must still be invoked and republished.
fn at_max_pending_config(broker: &Mosquitto, gw: &TestGateway) -> BridgeConfig {
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: mp, topic: "mp/in", function: f, ordering: none, republish: {topic: "mp/out"}}"#,
    );
    cfg.max_pending = 5;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_reload_at_max_pending_loses_nothing() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(500));
    let mut cfg = at_max_pending_config(&broker, &gw);
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["mp/out", "fxbridge/dead-letter/#"]).await;
    let mut bridge = common::bridge::start_from_file(file.path()).await;
    let msgs = numbered("mp/in", "m", 0..20);
    publish_all(broker.port(), &msgs).await;
    wait_until(LONG, "reading paused at max_pending", || {
        let page = bridge.metrics.render();
        metric(&page, "backpressure_total").unwrap_or(0) >= 1
    })
    .await;
    // A changed gateway timeout reconnects everything.
    cfg.gateway_timeout = "9s".into();
    file.write(&cfg.to_yaml());
    let summary = fxbridge::reload::reload(&mut bridge, file.path())
        .await
        .expect("reload");
    assert!(summary.contains("reconnected"), "{summary}");
    let complete = common::wait::try_wait_until(LONG, || results.distinct() >= 20).await;
    let got: HashSet<Vec<u8>> = results
        .on("mp/out")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let lost: Vec<_> = payloads(&msgs).difference(&got).cloned().collect();
    let page = bridge.metrics.render();
    assert!(
        complete && lost.is_empty(),
        "lost {} message(s): {:?}; unrouted {:?}",
        lost.len(),
        lost.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>(),
        metric(&page, "unrouted_total")
    );
    assert_eq!(metric(&page, "unrouted_total"), Some(0));
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_max_pending_then_restart_loses_nothing() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(500));
    let admin = free_port();
    let mut cfg = at_max_pending_config(&broker, &gw);
    cfg.admin_port = Some(admin);
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["mp/out", "fxbridge/dead-letter/#"]).await;
    let mut bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    let msgs = numbered("mp/in", "m", 0..20);
    publish_all(broker.port(), &msgs).await;
    common::wait::wait_until_async(LONG, "reading paused at max_pending", || async {
        let page = common::bridge::http_get(admin, "/metrics").await;
        page.and_then(|(_, body)| metric(&body, "backpressure_total"))
            .unwrap_or(0)
            >= 1
    })
    .await;
    bridge.terminate();
    let status = bridge.wait_exit(LONG).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", bridge.log());
    let first_log = bridge.log();
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    let complete = common::wait::try_wait_until(LONG, || {
        let got: HashSet<Vec<u8>> = results
            .on("mp/out")
            .into_iter()
            .map(|m| m.payload)
            .collect();
        payloads(&msgs).is_subset(&got)
    })
    .await;
    let got: HashSet<Vec<u8>> = results
        .on("mp/out")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let lost: Vec<String> = payloads(&msgs)
        .difference(&got)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        complete,
        "lost {lost:?}\nfirst run:\n{first_log}\nsecond run:\n{}",
        bridge.log()
    );
    assert!(results.on("fxbridge/dead-letter/mp").is_empty());
}

/// One route whose every call hangs, next to a healthy one: the stuck route
/// holds more messages than mosquitto sends a client unacknowledged (20), and
/// the healthy route's 100 messages must all be processed meanwhile.
async fn a_stuck_route_does_not_stop_another(protocol: &str) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: stuck, topic: "stuck/+", function: f, republish: {topic: "stuck-out/{1}"}}"#)
        .route(r#"{name: healthy, topic: "healthy/+", function: f, republish: {topic: "healthy-out/{1}"}}"#);
    cfg.protocol = protocol.into();
    let results = Collector::start(broker.port(), &["healthy-out/+", "stuck-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    // 30 messages on 30 topics, each held by the gateway until released.
    let stuck: Vec<_> = (0..30)
        .map(|i| (format!("stuck/{i}"), format!("x-{i}").into_bytes()))
        .collect();
    for (_, p) in &stuck {
        gw.hold(p);
    }
    publish_all(broker.port(), &stuck).await;
    wait_until(LONG, "20 stuck calls", || gw.in_flight() >= 20).await;
    let healthy: Vec<_> = (0..100)
        .map(|i| (format!("healthy/{}", i % 10), format!("h-{i}").into_bytes()))
        .collect();
    publish_all(broker.port(), &healthy).await;
    let flowed = common::wait::try_wait_until(LONG, || {
        results
            .messages()
            .iter()
            .filter(|m| m.topic.starts_with("healthy-out/"))
            .map(|m| m.payload.clone())
            .collect::<HashSet<_>>()
            .len()
            == 100
    })
    .await;
    let done = results
        .messages()
        .iter()
        .filter(|m| m.topic.starts_with("healthy-out/"))
        .count();
    assert!(
        flowed,
        "the healthy route finished {done} of 100 messages while the other route was stuck"
    );
    assert!(results
        .messages()
        .iter()
        .all(|m| !m.topic.starts_with("stuck-out/")));
    gw.release();
    wait_until(LONG, "the stuck route's 30 results", || {
        results
            .messages()
            .iter()
            .filter(|m| m.topic.starts_with("stuck-out/"))
            .count()
            >= 30
    })
    .await;
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_route_does_not_stop_another_mqtt311() {
    a_stuck_route_does_not_stop_another("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_route_does_not_stop_another_mqtt5() {
    a_stuck_route_does_not_stop_another("5").await;
}

/// Four routes in one session, 300 msg/s against a 40 ms gateway with
/// `max_pending: 8`, so the bridge runs at its limit and its acknowledgements
/// queue up. None may be dropped: once the stream is done every PUBLISH the
/// broker sent was acknowledged on the wire, a route removed meanwhile is
/// unsubscribed, and a restart afterwards gets nothing redelivered (no
/// function runs twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_and_unsubscribes_are_never_dropped_under_load() {
    use common::proxy::{MqttProxy, Seen};
    let broker = Mosquitto::start();
    let proxy = MqttProxy::start(broker.port()).await;
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(40));
    let route = |r: &str| {
        format!(
            r#"{{name: {r}, topic: "{r}/+", function: f, session: shared, republish: {{topic: "out/{r}/{{1}}"}}}}"#
        )
    };
    let mut cfg = BridgeConfig::new(proxy.port(), &gw.url());
    for r in ["a", "b", "c", "d"] {
        cfg = cfg.route(&route(r));
    }
    cfg.max_pending = 8;
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["out/#"]).await;
    let mut bridge = common::bridge::start_from_file(file.path()).await;

    let msgs: Vec<_> = (0..1500)
        .map(|i| {
            let r = ["a", "b", "c"][i % 3];
            (format!("{r}/{}", i % 5), format!("m-{i}").into_bytes())
        })
        .collect();
    let load = {
        let msgs = msgs.clone();
        let port = broker.port();
        tokio::spawn(async move { common::mqtt::publish_at_rate(port, &msgs, 300).await })
    };
    // Mid-stream, a reload removes route d: its UNSUBSCRIBE must get through.
    wait_until(LONG, "half the stream processed", || {
        results.distinct() >= 600
    })
    .await;
    let without_d = ["a", "b", "c"].iter().fold(
        BridgeConfig {
            routes: Vec::new(),
            ..cfg.clone()
        },
        |c, r| c.route(&route(r)),
    );
    file.write(&without_d.to_yaml());
    fxbridge::reload::reload(&mut bridge, file.path())
        .await
        .expect("reload");
    load.await.expect("load");
    wait_until(LONG, "every result", || results.distinct() >= msgs.len()).await;
    let session = format!("{}.shared", cfg.client_id);
    wait_until(LONG, "UNSUBSCRIBE d/+ at the broker", || {
        broker
            .log()
            .lines()
            .any(|l| l.ends_with(&format!("{session} d/+")))
    })
    .await;
    // Every PUBLISH to the session's connection is acknowledged on the wire.
    let conn = proxy.connections_of(&session);
    assert_eq!(conn.len(), 1, "one connection of the session");
    let counts = || {
        let seen = proxy.seen();
        let publishes = seen
            .iter()
            .filter(|s| matches!(s, Seen::Publish { conn: c, .. } if *c == conn[0]))
            .count();
        let acks = seen
            .iter()
            .filter(|s| matches!(s, Seen::PubAck { conn: c, .. } if *c == conn[0]))
            .count();
        (publishes, acks)
    };
    let all_acked = common::wait::try_wait_until(LONG, || {
        let (p, a) = counts();
        p == a
    })
    .await;
    let page = bridge.metrics.render();
    let (publishes, acks) = counts();
    eprintln!(
        "1500 messages at 300/s over one session, max_pending 8: {publishes} PUBLISH, {acks} PUBACK on the wire; \
         control_waits_total {:?}, backpressure_total {:?}",
        metric(&page, "control_waits_total"),
        metric(&page, "backpressure_total")
    );
    assert!(all_acked, "{publishes} PUBLISH but {acks} PUBACK");
    bridge.stop().await.unwrap();

    // A restart gets nothing redelivered: no function runs twice.
    let calls = gw.calls();
    let bridge = start_in_process(&without_d).await;
    publish_all(broker.port(), &[("a/fence".into(), b"fence".to_vec())]).await;
    results.wait_for("out/a/fence", b"fence", LONG).await;
    assert_eq!(
        gw.calls(),
        calls + 1,
        "only the fence was invoked after the restart"
    );
    assert_eq!(
        gw.calls(),
        gw.answered_inputs().len(),
        "no duplicate invocations"
    );
    // Route d's filter is gone from the session.
    publish_all(broker.port(), &[("d/x".into(), b"for-d".to_vec())]).await;
    publish_all(broker.port(), &[("a/fence".into(), b"fence-2".to_vec())]).await;
    results.wait_for("out/a/fence", b"fence-2", LONG).await;
    assert_eq!(gw.calls_with(b"for-d"), 0);
    bridge.stop().await.unwrap();
}

/// Route `r` of two (`a`, `b`): filter `<r>/+`, results on `out/<r>`, each in
/// its own session, or both in session `s` when `shared`.
fn route_of_two(r: &str, shared: bool) -> String {
    let session = if shared { ", session: s" } else { "" };
    format!(
        r#"{{name: {r}, topic: "{r}/+", function: f, republish: {{topic: "out/{r}"}}{session}}}"#
    )
}

/// Route `b` holds 20 messages (its calls hang) and the broker queues 10 more
/// when a reload removes it. The 20 finish on the old version once released;
/// the 10 that arrive afterwards no route takes: each is dead-lettered as
/// unrouted and counted, none acknowledged silently. `shared` puts both
/// routes in one session (the removed route's filter is unsubscribed); without
/// it `b` has its own session, which is retired.
async fn a_removed_routes_backlog_is_dead_lettered(shared: bool) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let route = |r: &str| route_of_two(r, shared);
    let cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(&route("a"))
        .route(&route("b"));
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["out/+", "fxbridge/dead-letter/#"]).await;
    let mut bridge = common::bridge::start_from_file(file.path()).await;
    // 30 messages on 30 topics, every call held: mosquitto sends 20, queues 10.
    let msgs: Vec<_> = (0..30)
        .map(|i| (format!("b/{i}"), format!("b-{i}").into_bytes()))
        .collect();
    for (_, p) in &msgs {
        gw.hold(p);
    }
    publish_all(broker.port(), &msgs).await;
    wait_until(LONG, "20 held calls", || gw.in_flight() == 20).await;

    let only_a = BridgeConfig {
        routes: Vec::new(),
        ..cfg.clone()
    }
    .route(&route("a"));
    file.write(&only_a.to_yaml());
    let summary = fxbridge::reload::reload(&mut bridge, file.path())
        .await
        .expect("reload");
    assert!(summary.contains("removed [\"b\"]"), "{summary}");
    gw.release();
    let unrouted = |r: &common::mqtt::Received| r.topic == "fxbridge/dead-letter/unrouted";
    wait_until(LONG, "30 messages processed or dead-lettered", || {
        let done: HashSet<Vec<u8>> = results
            .messages()
            .iter()
            .filter_map(|m| {
                if m.topic == "out/b" {
                    Some(m.payload.clone())
                } else if unrouted(m) {
                    let env: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                    let b64 = env["payload_base64"].as_str()?;
                    base64::engine::general_purpose::STANDARD.decode(b64).ok()
                } else {
                    None
                }
            })
            .collect();
        done == payloads(&msgs)
    })
    .await;
    let dead: Vec<_> = results.messages().into_iter().filter(unrouted).collect();
    let processed = results.on("out/b").len();
    eprintln!(
        "route removed with 30 messages outstanding ({}): {processed} processed by the old version, {} dead-lettered as unrouted",
        if shared { "shared session" } else { "own session" },
        dead.len()
    );
    assert_eq!(
        processed, 20,
        "the 20 in progress finish on the old version"
    );
    assert_eq!(dead.len(), 10);
    for d in &dead {
        let env: serde_json::Value = serde_json::from_slice(&d.payload).expect("JSON");
        assert_eq!(env["error_kind"], "unrouted");
        assert!(env["route"].is_null());
    }
    // The counter follows the broker's PUBACK of each dead letter.
    wait_until(LONG, "10 unrouted dead letters counted", || {
        metric(&bridge.metrics.render(), "unrouted_dead_letters_total") == Some(10)
    })
    .await;
    assert_eq!(metric(&bridge.metrics.render(), "unrouted_total"), Some(10));
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_routes_backlog_is_dead_lettered_from_its_own_session() {
    a_removed_routes_backlog_is_dead_lettered(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_routes_backlog_is_dead_lettered_from_a_shared_session() {
    a_removed_routes_backlog_is_dead_lettered(true).await;
}

/// A route removed while the bridge was down: the next start unsubscribes its
/// filter (its own session is retired, or the shared session drops the
/// filter), dead-letters what the broker kept for it, and afterwards nothing
/// on its topics reaches the bridge.
async fn removed_while_down(shared: bool) {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let route = |r: &str| route_of_two(r, shared);
    let cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(&route("a"))
        .route(&route("b"));
    let results = Collector::start(broker.port(), &["out/+", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    bridge.stop().await.unwrap();
    // Kept by the broker for the bridge's session(s) while it is down.
    publish_all(broker.port(), &numbered("b/x", "while-down", 0..5)).await;

    let only_a = BridgeConfig {
        routes: Vec::new(),
        ..cfg.clone()
    }
    .route(&route("a"));
    let bridge = start_in_process(&only_a).await;
    wait_until(LONG, "5 unrouted dead letters", || {
        results.on("fxbridge/dead-letter/unrouted").len() == 5
    })
    .await;
    let client_id = if shared {
        format!("{}.s", cfg.client_id)
    } else {
        format!("{}.b", cfg.client_id)
    };
    wait_until(LONG, "UNSUBSCRIBE b/+ at the broker", || {
        broker
            .log()
            .lines()
            .any(|l| l.ends_with(&format!("{client_id} b/+")))
    })
    .await;
    if !shared {
        // The retired session ends once quiet, and is forgotten.
        let record = cfg
            .state_dir
            .join(format!("sessions-{}.json", cfg.client_id));
        wait_until(LONG, "the retired session forgotten", || {
            std::fs::read_to_string(&record)
                .map(|r| !r.contains(&client_id))
                .unwrap_or(false)
        })
        .await;
    }
    // Nothing on b/+ reaches the bridge any more.
    let received = bridge.metrics.totals().0;
    publish_all(broker.port(), &numbered("b/x", "after", 0..3)).await;
    publish_all(broker.port(), &[("a/1".into(), b"fence".to_vec())]).await;
    results.wait_for("out/a", b"fence", LONG).await;
    assert_eq!(
        bridge.metrics.totals().0,
        received + 1,
        "only the fence arrived"
    );
    assert_eq!(results.on("fxbridge/dead-letter/unrouted").len(), 5);
    assert_eq!(gw.calls(), 1, "nothing of b was invoked");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_removed_while_down_is_unsubscribed_at_start() {
    removed_while_down(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_removed_while_down_is_unsubscribed_at_start_shared_session() {
    removed_while_down(true).await;
}
