//! What a route's plugin may do through the bridge (issue #10), with the
//! hostile plugin against a real mosquitto and gateway: where its results may
//! go (`republish.allow`, the loop and dead-letter guards, RETAIN), how many
//! and how large they may be (all or nothing), what the host takes out of it
//! in one call, and how much it may log.

mod common;

use std::time::Duration;

use common::bridge::metric;
use common::{
    dist, publish_all, start_in_process, wait_until, BridgeConfig, Collector, Mosquitto,
    TestGateway,
};

const LONG: Duration = Duration::from_secs(30);

fn hostile(name: &str, topic: &str, republish: &str) -> String {
    format!(
        r#"{{name: {name}, topic: "{topic}", function: echo, republish: {republish}, transform: {{component: {}}}}}"#,
        dist("hostile").display()
    )
}

/// The envelope of the one dead letter of `route` whose source payload was
/// `payload` (waits for it).
async fn dead_letter(results: &Collector, route: &str, payload: &str) -> serde_json::Value {
    use base64::Engine as _;
    let topic = format!("fxbridge/dead-letter/{route}");
    let find = || {
        results.on(&topic).into_iter().find_map(|m| {
            let env: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let p = base64::engine::general_purpose::STANDARD
                .decode(env["payload_base64"].as_str()?)
                .ok()?;
            (p == payload.as_bytes()).then_some(env)
        })
    };
    wait_until(LONG, &format!("the dead letter of {payload:?}"), || {
        find().is_some()
    })
    .await;
    find().expect("found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_publishes_only_where_its_route_allows() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(&hostile("h", "h/+", r#"{topic: "h-out/{1}"}"#))
        .route(r#"{name: victim, topic: "v/+", function: echo, republish: {topic: "v-out/{1}"}}"#)
        .route(&hostile(
            "wide",
            "w/+",
            r##"{topic: "w-out/{1}", allow: ["#"], allow_retain: true}"##,
        ))
        .route(&hostile("named", "n/+", r#"{allow: ["n/loop"]}"#));
    let results = Collector::start(broker.port(), &["#"]).await;
    let bridge = start_in_process(&cfg).await;
    let send = |topic: &str, payload: &str| (topic.to_string(), payload.as_bytes().to_vec());
    publish_all(
        broker.port(),
        &[
            send("h/1", "to:v/x"),                         // another route's input
            send("h/2", "to:h-out/ok"),                    // inside its template's space
            send("wide/1", "ignored"),                     // (no such route: unrouted)
            send("w/1", "to:fxbridge/dead-letter/victim"), // a dead-letter topic
            send("w/2", "to:w/9"),                         // its own input: a loop
            send("w/3", "retained:w-out/kept"),            // RETAIN, allowed
            send("h/3", "retained:h-out/kept"),            // RETAIN, not allowed
            send("n/1", "to:n/loop"),                      // its own input, named
            send("h/4", "mixed:v/y"),                      // one good, one refused
        ],
    )
    .await;

    let refused = |env: &serde_json::Value, needle: &str| {
        assert_eq!(env["error_kind"], "output-refused", "{env}");
        let error = env["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    };
    refused(
        &dead_letter(&results, "h", "to:v/x").await,
        "outside what the route may publish to (h-out/+",
    );
    refused(
        &dead_letter(&results, "wide", "to:fxbridge/dead-letter/victim").await,
        "is a dead-letter topic",
    );
    refused(
        &dead_letter(&results, "wide", "to:w/9").await,
        "the route's own input",
    );
    refused(
        &dead_letter(&results, "h", "retained:h-out/kept").await,
        "sets RETAIN",
    );
    refused(
        &dead_letter(&results, "h", "mixed:v/y").await,
        "outside what the route may publish to",
    );

    results.wait_for("h-out/ok", b"h-out/ok", LONG).await;
    results.wait_for("w-out/kept", b"w-out/kept", LONG).await;
    results.wait_for("n/loop", b"n/loop", LONG).await;
    assert!(
        results.on("w-out/kept")[0].retain || {
            // The collector saw it live (RETAIN is not forwarded to existing
            // subscribers); a late one gets it retained.
            let late = Collector::start(broker.port(), &["w-out/kept"]).await;
            late.wait_for("w-out/kept", b"w-out/kept", LONG).await;
            late.on("w-out/kept")[0].retain
        }
    );
    // Nothing forged reached another route, a dead-letter topic, or was
    // published before its message failed.
    assert_eq!(
        gw.calls_with(b"v/x"),
        0,
        "the victim route never saw the forged message"
    );
    assert!(results.on("v/x").is_empty() && results.on("v/y").is_empty());
    assert!(
        results.on("h-out/4").is_empty(),
        "mixed: the good result was not published either"
    );
    assert!(results.on("fxbridge/dead-letter/victim").is_empty());
    assert!(results.on("w/9").is_empty());
    let page = bridge.metrics.render();
    assert_eq!(
        metric(&page, "route_dead_letters_total{route=\"victim\"}"),
        Some(0)
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_limited_in_number_size_and_what_the_host_lifts_and_logs_are_budgeted() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gw.url()).route(&format!(
        r#"{{name: h, topic: "h/+", function: echo, republish: {{topic: "h-out/{{1}}"}},
            transform: {{component: {}, limits: {{timeout: 5s, log_lines_per_second: 10, log_burst: 50}}}}}}"#,
        dist("hostile").display()
    ));
    let results = Collector::start(broker.port(), &["h-out/+", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;
    let rss = || common::process_rss_mib();
    let before = rss();
    publish_all(
        broker.port(),
        &[
            ("h/1".into(), b"many:100".to_vec()),
            ("h/2".into(), b"many:10000".to_vec()),
            ("h/3".into(), b"many:400000".to_vec()),
            ("h/4".into(), b"flood:5000".to_vec()),
        ],
    )
    .await;
    wait_until(LONG, "100 results of many:100", || {
        results.on("h-out/1").len() == 100
    })
    .await;
    let env = dead_letter(&results, "h", "many:10000").await;
    assert_eq!(env["error_kind"], "output-limit", "{env}");
    assert!(
        env["error"]
            .as_str()
            .unwrap_or_default()
            .contains("10000 results"),
        "{env}"
    );
    // 400,000 results are more than the host lifts out of one call: the call
    // fails there, before the host holds them all.
    let env = dead_letter(&results, "h", "many:400000").await;
    assert_eq!(env["plugin_error"], "output_limit", "{env}");
    results.wait_for("h-out/4", b"flooded", LONG).await;
    assert!(results.on("h-out/2").is_empty() && results.on("h-out/3").is_empty());
    let snap = bridge.metrics.route("h").plugin.snapshot();
    let after = rss();
    eprintln!(
        "log: {} lines written, {} suppressed; process RSS {before:.1} -> {after:.1} MiB",
        snap.log_lines, snap.log_suppressed
    );
    assert!(snap.log_suppressed >= 4900, "{snap:?}");
    assert!(
        after - before < 64.0,
        "the host held {:.1} MiB more after the calls",
        after - before
    );
    // The bridge goes on.
    publish_all(broker.port(), &[("h/5".into(), b"plain".to_vec())]).await;
    results.wait_for("h-out/5", b"plain", LONG).await;
    let _ = gw.calls();
    bridge.stop().await.unwrap();
}
