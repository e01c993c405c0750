//! The backpressure soak (issue #9): the real binary at its limits while the
//! world changes under it. Four routes, `max_pending: 5` per session, a
//! gateway that takes 20 ms per call, a steady stream of QoS 1 messages, and
//! during the stream: a reload that reconnects (gateway timeout changed), a
//! reload that removes a route, SIGTERM and a restart of the bridge, and a
//! restart of the broker (with persistence). Nothing may be lost: every
//! message of a kept route is republished, every message of the removed route
//! is republished or dead-lettered as unrouted. Duplicates are allowed
//! (at least once) and printed.
//!
//! `FXBRIDGE_SOAK_MESSAGES` (default 2,000, the CI size) and
//! `FXBRIDGE_SOAK_RATE` (messages per second, default 250) scale it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::bridge::{http_get, metric};
use common::{
    free_port, BridgeConfig, BridgeProcess, Collector, ConfigFile, Mosquitto, TestGateway,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn route(r: &str) -> String {
    format!(r#"{{name: {r}, topic: "{r}/+", function: f, republish: {{topic: "out/{r}/{{1}}"}}}}"#)
}

/// A publisher with a persistent session that rides out a broker restart:
/// rumqttc sends again what the broker had not acknowledged.
struct Stream {
    sent: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    poller: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(port: u16, msgs: Vec<(String, Vec<u8>)>, rate: u32) -> Stream {
        let mut opts = MqttOptions::new(common::wait::unique("soak-pub"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let acked = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&acked);
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let sent = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            let gap = Duration::from_secs(1) / rate.max(1);
            let mut next = tokio::time::Instant::now();
            for (topic, payload) in msgs {
                next += gap;
                tokio::time::sleep_until(next).await;
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("queue publish");
                s.fetch_add(1, Ordering::SeqCst);
            }
            let _keep = client;
            std::future::pending::<()>().await;
        });
        Stream {
            sent,
            acked,
            task,
            poller,
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
        self.poller.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_at_the_limits_through_reloads_restarts_and_a_broker_restart() {
    let n = env_or("FXBRIDGE_SOAK_MESSAGES", 2000);
    let rate = u32::try_from(env_or("FXBRIDGE_SOAK_RATE", 250)).unwrap_or(250);
    let long = Duration::from_secs(60);
    let started = Instant::now();

    let mut broker = Mosquitto::start_persistent();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(20));
    let admin = free_port();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url());
    for r in ["a", "b", "c", "d"] {
        cfg = cfg.route(&route(r));
    }
    cfg.max_pending = 5;
    cfg.admin_port = Some(admin);
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start_persistent(
        broker.port(),
        &common::wait::unique("soak-results"),
        &["out/#", "fxbridge/dead-letter/#"],
    )
    .await;
    let mut bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, long).await;

    // Messages of d come only in the first 30%: d is removed at 40%, while
    // some may still wait at the broker.
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let r = if i * 10 < n * 3 {
                ["a", "b", "c", "d"][i % 4]
            } else {
                ["a", "b", "c"][i % 3]
            };
            (format!("{r}/{}", i % 5), format!("m-{i}").into_bytes())
        })
        .collect();
    let stream = Stream::start(broker.port(), msgs.clone(), rate);
    let at = |fraction: f64| (n as f64 * fraction) as usize;
    let reached = |k: usize| {
        let stream = &stream;
        async move {
            common::wait_until(long, &format!("{k} messages sent"), || stream.sent() >= k).await;
        }
    };
    let reload_count = |want: u64| async move {
        common::wait::wait_until_async(long, "the reload applied", || async {
            http_get(admin, "/metrics")
                .await
                .and_then(|(_, page)| metric(&page, "reloads_total"))
                == Some(want)
        })
        .await;
    };

    // 20%: a reload that reconnects every connection.
    reached(at(0.2)).await;
    cfg.gateway_timeout = "9s".into();
    file.write(&cfg.to_yaml());
    reload_count(1).await;
    let mut events = vec![format!(
        "{:?}: settings reload (reconnect)",
        started.elapsed()
    )];

    // 40%: route d removed.
    reached(at(0.4)).await;
    let without_d = BridgeConfig {
        routes: Vec::new(),
        ..cfg.clone()
    }
    .route(&route("a"))
    .route(&route("b"))
    .route(&route("c"));
    file.write(&without_d.to_yaml());
    reload_count(2).await;
    events.push(format!("{:?}: route d removed", started.elapsed()));

    // 60%: SIGTERM, then a new process.
    reached(at(0.6)).await;
    bridge.terminate();
    let status = bridge.wait_exit(long).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", bridge.log());
    bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, long).await;
    events.push(format!("{:?}: SIGTERM and restart", started.elapsed()));

    // 80%: the broker restarts (persistence on: sessions and queues survive).
    reached(at(0.8)).await;
    broker.restart();
    events.push(format!("{:?}: broker restart", started.elapsed()));

    reached(n).await;
    common::wait_until(long, "every publish acknowledged by the broker", || {
        stream.acked.load(Ordering::SeqCst) >= n
    })
    .await;

    // Every message accounted for: a result, or (d only) an unrouted dead letter.
    let accounted = || -> HashSet<Vec<u8>> {
        results
            .messages()
            .iter()
            .filter_map(|m| {
                if m.topic.starts_with("out/") {
                    Some(m.payload.clone())
                } else if m.topic == "fxbridge/dead-letter/unrouted" {
                    let env: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                    base64::engine::general_purpose::STANDARD
                        .decode(env["payload_base64"].as_str()?)
                        .ok()
                } else {
                    None
                }
            })
            .collect()
    };
    let want: HashSet<Vec<u8>> = msgs.iter().map(|(_, p)| p.clone()).collect();
    let complete =
        common::wait::try_wait_until(Duration::from_secs(90), || accounted().is_superset(&want))
            .await;
    let got = accounted();
    let lost: Vec<String> = want
        .difference(&got)
        .take(20)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();

    let mut per_payload: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in results
        .messages()
        .iter()
        .filter(|m| m.topic.starts_with("out/"))
    {
        *per_payload.entry(m.payload.clone()).or_default() += 1;
    }
    let results_total: usize = per_payload.values().sum();
    let unrouted = results.on("fxbridge/dead-letter/unrouted").len();
    let other_dead = results
        .messages()
        .iter()
        .filter(|m| {
            m.topic.starts_with("fxbridge/dead-letter/")
                && m.topic != "fxbridge/dead-letter/unrouted"
        })
        .count();
    let invocations = gw.calls();
    let distinct_invoked = gw.answered_inputs().len();
    println!(
        "soak: {n} messages at {rate}/s, 4 routes, max_pending 5, gateway 20 ms, {:?}\n  events: {}\n  \
         lost {}, results {results_total} for {} distinct (duplicate results {}), unrouted dead letters {unrouted}, \
         other dead letters {other_dead}, invocations {invocations} for {distinct_invoked} distinct inputs \
         (duplicate invocations {})",
        started.elapsed(),
        events.join("; "),
        want.difference(&got).count(),
        per_payload.len(),
        results_total - per_payload.len(),
        invocations - distinct_invoked,
    );
    assert!(
        complete,
        "lost {} messages, e.g. {lost:?}\n{}",
        want.difference(&got).count(),
        bridge.log()
    );
    assert_eq!(other_dead, 0, "no message failed");
}
