//! The broker matrix (issue 14): the same delivery checks against brokers
//! other than mosquitto, through the real `fxbridge` binary and a real gRPC
//! gateway ([`TestGateway`]).
//!
//! | broker | routing + republish | SIGKILL of the bridge | broker restart |
//! | --- | --- | --- | --- |
//! | NATS 2.9 MQTT gateway (private nats-server, JetStream in a temp dir) | yes | yes | restart of nats-server on its store |
//! | RabbitMQ 3.10 MQTT plugin (the node running here, shared) | yes | yes | a forced close of the bridge's connections only (the node is shared) |
//! | embedded broker (rumqttd inside the bridge) | yes | no: it dies with the process and keeps nothing | no |
//!
//! Every broker also gets a `*_capabilities` test that measures, with raw
//! MQTT packets, what it supports (MQTT 5, QoS 2, shared subscriptions,
//! retained messages, persistent sessions) and pins it: the README's "Brokers" section quotes them.
//!
//! Every wait is a bounded poll for a condition. On the shared RabbitMQ node
//! every topic starts with a per-process prefix and every client id is
//! unique; the sessions a test created are dropped at its end.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::bridge::{http_get, metric};
use common::nats::Nats;
use common::wait::{try_wait_until, unique, wait_until, wait_until_async};
use common::{
    free_port, publish_all, rabbitmq, BridgeConfig, BridgeProcess, Collector, ConfigFile,
    TestGateway,
};

const LONG: Duration = Duration::from_secs(30);

/// The route every test uses: `<pre>/in/+` -> `f` -> `<pre>/out/{1}`.
fn route(pre: &str) -> String {
    format!(
        r#"{{name: r, topic: "{pre}/in/+", function: f, ordering: none, max_in_flight: 16, republish: {{topic: "{pre}/out/{{1}}"}}}}"#
    )
}

/// A bridge for the broker on `port` with the one route; `extra` is YAML put
/// before `routes:` (the embedded broker's section).
struct Setup {
    gw: TestGateway,
    cfg: BridgeConfig,
    file: ConfigFile,
    admin: u16,
    pre: String,
}

impl Setup {
    async fn new(port: u16, extra: &str) -> Setup {
        let gw = TestGateway::start().await;
        gw.reply_prefix("f", "re:");
        let pre = unique("brk");
        let admin = free_port();
        let mut cfg = BridgeConfig::new(port, &gw.url()).route(&route(&pre));
        cfg.admin_port = Some(admin);
        let yaml = cfg
            .to_yaml()
            .replacen("routes:\n", &format!("{extra}routes:\n"), 1);
        let file = ConfigFile::with(&yaml);
        Setup {
            gw,
            cfg,
            file,
            admin,
            pre,
        }
    }

    async fn spawn(&self) -> BridgeProcess {
        let bridge = BridgeProcess::spawn(self.file.path());
        bridge.wait_ready(self.admin, LONG).await;
        bridge
    }

    fn out_filter(&self) -> String {
        format!("{}/out/+", self.pre)
    }

    /// Messages `i` in `range`: payload `<tag>-<i>` on `<pre>/in/k<i % 5>`.
    fn messages(&self, tag: &str, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
        range
            .map(|i| {
                (
                    format!("{}/in/k{}", self.pre, i % 5),
                    format!("{tag}-{i}").into_bytes(),
                )
            })
            .collect()
    }

    /// The client ids the bridge uses (one session `r`, and the publisher).
    fn client_ids(&self) -> Vec<String> {
        vec![
            format!("{}.r", self.cfg.client_id),
            format!("{}-pub", self.cfg.client_id),
        ]
    }
}

/// Waits until every message of `sent` came back as a result (its payload
/// behind the gateway's `re:`), then checks each was invoked. Panics with the
/// bridge's log when something is missing.
async fn expect_all(
    s: &Setup,
    results: &Collector,
    sent: &[(String, Vec<u8>)],
    bridge: &BridgeProcess,
    timeout: Duration,
) {
    let want: HashSet<Vec<u8>> = sent
        .iter()
        .map(|(_, p)| [b"re:".as_slice(), p].concat())
        .collect();
    let got =
        || -> HashSet<Vec<u8>> { results.messages().into_iter().map(|m| m.payload).collect() };
    let complete = try_wait_until(timeout, || want.is_subset(&got())).await;
    let answered = s.gw.answered_inputs();
    if !complete {
        let got = got();
        let missing: Vec<String> = sent
            .iter()
            .filter(|(_, p)| !got.contains(&[b"re:".as_slice(), p].concat()))
            .map(|(t, p)| {
                format!(
                    "{t} {} (invoked {} times)",
                    String::from_utf8_lossy(p),
                    s.gw.calls_with(p)
                )
            })
            .collect();
        panic!(
            "{} of {} messages never republished within {timeout:?}: {missing:?}; \
             answered by the gateway: {} distinct; bridge log:\n{}",
            missing.len(),
            want.len(),
            answered.len(),
            bridge.log()
        );
    }
    let never: Vec<_> = sent
        .iter()
        .filter(|(_, p)| !answered.contains(p))
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(never.is_empty(), "never invoked: {never:?}");
}

/// (a) N QoS 1 messages on `<pre>/in/<k>` each come back once on
/// `<pre>/out/<k>` with the gateway's reply.
async fn routing_and_republish(name: &str, port: u16, extra: &str) -> Setup {
    let s = Setup::new(port, extra).await;
    let bridge = s.spawn().await;
    let results = Collector::start(port, &[&s.out_filter()]).await;
    let n = 100;
    let msgs = s.messages("a", 0..n);
    publish_all(port, &msgs).await;
    expect_all(&s, &results, &msgs, &bridge, LONG).await;
    // Each result on the topic its source's wildcard rendered into.
    let got: HashSet<(String, Vec<u8>)> = results
        .messages()
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    for i in 0..n {
        let want = (
            format!("{}/out/k{}", s.pre, i % 5),
            format!("re:a-{i}").into_bytes(),
        );
        assert!(got.contains(&want), "missing {want:?}");
    }
    eprintln!(
        "{name} routing: sent {n}, invoked {}, results {} (distinct {})",
        s.gw.calls(),
        results.count(),
        results.distinct()
    );
    drop(bridge);
    s
}

/// (b) SIGKILL of the bridge mid-stream, messages published while it is
/// dead, a restart: every message invoked at least once.
async fn sigkill_of_the_bridge(name: &str, port: u16) -> Setup {
    let s = Setup::new(port, "").await;
    s.gw.delay_all(Duration::from_millis(5));
    let mut bridge = s.spawn().await;
    let results = Collector::start(port, &[&s.out_filter()]).await;
    let first = s.messages("k", 0..200);
    publish_all(port, &first).await;
    results.wait_for_distinct(40, LONG).await;
    bridge.kill();
    let at_kill = results.distinct();
    // Published while the bridge is dead: the broker keeps them in its session.
    let second = s.messages("k", 200..400);
    publish_all(port, &second).await;

    let restarted = Instant::now();
    let bridge = s.spawn().await;
    let sent: Vec<_> = first.iter().chain(&second).cloned().collect();
    expect_all(&s, &results, &sent, &bridge, Duration::from_secs(50)).await;
    let took = restarted.elapsed();
    let distinct = s.gw.answered_inputs().len();
    eprintln!(
        "{name} SIGKILL of the bridge: sent {}, invoked distinct {distinct}, duplicates {} \
         (invocations {}, results before the kill {at_kill}, results {}, duplicate results {}, \
         complete {:.1} s after the restart)",
        sent.len(),
        s.gw.calls() - distinct,
        s.gw.calls(),
        results.count(),
        results.duplicates(),
        took.as_secs_f64()
    );
    drop(bridge);
    s
}

// ---------------------------------------------------------------- NATS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_routes_and_republishes() {
    let nats = Nats::start();
    routing_and_republish("NATS", nats.port(), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkill_of_the_bridge_loses_nothing() {
    let nats = Nats::start();
    sigkill_of_the_bridge("NATS", nats.port()).await;
}

/// (c) nats-server restarts (clean stop, same store and ports) while the
/// bridge holds messages; more are published around the restart. NATS keeps
/// the sessions in JetStream: the bridge reconnects to its session
/// (`session_present=true`) and every message is invoked.
///
/// What is asserted is the bridge's side: every source invoked. Results that
/// NATS confirmed (PUBACK) and then never delivered to the persistent
/// subscriber (within 40 s of the last invocation, past NATS's 30 s
/// ack_wait) are counted and printed, not asserted: in about one run in
/// eight, 1 to 14 results published just before a clean restart never
/// reached two independent persistent subscribers, even 150 s later (the
/// function ran once and the source was acknowledged, which the bridge does
/// only after the broker's PUBACK for the result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_invokes_every_message() {
    nats_restart(false).await;
}

/// The same with a SIGKILL of nats-server (no clean shutdown of its store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkill_of_the_broker_invokes_every_message() {
    nats_restart(true).await;
}

async fn nats_restart(kill: bool) {
    let mut nats = Nats::start();
    let port = nats.port();
    let s = Setup::new(port, "").await;
    s.gw.delay_all(Duration::from_millis(5));
    let bridge = s.spawn().await;
    // A persistent collector misses nothing while the broker is away.
    let results = Collector::start_persistent(port, &unique("collector"), &[&s.out_filter()]).await;
    let first = s.messages("b", 0..150);
    publish_all(port, &first).await;
    results.wait_for_distinct(20, LONG).await;
    let before = results.distinct();
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        if kill {
            nats.kill_and_restart()
        } else {
            nats.restart()
        }
    });
    let second = s.messages("b", 150..300);
    publish_all(port, &second).await;
    let sent: Vec<_> = first.iter().chain(&second).cloned().collect();
    let inputs: HashSet<Vec<u8>> = sent.iter().map(|(_, p)| p.clone()).collect();
    let invoked = try_wait_until(Duration::from_secs(50), || {
        inputs.is_subset(&s.gw.answered_inputs())
    })
    .await;
    let never: Vec<_> = inputs
        .difference(&s.gw.answered_inputs())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        invoked,
        "never invoked (lost): {never:?}; bridge log:\n{}",
        bridge.log()
    );
    let took = restarted.elapsed();
    // Results: NATS sends a result it had handed to the collector's
    // connection as it closed again after its ack_wait (30 s): 40 s more.
    let want: HashSet<Vec<u8>> = inputs
        .iter()
        .map(|p| [b"re:".as_slice(), p].concat())
        .collect();
    let got =
        || -> HashSet<Vec<u8>> { results.messages().into_iter().map(|m| m.payload).collect() };
    let delivered = Instant::now();
    try_wait_until(Duration::from_secs(40), || want.is_subset(&got())).await;
    let results_took = took + delivered.elapsed();
    let mut undelivered: Vec<_> = want
        .difference(&got())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    undelivered.sort();
    let log = bridge.log();
    assert!(log.contains("lost the broker"), "{log}");
    assert!(
        log.contains("session_present=true"),
        "the bridge did not find its session after the restart:\n{log}"
    );
    let distinct = s.gw.answered_inputs().len();
    eprintln!(
        "NATS {} of the broker: sent {}, invoked distinct {distinct}, duplicates {} \
         (every message invoked {:.1} s after the restart, every result delivered {:.1} s after it; \
         results before the restart {before}, results {}, duplicate results {}, \
         results never delivered {} {undelivered:?})",
        if kill {
            "SIGKILL and restart"
        } else {
            "restart"
        },
        sent.len(),
        s.gw.calls() - distinct,
        took.as_secs_f64(),
        results_took.as_secs_f64(),
        results.count(),
        results.duplicates(),
        undelivered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_capabilities() {
    // A short ack_wait bounds the session probe: a message NATS handed to a
    // connection as it closed comes back after it (30 s by default).
    let nats = Nats::start_with(r#"ack_wait: "3s""#);
    let m = probe::measure(nats.port(), &unique("cap")).await;
    eprintln!("NATS 2.9.10 MQTT gateway, measured: {m:?}");
    assert!(!m.mqtt5, "NATS accepted MQTT 5");
    assert_eq!(m.qos2_subscription_granted, Some(1));
    assert_eq!(m.qos2_publish, probe::Qos2Publish::ConnectionClosed);
    assert!(
        nats.log().contains("publish QoS=2 not supported"),
        "{}",
        nats.log()
    );
    assert_eq!(m.shared_subscription_granted, Some(1));
    assert!(!m.shared_subscription_delivers);
    assert!(m.retained);
    assert!(m.session_present_after_reconnect);
}

// ---------------------------------------------------------------- RabbitMQ

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_routes_and_republishes() {
    let port = rabbitmq::mqtt_port();
    let s = routing_and_republish("RabbitMQ", port, "").await;
    rabbitmq::forget_sessions(port, &s.client_ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sigkill_of_the_bridge_loses_nothing() {
    let port = rabbitmq::mqtt_port();
    let s = sigkill_of_the_bridge("RabbitMQ", port).await;
    rabbitmq::forget_sessions(port, &s.client_ids()).await;
}

/// (c) on RabbitMQ: the node is shared and is not restarted; instead the
/// broker closes the bridge's connections (and only those) while the bridge
/// holds messages, and more are published while it reconnects. Its sessions
/// (durable queues) keep everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_forced_disconnect_loses_nothing() {
    let port = rabbitmq::mqtt_port();
    let s = Setup::new(port, "").await;
    s.gw.delay_all(Duration::from_millis(5));
    let bridge = s.spawn().await;
    let results = Collector::start(port, &[&s.out_filter()]).await;
    let first = s.messages("b", 0..150);
    publish_all(port, &first).await;
    results.wait_for_distinct(20, LONG).await;
    let before = results.distinct();
    let session = format!("{}.", s.cfg.client_id);
    let publisher = format!("{}-pub", s.cfg.client_id);
    let closed = tokio::task::block_in_place(|| {
        rabbitmq::close_connections(&[session.as_str(), publisher.as_str()])
    });
    assert_eq!(closed, 2, "the session and the publisher");
    let second = s.messages("b", 150..300);
    publish_all(port, &second).await;
    let sent: Vec<_> = first.iter().chain(&second).cloned().collect();
    expect_all(&s, &results, &sent, &bridge, Duration::from_secs(50)).await;
    let log = bridge.log();
    assert!(log.contains("lost the broker"), "{log}");
    assert!(
        log.contains("session_present=true"),
        "the bridge did not find its session after the disconnect:\n{log}"
    );
    let distinct = s.gw.answered_inputs().len();
    eprintln!(
        "RabbitMQ forced disconnect: sent {}, invoked distinct {distinct}, duplicates {} \
         (results before the disconnect {before}, results {}, duplicate results {})",
        sent.len(),
        s.gw.calls() - distinct,
        results.count(),
        results.duplicates()
    );
    drop(bridge);
    rabbitmq::forget_sessions(port, &s.client_ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_capabilities() {
    let port = rabbitmq::mqtt_port();
    let version = tokio::task::block_in_place(rabbitmq::version);
    let m = probe::measure(port, &unique("cap")).await;
    eprintln!("RabbitMQ {version} MQTT plugin, measured: {m:?}");
    // MQTT 5 arrived in RabbitMQ 3.13; the node here is older.
    let minor: Vec<u32> = version
        .split('.')
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    if minor.as_slice() < [3, 13].as_slice() {
        assert!(!m.mqtt5, "RabbitMQ {version} accepted MQTT 5");
    }
    assert_eq!(m.qos2_subscription_granted, Some(1));
    assert_eq!(m.qos2_publish, probe::Qos2Publish::Puback);
    assert!(!m.shared_subscription_delivers);
    assert!(m.retained);
    assert!(m.session_present_after_reconnect);
}

/// A route that republishes at QoS 2 next to one that republishes at QoS 1:
/// `n` messages each. Returns the bridge (still running), the collector and
/// the setup; the QoS 2 route is `q2` (`<pre>/in2/+` -> `<pre>/out2/{1}`).
/// `max_qos`: `mqtt.max_qos`, when given.
async fn qos2_republish(
    port: u16,
    n: usize,
    max_qos: Option<u8>,
) -> (Setup, BridgeProcess, Collector) {
    let mut s = Setup::new(port, "").await;
    let pre = s.pre.clone();
    s.cfg = s.cfg.clone().route(&format!(
        r#"{{name: q2, topic: "{pre}/in2/+", function: f, republish: {{topic: "{pre}/out2/{{1}}", qos: 2}}}}"#
    ));
    let yaml = s.cfg.to_yaml();
    let yaml = match max_qos {
        Some(q) => yaml.replacen("mqtt:\n", &format!("mqtt:\n  max_qos: {q}\n"), 1),
        None => yaml,
    };
    s.file.write(&yaml);
    let bridge = s.spawn().await;
    let results = Collector::start(port, &[&s.out_filter(), &format!("{pre}/out2/+")]).await;
    let q2: Vec<_> = (0..n)
        .map(|i| {
            (
                format!("{pre}/in2/k{}", i % 5),
                format!("q2-{i}").into_bytes(),
            )
        })
        .collect();
    publish_all(port, &q2).await;
    publish_all(port, &s.messages("q1", 0..n)).await;
    (s, bridge, results)
}

/// Waits until both routes of [`qos2_republish`] delivered all `n` results
/// each and every source is acknowledged, with the publisher never having
/// lost its connection; returns the number of sources.
async fn expect_both_routes_complete(
    s: &Setup,
    bridge: &BridgeProcess,
    results: &Collector,
    n: usize,
) -> u64 {
    results.wait_for_distinct(2 * n, LONG).await;
    let all = u64::try_from(2 * n).expect("small");
    wait_until_async(LONG, "every source acknowledged", || async {
        acked(s.admin).await == all
    })
    .await;
    assert!(
        !bridge.log().contains("publisher lost the broker"),
        "{}",
        bridge.log()
    );
    all
}

/// fxbridge's acknowledged-message count, from `/metrics`.
async fn acked(admin: u16) -> u64 {
    let (_, page) = http_get(admin, "/metrics").await.expect("metrics");
    metric(&page, "acked_total").expect("fxbridge_acked_total")
}

/// RabbitMQ answers a QoS 2 PUBLISH with PUBACK (it takes QoS 2 as QoS 1):
/// a route that republishes at QoS 2 still works, and its sources are
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_republish_at_qos2_is_taken_as_qos1() {
    let port = rabbitmq::mqtt_port();
    let n = 20;
    let (s, bridge, results) = qos2_republish(port, n, None).await;
    let all = expect_both_routes_complete(&s, &bridge, &results, n).await;
    eprintln!(
        "RabbitMQ QoS 2 republish: {n} results of the QoS 2 route, {} in all, {all} acknowledged",
        results.distinct()
    );
    drop(bridge);
    let mut ids = s.client_ids();
    ids.push(format!("{}.q2", s.cfg.client_id));
    rabbitmq::forget_sessions(port, &ids).await;
}

/// NATS 2.9 closes the connection of a client that PUBLISHes at QoS 2. A
/// route that republishes at QoS 2 therefore never gets its result out: the
/// bridge's publisher reconnects and tries again, without end (the source is
/// never acknowledged, so nothing is lost), and every reconnect also cuts the
/// publishes of the other routes, which are sent again. This pins that
/// behaviour of the default (README, "Brokers": `mqtt.max_qos: 1` on NATS);
/// the next test shows the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_closes_the_publisher_on_a_qos2_republish() {
    let nats = Nats::start();
    let n = 20;
    let (s, bridge, results) = qos2_republish(nats.port(), n, None).await;
    // The QoS 1 route still delivers everything, between the reconnects.
    expect_all(&s, &results, &s.messages("q1", 0..n), &bridge, LONG).await;
    let reconnects = || bridge.log().matches("publisher lost the broker").count();
    wait_until(LONG, "three publisher reconnects", || reconnects() >= 3).await;
    assert!(nats.log().contains("publish QoS=2 not supported"));
    let q2_results = results
        .messages()
        .iter()
        .filter(|m| m.topic.contains("/out2/"))
        .count();
    assert_eq!(q2_results, 0, "a QoS 2 result got through");
    let acked_now = acked(s.admin).await;
    assert!(
        acked_now <= u64::try_from(n).expect("small"),
        "a source of the QoS 2 route was acknowledged ({acked_now})"
    );
    let line = bridge
        .log()
        .lines()
        .find(|l| l.contains("publisher lost the broker"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!(
        "NATS QoS 2 republish: QoS 2 results 0 of {n}, QoS 1 results {n} of {n}, \
         acknowledged {acked_now}, publisher reconnects so far {}; bridge: {line}",
        reconnects()
    );
    drop(bridge);
}

/// With `mqtt.max_qos: 1` the same routes work on NATS: the QoS 2 route's
/// results go out at QoS 1, every result arrives, every source is
/// acknowledged, and the publisher keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_max_qos_1_publishes_qos2_results_at_qos1() {
    let nats = Nats::start();
    let n = 20;
    let (s, bridge, results) = qos2_republish(nats.port(), n, Some(1)).await;
    let all = expect_both_routes_complete(&s, &bridge, &results, n).await;
    assert!(!nats.log().contains("publish QoS=2 not supported"));
    eprintln!(
        "NATS with mqtt.max_qos 1: {} results of {all}, {all} acknowledged, no reconnect",
        results.distinct()
    );
    drop(bridge);
}

// ---------------------------------------------------------------- embedded

/// (a) against the embedded broker (`broker.listen`): the bridge connects to
/// the broker in its own process. (b) does not apply: rumqttd keeps its
/// sessions in memory, so a SIGKILL of the bridge is a SIGKILL of the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_routes_and_republishes() {
    let port = free_port();
    let extra = format!("broker:\n  listen: 127.0.0.1:{port}\n");
    routing_and_republish("embedded", port, &extra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_capabilities() {
    let port = free_port();
    let extra = format!("broker:\n  listen: 127.0.0.1:{port}\n");
    let s = Setup::new(port, &extra).await;
    let bridge = s.spawn().await;
    let m = probe::measure(port, &unique("cap")).await;
    eprintln!("embedded broker (rumqttd), measured: {m:?}");
    // fxbridge opens rumqttd's 3.1.1 listener only.
    assert!(!m.mqtt5, "the embedded broker accepted MQTT 5");
    assert_eq!(m.qos2_subscription_granted, Some(2));
    assert_eq!(m.qos2_publish, probe::Qos2Publish::Pubrec);
    assert!(m.shared_subscription_delivers);
    assert!(m.retained);
    assert!(m.session_present_after_reconnect);
    drop(bridge);
}

/// What a broker does with the parts of MQTT fxbridge may use, measured with
/// raw MQTT packets (so no client library smooths anything over).
mod probe {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[derive(Debug, PartialEq, Eq)]
    pub enum Qos2Publish {
        /// PUBREC: QoS 2 as MQTT defines it.
        Pubrec,
        /// PUBACK: taken as QoS 1.
        Puback,
        /// The broker closed the connection.
        ConnectionClosed,
        /// Something else (shown).
        Other(String),
    }

    #[derive(Debug)]
    pub struct Measured {
        /// A CONNECT with protocol level 5 got CONNACK with reason 0.
        pub mqtt5: bool,
        /// The QoS the SUBACK granted to a QoS 2 subscription (`None`: refused).
        pub qos2_subscription_granted: Option<u8>,
        /// The answer to a QoS 2 PUBLISH.
        pub qos2_publish: Qos2Publish,
        /// The QoS the SUBACK granted to `$share/g/<filter>` (`None`: refused).
        pub shared_subscription_granted: Option<u8>,
        /// A message on `<filter>`'s topic reached the `$share/g/<filter>` subscriber.
        pub shared_subscription_delivers: bool,
        /// A retained message reached a later subscriber with RETAIN set.
        pub retained: bool,
        /// A clean_session=false client found its session (and a message
        /// published while it was away) on reconnecting.
        pub session_present_after_reconnect: bool,
    }

    pub async fn measure(port: u16, pre: &str) -> Measured {
        let mqtt5 = match Conn::connect(port, &format!("{pre}-v5"), true, 5).await {
            Ok((mut c, ack)) => {
                let ok = ack.get(1) == Some(&0);
                c.disconnect().await;
                ok
            }
            Err(_) => false,
        };

        let (mut sub, _) = Conn::connect(port, &format!("{pre}-sub"), true, 4)
            .await
            .expect("connect");
        let qos2_subscription_granted = sub.subscribe(&format!("{pre}/q2"), 2, 1).await;
        sub.disconnect().await;

        let (mut p, _) = Conn::connect(port, &format!("{pre}-p2"), true, 4)
            .await
            .expect("connect");
        let qos2_publish = match p.publish(&format!("{pre}/q2"), b"q2", 2, false, 7).await {
            Err(_) => Qos2Publish::ConnectionClosed,
            Ok(None) => Qos2Publish::Other("no answer within 5 s".into()),
            Ok(Some((h, body))) => match h >> 4 {
                5 => {
                    // Complete the handshake: PUBREL, PUBCOMP.
                    let _ = p.send(0x62, &body[..2]).await;
                    let _ = p.read(Duration::from_secs(5)).await;
                    Qos2Publish::Pubrec
                }
                4 => Qos2Publish::Puback,
                t => Qos2Publish::Other(format!("packet type {t}")),
            },
        };
        p.disconnect().await;

        let (mut shared, _) = Conn::connect(port, &format!("{pre}-sh"), true, 4)
            .await
            .expect("connect");
        let shared_subscription_granted = shared
            .subscribe(&format!("$share/g/{pre}/sh/+"), 1, 2)
            .await;
        let (mut plain, _) = Conn::connect(port, &format!("{pre}-pl"), true, 4)
            .await
            .expect("connect");
        assert_eq!(plain.subscribe(&format!("{pre}/sh/+"), 1, 3).await, Some(1));
        let (mut p, _) = Conn::connect(port, &format!("{pre}-p1"), true, 4)
            .await
            .expect("connect");
        p.publish(&format!("{pre}/sh/x"), b"shared?", 1, false, 8)
            .await
            .expect("publish");
        let plain_got = plain
            .next_publish(Duration::from_secs(10))
            .await
            .expect("plain subscriber");
        assert!(plain_got.is_some(), "the plain subscriber got nothing");
        // The shared subscriber had as long as the plain one, and a moment more.
        let shared_subscription_delivers = matches!(
            shared.next_publish(Duration::from_millis(500)).await,
            Ok(Some(_))
        );
        shared.disconnect().await;
        plain.disconnect().await;

        let topic = format!("{pre}/ret");
        p.publish(&topic, b"kept", 1, true, 9)
            .await
            .expect("publish");
        let (mut late, _) = Conn::connect(port, &format!("{pre}-late"), true, 4)
            .await
            .expect("connect");
        late.subscribe(&topic, 1, 4).await;
        let retained = matches!(
            late.next_publish(Duration::from_secs(5)).await,
            Ok(Some(m)) if m.retain && m.payload == b"kept"
        );
        late.disconnect().await;
        // Clear it (an empty retained message), for the shared brokers' sake.
        let _ = p.publish(&topic, b"", 1, true, 10).await;

        let id = format!("{pre}-sess");
        let (mut s, _) = Conn::connect(port, &id, false, 4).await.expect("connect");
        s.subscribe(&format!("{pre}/ps"), 1, 5).await;
        s.disconnect().await;
        p.publish(&format!("{pre}/ps"), b"while away", 1, false, 11)
            .await
            .expect("publish");
        let session_present_after_reconnect = match Conn::connect(port, &id, false, 4).await {
            Ok((mut s, ack)) => {
                let present = ack.first() == Some(&1);
                // 10 s: NATS may have sent it to the old connection as it
                // closed, and sends it again after its ack_wait.
                let got = matches!(
                    s.next_publish(Duration::from_secs(10)).await,
                    Ok(Some(m)) if m.payload == b"while away"
                );
                s.disconnect().await;
                present && got
            }
            Err(_) => false,
        };
        // Drop the session.
        if let Ok((mut s, _)) = Conn::connect(port, &id, true, 4).await {
            s.disconnect().await;
        }
        p.disconnect().await;

        Measured {
            mqtt5,
            qos2_subscription_granted,
            qos2_publish,
            shared_subscription_granted,
            shared_subscription_delivers,
            retained,
            session_present_after_reconnect,
        }
    }

    pub struct Publish {
        pub retain: bool,
        pub payload: Vec<u8>,
    }

    /// One MQTT connection speaking raw packets.
    pub struct Conn {
        s: TcpStream,
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let len = u16::try_from(s.len()).expect("short string");
        [len.to_be_bytes().as_slice(), s].concat()
    }

    impl Conn {
        /// CONNECT at protocol `level` (4: 3.1.1, 5: MQTT 5); the CONNACK's
        /// body, or an error when the broker closed the connection or did
        /// not answer within 5 s.
        pub async fn connect(
            port: u16,
            id: &str,
            clean: bool,
            level: u8,
        ) -> Result<(Conn, Vec<u8>), String> {
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let mut c = Conn { s };
            let mut body = string(b"MQTT");
            body.extend([level, if clean { 2 } else { 0 }, 0, 30]);
            if level == 5 {
                body.push(0); // no properties
            }
            body.extend(string(id.as_bytes()));
            c.send(0x10, &body).await.map_err(|e| e.to_string())?;
            match c.read(Duration::from_secs(5)).await? {
                Some((h, ack)) if h >> 4 == 2 => Ok((c, ack)),
                Some((h, _)) => Err(format!("packet type {} instead of CONNACK", h >> 4)),
                None => Err("no CONNACK within 5 s".into()),
            }
        }

        pub async fn send(&mut self, header: u8, body: &[u8]) -> std::io::Result<()> {
            let mut packet = vec![header];
            let mut n = body.len();
            loop {
                let mut b = (n % 128) as u8;
                n /= 128;
                if n > 0 {
                    b |= 0x80;
                }
                packet.push(b);
                if n == 0 {
                    break;
                }
            }
            packet.extend_from_slice(body);
            self.s.write_all(&packet).await
        }

        /// The next packet; `Ok(None)` when none came within `timeout`,
        /// `Err` when the connection is closed.
        pub async fn read(&mut self, timeout: Duration) -> Result<Option<(u8, Vec<u8>)>, String> {
            let io = async {
                let header = self.s.read_u8().await?;
                let mut len = 0usize;
                let mut mult = 1usize;
                for _ in 0..4 {
                    let b = self.s.read_u8().await?;
                    len += usize::from(b & 0x7f) * mult;
                    mult *= 128;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                let mut body = vec![0; len];
                self.s.read_exact(&mut body).await?;
                Ok::<_, std::io::Error>((header, body))
            };
            match tokio::time::timeout(timeout, io).await {
                Err(_) => Ok(None),
                Ok(Ok(p)) => Ok(Some(p)),
                Ok(Err(e)) => Err(e.to_string()),
            }
        }

        /// SUBSCRIBE one filter; the granted QoS (`None`: refused or no SUBACK).
        pub async fn subscribe(&mut self, filter: &str, qos: u8, pid: u16) -> Option<u8> {
            let mut body = pid.to_be_bytes().to_vec();
            body.extend(string(filter.as_bytes()));
            body.push(qos);
            self.send(0x82, &body).await.ok()?;
            for _ in 0..10 {
                match self.read(Duration::from_secs(5)).await {
                    Ok(Some((h, b))) if h >> 4 == 9 => {
                        return b.get(2).copied().filter(|g| *g < 0x80);
                    }
                    Ok(Some(_)) => continue,
                    _ => return None,
                }
            }
            None
        }

        /// PUBLISH; the broker's answer for QoS 1 and 2 (`Ok(None)` for QoS 0).
        pub async fn publish(
            &mut self,
            topic: &str,
            payload: &[u8],
            qos: u8,
            retain: bool,
            pid: u16,
        ) -> Result<Option<(u8, Vec<u8>)>, String> {
            let mut body = string(topic.as_bytes());
            if qos > 0 {
                body.extend(pid.to_be_bytes());
            }
            body.extend_from_slice(payload);
            self.send(0x30 | (qos << 1) | u8::from(retain), &body)
                .await
                .map_err(|e| e.to_string())?;
            if qos == 0 {
                return Ok(None);
            }
            self.read(Duration::from_secs(5)).await
        }

        /// The next PUBLISH within `timeout` (acknowledged when QoS 1).
        pub async fn next_publish(&mut self, timeout: Duration) -> Result<Option<Publish>, String> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let Some((h, body)) = self.read(left).await? else {
                    return Ok(None);
                };
                if h >> 4 != 3 {
                    continue;
                }
                let qos = (h >> 1) & 3;
                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + tlen;
                if qos > 0 {
                    let pid = [body[at], body[at + 1]];
                    at += 2;
                    if qos == 1 {
                        self.send(0x40, &pid).await.map_err(|e| e.to_string())?;
                    }
                }
                return Ok(Some(Publish {
                    retain: h & 1 == 1,
                    payload: body[at..].to_vec(),
                }));
            }
        }

        /// DISCONNECT, then waits (5 s at most) until the broker closed the
        /// connection, so that it is done with it before the next step.
        pub async fn disconnect(&mut self) {
            let _ = self.send(0xe0, &[]).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Some(_)) = self
                .read(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {}
            let _ = self.s.shutdown().await;
        }
    }
}
