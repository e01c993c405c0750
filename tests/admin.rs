//! The admin endpoint under hostile clients (issue #10), through the real
//! binary: a bearer token for everything but the probes, and a flood of
//! half-open connections that must not take the file descriptors the broker
//! and gateway connections need.

mod common;

use std::time::Duration;

use common::bridge::http_get;
use common::{
    free_port, publish_all, BridgeConfig, BridgeProcess, Collector, ConfigFile, Mosquitto,
    TestGateway,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(30);

/// GET `path` with `Authorization: Bearer <token>`; the status code.
async fn get_with_token(port: u16, path: &str, token: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn config(broker: &Mosquitto, gw: &TestGateway, admin: u16, extra: &str) -> String {
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(r#"{name: a, topic: "a/+", function: f, republish: {topic: "out/{1}"}}"#);
    cfg.admin_port = Some(admin);
    cfg.to_yaml().replace(
        &format!("admin:\n  listen: 127.0.0.1:{admin}\n"),
        &format!("admin:\n  listen: 127.0.0.1:{admin}\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_the_probes() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let admin = free_port();
    let yaml = config(&broker, &gw, admin, "  token: s3cret\n");
    assert!(yaml.contains("token: s3cret"), "{yaml}");
    let file = ConfigFile::with(&yaml);
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    assert_eq!(http_get(admin, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(admin, "/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(admin, "/metrics").await.map(|r| r.0), Some(401));
    assert_eq!(http_get(admin, "/reload").await.map(|r| r.0), Some(401));
    assert_eq!(get_with_token(admin, "/metrics", "wrong").await, Some(401));
    assert_eq!(get_with_token(admin, "/metrics", "s3cret").await, Some(200));
}

/// `FXBRIDGE_ADMIN_FLOOD` connections (default 2,000; 19,000 fits the
/// machine's 20,000 descriptors) that send half a request and wait. The
/// bridge holds at most `admin.max_connections` of them, reconnects to a
/// restarted gateway meanwhile, and delivers every message; afterwards the
/// endpoint answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_exhaust_the_bridge() {
    let flood: usize = std::env::var("FXBRIDGE_ADMIN_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let broker = Mosquitto::start();
    let mut gw = TestGateway::start().await;
    let admin = free_port();
    let yaml = config(
        &broker,
        &gw,
        admin,
        "  max_connections: 16\n  header_timeout: 2s\n",
    );
    let file = ConfigFile::with(&yaml);
    let results = Collector::start(broker.port(), &["out/+"]).await;
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;
    publish_all(broker.port(), &[("a/0".into(), b"warm".to_vec())]).await;
    results.wait_for("out/0", b"warm", LONG).await;
    let baseline = open_fds(bridge.pid());

    // The flood: connect (the kernel completes what the listener's queue
    // holds), send half a request, keep the socket.
    let mut held = Vec::new();
    for chunk in 0..flood.div_ceil(250) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..250.min(flood - chunk * 250) {
            set.spawn(async move {
                let connect = tokio::net::TcpStream::connect(("127.0.0.1", admin));
                let mut s = tokio::time::timeout(Duration::from_millis(300), connect)
                    .await
                    .ok()?
                    .ok()?;
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
                Some(s)
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                held.push(s);
            }
        }
    }
    let during = open_fds(bridge.pid());

    // The gateway restarts: the bridge needs a new connection (a descriptor).
    gw.stop().await;
    gw.restart().await;
    let msgs: Vec<_> = (1..=20)
        .map(|i| (format!("a/{i}"), format!("m-{i}").into_bytes()))
        .collect();
    publish_all(broker.port(), &msgs).await;
    for (topic, payload) in &msgs {
        let out = topic.replace("a/", "out/");
        results.wait_for(&out, payload, LONG).await;
    }
    eprintln!(
        "{} half-open admin connections established of {flood} tried; bridge descriptors {baseline} before, {during} during",
        held.len()
    );
    assert!(
        during <= baseline + 16 + 4,
        "the bridge held {during} descriptors ({baseline} before the flood)"
    );
    drop(held);
    common::wait::wait_until_async(LONG, "/healthz answers again", || async {
        http_get(admin, "/healthz").await.map(|r| r.0) == Some(200)
    })
    .await;
    assert!(!bridge.log().contains("EMFILE") && !bridge.log().contains("Too many open files"));
}

/// `/metrics` shows latency histograms per route (end to end, Invoke, each
/// plugin hook) and the gauges of in-flight and pending messages and of the
/// gateway connection, while messages flow and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_latency_histograms_and_in_flight_gauges() {
    use common::bridge::{metric, start_in_process};
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.delay_all(Duration::from_millis(30));
    let admin = free_port();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(&format!(
            r#"{{name: h, topic: "h/+", function: f, ordering: none, republish: {{topic: "h-out/{{1}}"}}, transform: {{component: {:?}}}}}"#,
            common::dist("noop").display().to_string()
        ));
    cfg.admin_port = Some(admin);
    cfg.extra = format!(
        "plugins:\n  cache_dir: {:?}\n",
        common::plugins::shared_cache_dir().display().to_string()
    );
    let out = Collector::start(broker.port(), &["h-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    // Three messages held at the gateway: in flight and pending.
    for i in 0..3 {
        gw.hold(format!("held-{i}").as_bytes());
    }
    let held: Vec<_> = (0..3)
        .map(|i| (format!("h/{i}"), format!("held-{i}").into_bytes()))
        .collect();
    publish_all(broker.port(), &held).await;
    common::wait::wait_until(LONG, "3 calls held at the gateway", || gw.in_flight() == 3).await;
    let page = http_get(admin, "/metrics").await.expect("metrics").1;
    assert_eq!(
        metric(&page, "route_in_flight{route=\"h\"}"),
        Some(3),
        "{page}"
    );
    assert_eq!(
        metric(&page, "session_pending{session=\"h\"}"),
        Some(3),
        "{page}"
    );
    assert_eq!(metric(&page, "gateway_connected"), Some(1), "{page}");
    gw.release();
    let fast: Vec<_> = (3..10)
        .map(|i| (format!("h/{i}"), format!("m-{i}").into_bytes()))
        .collect();
    publish_all(broker.port(), &fast).await;
    out.wait_for_distinct(10, LONG).await;
    common::wait::wait_until(LONG, "10 acknowledged", || {
        bridge.metrics.totals() == (10, 10)
    })
    .await;
    let page = http_get(admin, "/metrics").await.expect("metrics").1;
    let count = |name: &str| metric(&page, &format!("{name}_count{{route=\"h\"}}"));
    assert_eq!(count("route_latency_seconds"), Some(10), "{page}");
    assert_eq!(count("route_invoke_seconds"), Some(10));
    assert_eq!(count("route_before_invoke_seconds"), Some(10));
    assert_eq!(count("route_after_invoke_seconds"), Some(10));
    // Every call took the gateway's 30 ms at least: none under 25 ms.
    let bucket = |le: &str| {
        metric(
            &page,
            &format!("route_invoke_seconds_bucket{{route=\"h\",le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("0.025"), Some(0), "{page}");
    assert_eq!(bucket("+Inf"), Some(10));
    assert_eq!(metric(&page, "route_in_flight{route=\"h\"}"), Some(0));
    assert_eq!(metric(&page, "session_pending{session=\"h\"}"), Some(0));
    bridge.stop().await.unwrap();
}
