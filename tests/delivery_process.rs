//! Delivery tests (issue #2) that need the real `fxbridge` binary, because they
//! kill or signal the process: SIGKILL mid-stream and restart (at-least-once),
//! SIGTERM drain, and the `check` command's exit codes.
//!
//! Every wait is a bounded poll for a condition; nothing sleeps and hopes.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::bridge::{http_get, metric};
use common::mqtt::numbered;
use common::{
    free_port, publish_all, wait_until, BridgeConfig, BridgeProcess, Collector, ConfigFile,
    Mosquitto, TestGateway,
};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_no_qos1_message() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(5));
    let admin = free_port();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: k, topic: "kill/+/in", function: f, ordering: none, max_in_flight: 16, republish: {topic: "kill/{1}/out"}}"#,
    );
    cfg.admin_port = Some(admin);
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["kill/+/out"]).await;

    let mut bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    let first: Vec<_> = numbered("kill/a/in", "k", 0..200);
    publish_all(broker.port(), &first).await;
    results.wait_for_distinct(40, LONG).await;
    bridge.kill();
    let at_kill = results.distinct();
    // Published while the bridge is dead: the broker keeps them in its session.
    let second: Vec<_> = numbered("kill/b/in", "k", 200..400);
    publish_all(broker.port(), &second).await;

    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    let sent: HashSet<Vec<u8>> = first
        .iter()
        .chain(&second)
        .map(|(_, p)| p.clone())
        .collect();
    wait_until(
        Duration::from_secs(60),
        "every message republished after the restart",
        || {
            let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
            sent.is_subset(&got)
        },
    )
    .await;
    let answered = gw.answered_inputs();
    let missing: Vec<_> = sent.difference(&answered).collect();
    assert!(missing.is_empty(), "never invoked: {missing:?}");
    println!(
        "SIGKILL test: sent {}, results before the kill {}, invocations {}, distinct invoked {}, \
         duplicate invocations {}, results {}, duplicate results {}",
        sent.len(),
        at_kill,
        gw.calls(),
        answered.len(),
        gw.calls() - answered.len(),
        results.count(),
        results.duplicates()
    );
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_messages_and_acknowledges_them() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let admin = free_port();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(
        r#"{name: t, topic: "term/in", function: f, ordering: none, max_in_flight: 16, republish: {topic: "term/out"}}"#,
    );
    cfg.admin_port = Some(admin);
    cfg.drain_timeout = "8s".into();
    let file = ConfigFile::with(&cfg.to_yaml());
    let results = Collector::start(broker.port(), &["term/out"]).await;

    let mut bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    gw.delay_all(Duration::from_millis(1500));
    let n = 5;
    let msgs = numbered("term/in", "t", 0..n);
    publish_all(broker.port(), &msgs).await;
    wait_until(LONG, "every message in flight at the gateway", || {
        gw.in_flight() == n
    })
    .await;
    assert!(results.messages().is_empty());

    let signalled = Instant::now();
    bridge.terminate();
    let status = bridge
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", bridge.log()));
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status}:\n{}", bridge.log());
    assert!(
        took < Duration::from_secs(8),
        "the drain took {took:?}, longer than drain_timeout"
    );
    assert!(
        took >= Duration::from_millis(500),
        "exited in {took:?}: did it wait for the calls?"
    );
    let log = bridge.log();
    assert!(log.contains("fxbridge stopped"), "{log}");
    assert!(!log.contains("drain deadline passed"), "{log}");
    // The results were confirmed before the source acks, which precede the exit.
    let got: HashSet<Vec<u8>> = results.messages().into_iter().map(|m| m.payload).collect();
    for (_, p) in &msgs {
        assert!(
            got.contains(p),
            "{:?} not republished before exit",
            String::from_utf8_lossy(p)
        );
    }

    // Next start: nothing comes back (all were acknowledged). A marker published
    // now is delivered after any redelivery would have been.
    gw.delay_all(Duration::ZERO);
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    publish_all(broker.port(), &numbered("term/in", "marker", 0..1)).await;
    results.wait_for("term/out", b"marker-0", LONG).await;
    for (_, p) in &msgs {
        assert_eq!(
            gw.calls_with(p),
            1,
            "{:?} was redelivered",
            String::from_utf8_lossy(p)
        );
    }
    let (_, page) = http_get(admin, "/metrics").await.expect("metrics");
    assert_eq!(metric(&page, "received_total"), Some(1), "{page}");
    drop(bridge);
}

#[test]
fn check_accepts_the_example_config_and_rejects_a_missing_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ok = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .current_dir(root)
        .args(["check", "-c", "bridge.yaml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("bridge.yaml: OK (2 routes)"), "{stdout}");

    let missing = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .current_dir(root)
        .args(["check", "-c", "tests/config/no-such-file.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("cannot read the file"));
}
