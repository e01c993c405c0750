//! Scale-out across replicas (issue #15), through the real binary: several
//! fxbridge processes in one MQTT shared-subscription group on mosquitto, with
//! persistent sessions and a stable client id each.
//!
//! - A replica killed with SIGKILL mid-stream and restarted with its client
//!   id: nothing is lost (its session kept its shares), the work is spread
//!   across the replicas, duplicates are counted.
//! - A replica stopped with SIGTERM and never restarted (a scale-down): it
//!   leaves the group before it stops (`mqtt.leave_shared_on_stop`), so no
//!   share is stranded in its session; the others take every message.
//!
//! Each replica invokes its own function name (`f-0`, `f-1`, ...), so the
//! gateway's record tells which replica did which message.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::mqtt::publish_at_rate;
use common::{
    free_port, wait_until, BridgeConfig, BridgeProcess, ConfigFile, Mosquitto, TestGateway,
};

const LONG: Duration = Duration::from_secs(60);

/// Messages of the crash test: `FXBRIDGE_SCALE_MESSAGES` (20,000 by default).
fn messages() -> usize {
    std::env::var("FXBRIDGE_SCALE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Replica {
    file: ConfigFile,
    admin: u16,
    process: Option<BridgeProcess>,
}

impl Replica {
    /// Replica `i` of the group `$share/g/scale/+` on `broker`.
    fn new(i: usize, broker: &Mosquitto, gw: &TestGateway) -> Replica {
        let admin = free_port();
        let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(&format!(
            r#"{{name: work, topic: "$share/g/scale/+", function: f-{i}, ordering: none}}"#
        ));
        cfg.admin_port = Some(admin);
        cfg.max_pending = 200;
        Replica {
            file: ConfigFile::with(&cfg.to_yaml()),
            admin,
            process: None,
        }
    }

    async fn start(&mut self) {
        let p = BridgeProcess::spawn(self.file.path());
        p.wait_ready(self.admin, LONG).await;
        self.process = Some(p);
    }

    fn process(&mut self) -> &mut BridgeProcess {
        self.process.as_mut().expect("replica running")
    }
}

/// `n` numbered messages over 10 topics.
fn workload(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("scale/{}", i % 10), format!("m-{i}").into_bytes()))
        .collect()
}

/// Invocations per function (replica), and how many calls in all.
fn split(gw: &TestGateway) -> (HashMap<String, usize>, usize) {
    let mut by = HashMap::new();
    let invocations = gw.invocations();
    for inv in &invocations {
        *by.entry(inv.function.clone()).or_insert(0) += 1;
    }
    (by, invocations.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_and_restarted_loses_nothing() {
    let n = messages();
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut replicas: Vec<Replica> = (0..3).map(|i| Replica::new(i, &broker, &gw)).collect();
    for r in &mut replicas {
        r.start().await;
    }
    let port = broker.port();
    let publisher = tokio::spawn(async move { publish_at_rate(port, &workload(n), 4_000).await });

    // A third of the way in, replica 1 dies; it comes back a second later
    // with its client id, and its session still holds its shares.
    wait_until(LONG, "a third invoked", || {
        gw.answered_inputs().len() >= n / 3
    })
    .await;
    replicas[1].process().kill();
    let killed_at = gw.answered_inputs().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    replicas[1].start().await;
    publisher.await.expect("publisher");

    let started = Instant::now();
    wait_until(Duration::from_secs(120), "every message invoked", || {
        gw.answered_inputs().len() >= n
    })
    .await;
    let (by, calls) = split(&gw);
    let distinct = gw.answered_inputs().len();
    println!(
        "{n} messages, replica 1 killed at {killed_at} invoked and restarted; \
         invocations per replica {by:?}; {calls} calls, {distinct} distinct, {} duplicates; \
         complete {:?} after the last publish",
        calls - distinct,
        started.elapsed()
    );
    assert_eq!(distinct, n, "every message invoked");
    for i in 0..3 {
        let share = by.get(&format!("f-{i}")).copied().unwrap_or(0);
        assert!(share >= n / 10, "replica {i} took part: {by:?}");
    }
    for r in &mut replicas {
        r.process().terminate();
    }
    for r in &mut replicas {
        r.process().wait_exit(LONG).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_scaled_down_with_sigterm_strands_nothing() {
    let n = 2_000;
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut replicas: Vec<Replica> = (0..2).map(|i| Replica::new(i, &broker, &gw)).collect();
    for r in &mut replicas {
        r.start().await;
    }
    let port = broker.port();
    let publisher = tokio::spawn(async move { publish_at_rate(port, &workload(n), 1_000).await });

    // At message 800, replica 1 is scaled down: SIGTERM, never restarted.
    wait_until(LONG, "800 invoked", || gw.answered_inputs().len() >= 800).await;
    let p = replicas[1].process();
    p.terminate();
    let status = p.wait_exit(LONG).await.expect("replica 1 exits");
    assert!(status.success(), "graceful stop: {status:?}\n{}", p.log());
    assert!(
        p.log().contains("left the shared subscription groups"),
        "it left the group before stopping:\n{}",
        p.log()
    );
    publisher.await.expect("publisher");

    wait_until(
        LONG,
        "every message invoked by the remaining replica",
        || gw.answered_inputs().len() >= n,
    )
    .await;
    let (by, calls) = split(&gw);
    println!(
        "{n} messages, replica 1 stopped at 800: invocations per replica {by:?}, {} duplicates",
        calls - gw.answered_inputs().len()
    );
    assert_eq!(gw.answered_inputs().len(), n);
    replicas[0].process().terminate();
    replicas[0].process().wait_exit(LONG).await;
}
