//! Hot reload through the real binary: `fxbridge run -c bridge.yaml` watching
//! its config and plugins, a private mosquitto and the test gateway.
//!
//! What is checked: each way of replacing a file (editor rename, in-place
//! truncate-and-write, Kubernetes `..data` symlink swap) causes exactly one
//! reload; adding and removing routes subscribes and unsubscribes on the broker
//! and leaves unchanged filters alone; bad files keep the running version and
//! the next good one applies; and a plugin swapped ten times under a stream of
//! messages processes every message exactly once with one whole version.
//!
//! The reload counters come from the admin endpoint (`/metrics`, `/reload`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use common::bridge::{http_get, metric};
use common::mqtt::numbered;
use common::{
    free_port, publish_all, BridgeConfig, BridgeProcess, Collector, Mosquitto, TestGateway,
};

/// Longer than the watcher's quiet period (250 ms): a second reload caused by
/// the same edit would have started by then.
const SETTLE: Duration = Duration::from_millis(1200);
const WAIT: Duration = Duration::from_secs(20);

/// `(applied, rejected)` reloads, from `/metrics`.
async fn reloads(admin: u16) -> (u64, u64) {
    let (_, page) = http_get(admin, "/metrics")
        .await
        .expect("admin /metrics answers");
    (
        metric(&page, "reloads_total").expect("reloads_total"),
        metric(&page, "reload_failures_total").expect("reload_failures_total"),
    )
}

/// Waits until the reload counters are `want`, then checks they stay there for
/// [`SETTLE`] (so an edit that caused two reloads is caught).
async fn expect_reloads(admin: u16, want: (u64, u64), what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = reloads(admin).await;
        if now == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && now.0 <= want.0 && now.1 <= want.1,
            "{what}: reloads (applied, rejected) = {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        reloads(admin).await,
        want,
        "{what}: more reloads than edits"
    );
}

/// The last reload's status text from `/reload`.
async fn reload_status(admin: u16) -> String {
    http_get(admin, "/reload").await.expect("admin /reload").1
}

struct Setup {
    broker: Mosquitto,
    gateway: TestGateway,
    admin: u16,
    base: BridgeConfig,
}

async fn setup() -> Setup {
    let broker = Mosquitto::start();
    let gateway = TestGateway::start().await;
    let admin = free_port();
    let mut base = BridgeConfig::new(broker.port(), &gateway.url());
    base.admin_port = Some(admin);
    Setup {
        broker,
        gateway,
        admin,
        base,
    }
}

fn route(name: &str) -> String {
    format!(
        "{{name: {name}, topic: \"{name}/+\", function: echo, qos: 1, \
         republish: {{topic: \"out/{name}/{{1}}\"}}}}"
    )
}

/// Publishes one message on `<route>/probe` and waits for its result.
async fn route_works(s: &Setup, name: &str, tag: &str) {
    let out = Collector::start(s.broker.port(), &[&format!("out/{name}/#")]).await;
    publish_all(
        s.broker.port(),
        &[(format!("{name}/probe"), tag.as_bytes().to_vec())],
    )
    .await;
    out.wait_for(&format!("out/{name}/probe"), tag.as_bytes(), WAIT)
        .await;
}

/// `..data` points at a timestamped directory holding the file; the file the
/// bridge reads is a symlink through `..data`, as in a Kubernetes ConfigMap volume.
fn k8s_publish(dir: &Path, version: u32, yaml: &str) {
    let versioned = dir.join(format!("..2026_11_26_v{version}"));
    std::fs::create_dir(&versioned).expect("versioned dir");
    std::fs::write(versioned.join("bridge.yaml"), yaml).expect("write versioned config");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().expect("name"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if version > 1 {
        let old = dir.join(format!("..2026_11_26_v{}", version - 1));
        std::fs::remove_dir_all(old).expect("remove old version");
    } else {
        std::os::unix::fs::symlink("..data/bridge.yaml", dir.join("bridge.yaml"))
            .expect("bridge.yaml symlink");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_replacing_the_file_causes_exactly_one_reload() {
    let s = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bridge.yaml");
    let v1 = s.base.clone().route(&route("a")).to_yaml();
    std::fs::write(&path, &v1).expect("write config");
    let bridge = BridgeProcess::spawn(&path);
    bridge.wait_ready(s.admin, WAIT).await;
    route_works(&s, "a", "first").await;
    assert_eq!(reloads(s.admin).await, (0, 0));

    // An editor: write a sibling, rename it over the file.
    let v2 = s
        .base
        .clone()
        .route(&route("a"))
        .route(&route("b"))
        .to_yaml();
    let tmp = dir.path().join(".bridge.yaml.swp");
    std::fs::write(&tmp, &v2).expect("write sibling");
    std::fs::rename(&tmp, &path).expect("rename");
    expect_reloads(s.admin, (1, 0), "atomic rename").await;
    route_works(&s, "b", "after-rename").await;

    // In place: open with O_TRUNC, then write.
    let v3 = s
        .base
        .clone()
        .route(&route("b"))
        .route(&route("c"))
        .to_yaml();
    std::fs::write(&path, &v3).expect("truncate and write");
    expect_reloads(s.admin, (2, 0), "truncate then write").await;
    route_works(&s, "c", "after-truncate").await;

    // Touching the file without changing it is not a reload.
    std::fs::write(&path, &v3).expect("same content");
    expect_reloads(s.admin, (2, 0), "rewrite with the same content").await;

    let status = reload_status(s.admin).await;
    assert!(
        status.contains("removed [\"a\"]") && status.contains("added [\"c\"]"),
        "{status}"
    );
    drop(bridge);

    // Kubernetes: bridge.yaml -> ..data/bridge.yaml, ..data -> ..<timestamp>.
    let k8s = tempfile::tempdir().expect("temp dir");
    k8s_publish(k8s.path(), 1, &v1);
    let bridge = BridgeProcess::spawn(&k8s.path().join("bridge.yaml"));
    bridge.wait_ready(s.admin, WAIT).await;
    route_works(&s, "a", "k8s-first").await;
    k8s_publish(k8s.path(), 2, &v2);
    expect_reloads(s.admin, (1, 0), "..data symlink swap").await;
    route_works(&s, "b", "after-k8s-swap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_routes_changes_the_subscriptions() {
    let s = setup().await;
    let cfg = common::ConfigFile::with(
        &s.base
            .clone()
            .route(&route("a"))
            .route(&route("b"))
            .to_yaml(),
    );
    let bridge = BridgeProcess::spawn(cfg.path());
    bridge.wait_ready(s.admin, WAIT).await;
    // Each route has its own session, client id `<client_id>.<route>`; the
    // route's filter is `<route>/+`.
    let client_id = s.base.client_id.clone();
    let session = |filter: &str| format!("{client_id}.{}", &filter[..1]);
    let subscribes = |filter: &str| {
        s.broker
            .log()
            .lines()
            .filter(|l| l.contains(&session(filter)) && l.ends_with(&format!(" 1 {filter}")))
            .count()
    };
    let unsubscribes = |filter: &str| {
        s.broker
            .log()
            .lines()
            .filter(|l| l.ends_with(&format!("{} {filter}", session(filter))))
            .count()
    };
    assert_eq!(
        (subscribes("a/+"), subscribes("b/+")),
        (1, 1),
        "{}",
        s.broker.log()
    );

    // Remove a, keep b, add c.
    cfg.write(
        &s.base
            .clone()
            .route(&route("b"))
            .route(&route("c"))
            .to_yaml(),
    );
    expect_reloads(s.admin, (1, 0), "route change").await;
    common::wait_until(
        WAIT,
        "SUBSCRIBE c/+ and UNSUBSCRIBE a/+ at the broker",
        || subscribes("c/+") == 1 && unsubscribes("a/+") == 1,
    )
    .await;
    assert_eq!(
        subscribes("b/+"),
        1,
        "an unchanged filter is not subscribed again"
    );
    assert_eq!(unsubscribes("b/+"), 0);
    route_works(&s, "c", "new-route").await;
    route_works(&s, "b", "kept-route").await;

    // A message on the removed route's topic no longer reaches the bridge.
    let before = s.gateway.calls();
    publish_all(s.broker.port(), &numbered("a/x", "gone", 0..3)).await;
    route_works(&s, "b", "fence").await;
    assert_eq!(s.gateway.calls(), before + 1, "only the fence was invoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_running_version_and_a_fixed_file_applies() {
    let s = setup().await;
    let good = s.base.clone().route(&route("a")).to_yaml();
    let cfg = common::ConfigFile::with(&good);
    let bridge = BridgeProcess::spawn(cfg.path());
    bridge.wait_ready(s.admin, WAIT).await;

    let broken_wasm = cfg.dir().join("broken.wasm");
    std::fs::write(&broken_wasm, b"\0asm\x0d\0\x01\0 this is not a component").expect("write");
    let with_plugin = |component: &str| {
        s.base
            .clone()
            .route(&route("a"))
            .route(&format!(
                "{{name: p, topic: \"p/+\", function: echo, transform: {{component: {component}}}}}"
            ))
            .to_yaml()
    };
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "bad YAML",
            good.replace("routes:", "routes: [oops"),
            "invalid YAML",
        ),
        ("empty file", String::new(), "empty"),
        (
            "missing plugin",
            with_plugin("missing.wasm"),
            "missing.wasm",
        ),
        (
            "broken component",
            with_plugin("broken.wasm"),
            "broken.wasm",
        ),
    ];
    for (i, (what, text, needle)) in bad.iter().enumerate() {
        cfg.write(text);
        expect_reloads(s.admin, (0, i as u64 + 1), what).await;
        let status = reload_status(s.admin).await;
        assert!(
            status.contains("failed") && status.contains(needle),
            "{what}: {status}"
        );
        route_works(&s, "a", &format!("still-serving-{i}")).await;
    }
    assert!(bridge.log().contains("reload rejected"), "{}", bridge.log());

    cfg.write(
        &s.base
            .clone()
            .route(&route("a"))
            .route(&route("b"))
            .to_yaml(),
    );
    expect_reloads(s.admin, (1, 4), "the fixed file").await;
    route_works(&s, "b", "fixed").await;
}

/// Copies `from` over `to` atomically (write a sibling, rename).
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, to).expect("rename plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_ten_times_under_a_stream_loses_and_mixes_nothing() {
    const BATCHES: usize = 22;
    const PER_BATCH: usize = 150;
    const TOPICS: usize = 10;
    let s = setup().await;
    let cfg = common::ConfigFile::new();
    let plugin = cfg.dir().join("tagger.wasm");
    let (v1, v2) = (common::dist("tagger.wasm"), common::dist("tagger-v2.wasm"));
    replace_file(&v1, &plugin);
    cfg.write(
        &s.base
            .clone()
            .route(
                "{name: tag, topic: \"in/+\", function: echo, qos: 1, ordering: per-topic, \
                 republish: {topic: \"out/{1}\"}, transform: {component: tagger.wasm}}",
            )
            .to_yaml(),
    );
    let bridge = BridgeProcess::spawn(cfg.path());
    bridge.wait_ready(s.admin, WAIT).await;
    let out = Collector::start(s.broker.port(), &["out/#"]).await;

    let mut swaps = 0u64;
    for batch in 0..BATCHES {
        let msgs: Vec<(String, Vec<u8>)> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
            .map(|i| (format!("in/{}", i % TOPICS), i.to_string().into_bytes()))
            .collect();
        publish_all(s.broker.port(), &msgs).await;
        if batch % 2 == 1 && swaps < 10 {
            swaps += 1;
            replace_file(if swaps % 2 == 1 { &v2 } else { &v1 }, &plugin);
            // Wait for this swap to apply, so each one is its own reload; the
            // stream keeps flowing through the bridge meanwhile.
            let deadline = tokio::time::Instant::now() + WAIT;
            while reloads(s.admin).await.0 < swaps {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "swap {swaps} not applied"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let total = BATCHES * PER_BATCH;
    out.wait_for_distinct(total, Duration::from_secs(60)).await;
    assert_eq!(
        reloads(s.admin).await,
        (10, 0),
        "{}",
        reload_status(s.admin).await
    );

    // Every message: exactly one result, whose pre and post stamps agree.
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_on_topic: HashMap<String, usize> = HashMap::new();
    for m in out.messages() {
        let text = String::from_utf8(m.payload.clone()).expect("utf-8 result");
        let parts: Vec<&str> = text.split(';').collect();
        assert_eq!(parts.len(), 3, "unexpected result {text:?}");
        let pre = parts[0].strip_prefix("pre=").expect("pre stamp");
        let post = parts[2].strip_prefix("post=").expect("post stamp");
        assert_eq!(pre, post, "message {text:?} mixed two plugin versions");
        let seq: usize = parts[1].parse().expect("sequence number");
        *seen.entry(seq).or_default() += 1;
        *versions.entry(pre.to_string()).or_default() += 1;
        // Per-topic order holds across the swaps.
        if let Some(prev) = last_on_topic.insert(m.topic.clone(), seq) {
            assert!(prev < seq, "on {}: {seq} after {prev}", m.topic);
        }
    }
    assert_eq!(seen.len(), total, "every message has a result");
    assert!(
        seen.values().all(|n| *n == 1),
        "no message was processed twice"
    );
    assert_eq!(s.gateway.calls(), total, "one Invoke per message");
    assert!(
        versions.get("v1").is_some_and(|n| *n > 0) && versions.get("v2").is_some_and(|n| *n > 0),
        "both versions processed messages: {versions:?}"
    );
    eprintln!("messages: {total}, reloads: 10, results by version: {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_settings_apply_by_reconnecting_and_process_settings_say_restart() {
    let s = setup().await;
    let cfg = common::ConfigFile::with(&s.base.clone().route(&route("a")).to_yaml());
    let bridge = BridgeProcess::spawn(cfg.path());
    bridge.wait_ready(s.admin, WAIT).await;
    route_works(&s, "a", "on-first-gateway").await;
    assert_eq!(s.gateway.calls(), 1);

    // A new gateway URL: drained, reconnected, and the next message goes there.
    let second = TestGateway::start().await;
    let mut moved = s.base.clone().route(&route("a"));
    moved.gateway_url = second.url();
    cfg.write(&moved.to_yaml());
    expect_reloads(s.admin, (1, 0), "gateway change").await;
    assert!(reload_status(s.admin).await.contains("reconnected"));
    route_works(&s, "a", "on-second-gateway").await;
    assert_eq!((s.gateway.calls(), second.calls()), (1, 1));

    // The embedded broker cannot start in a running process: applied otherwise,
    // reported as needing a restart.
    let embedded = free_port();
    let with_broker = moved.clone().route(&route("b")).to_yaml().replacen(
        "routes:",
        &format!("broker:\n  listen: 127.0.0.1:{embedded}\nroutes:"),
        1,
    );
    cfg.write(&with_broker);
    expect_reloads(s.admin, (2, 0), "broker section added").await;
    let status = reload_status(s.admin).await;
    assert!(
        status.contains("needs a restart to apply: broker"),
        "{status}"
    );
    assert!(bridge.log().contains("apply only when fxbridge restarts"));
    route_works(&s, "b", "rest-applied").await;
}

/// A reload that would reconnect with a gateway CA file that does not exist
/// is rejected before anything stops: the running connections stay exactly
/// as they were (one publisher, one subscriber per session, no second client
/// under the same id), the bridge keeps working, and the fixed file applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_reload_with_bad_tls_keeps_the_running_connections() {
    let s = setup().await;
    let good = s.base.clone().route(&route("a"));
    let cfg = common::ConfigFile::with(&good.to_yaml());
    let bridge = BridgeProcess::spawn(cfg.path());
    bridge.wait_ready(s.admin, WAIT).await;
    let connects = |client_id: &str| {
        s.broker
            .log()
            .lines()
            .filter(|l| l.contains(&format!(" as {client_id} ")))
            .count()
    };
    let publisher = format!("{}-pub", s.base.client_id);
    let subscriber = format!("{}.a", s.base.client_id);
    common::wait_until(WAIT, "the publisher connected", || {
        connects(&publisher) == 1
    })
    .await;

    let bad = good.to_yaml().replace(
        &format!("  url: {}\n", s.gateway.url()),
        &format!(
            "  url: {}\n  tls: {{ca_file: no-such-ca.pem}}\n",
            s.gateway.url().replace("http://", "https://")
        ),
    );
    assert!(bad.contains("no-such-ca.pem"), "{bad}");
    cfg.write(&bad);
    expect_reloads(s.admin, (0, 1), "bad gateway TLS").await;
    let (_, status) = http_get(s.admin, "/reload").await.expect("/reload");
    assert!(status.contains("no-such-ca.pem does not exist"), "{status}");
    route_works(&s, "a", "still-running").await;
    assert_eq!(
        connects(&publisher),
        1,
        "no second publisher:\n{}",
        s.broker.log()
    );
    assert_eq!(connects(&subscriber), 1, "the subscriber was not restarted");
    assert!(
        !s.broker.log().contains("already connected"),
        "{}",
        s.broker.log()
    );

    // The fixed file (a reconnecting change) applies: one new connection each.
    let mut fixed = good.clone();
    fixed.gateway_timeout = "9s".into();
    cfg.write(&fixed.to_yaml());
    expect_reloads(s.admin, (1, 1), "fixed file").await;
    route_works(&s, "a", "after-fix").await;
    assert_eq!(connects(&publisher), 2);
    assert_eq!(connects(&subscriber), 2);
    assert!(!s.broker.log().contains("already connected"));
    drop(bridge);
}
