//! MQTT 5 end to end. Request/response: a request's Response Topic gets the
//! function's reply with the request's Correlation Data, checked with
//! `mosquitto_rr` (a client nobody here wrote) and with concurrent requests
//! of one client matched by correlation data. Metadata: allowlisted user
//! properties reach the gateway as gRPC metadata and results keep them.
//! Expiry: a message whose expiry interval ran out is not invoked.

mod common;

use std::time::Duration;

use common::bridge::{start_in_process, BridgeConfig};
use common::gateway::TestGateway;
use common::mosquitto::Mosquitto;
use common::mqtt5::Client;

const LONG: Duration = Duration::from_secs(20);

fn v5(broker: &Mosquitto, gw: &TestGateway, route: &str) -> BridgeConfig {
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(route);
    cfg.protocol = "5".into();
    cfg
}

/// `mosquitto_rr -V 5 -t req/dev-1 -e resp/dev-1 -m hello` prints the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_rr_gets_the_functions_reply() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.reply_prefix("ask", "answer to ");
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: ask, topic: "req/+", function: ask}"#,
    );
    let bridge = start_in_process(&cfg).await;
    let out = tokio::process::Command::new("mosquitto_rr")
        .args([
            "-V",
            "5",
            "-p",
            &broker.port().to_string(),
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-t",
            "req/dev-1",
            "-e",
            "resp/dev-1",
            "-m",
            "hello",
            "-W",
            "15",
        ])
        .output()
        .await
        .expect("mosquitto_rr (apt-get install mosquitto-clients)");
    assert!(
        out.status.success(),
        "mosquitto_rr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer to hello\n");
    assert_eq!(gw.calls(), 1);
    bridge.stop().await.unwrap();
}

/// Several `mosquitto_rr` at once, each with its own response topic and
/// correlation data: each prints the answer to its own question, with its own
/// correlation data (`-F '%D %p'`). (`mosquitto_rr` prints the first message
/// on its response topic without looking at correlation data, so clients that
/// share one response topic need a client that matches, as in the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mosquitto_rr_requests_each_get_their_own_answer() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.reply_prefix("ask", "re:");
    // Each call takes a while, so the requests really overlap.
    gw.delay_all(Duration::from_millis(300));
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: ask, topic: "req/+", function: ask, ordering: none, max_in_flight: 16}"#,
    );
    let bridge = start_in_process(&cfg).await;
    let mut runs = Vec::new();
    for i in 0..6 {
        let port = broker.port().to_string();
        runs.push(tokio::spawn(async move {
            let out = tokio::process::Command::new("mosquitto_rr")
                .args(["-V", "5", "-p", &port, "-h", "127.0.0.1"])
                .args(["-t", "req/all", "-e", &format!("resp/dev-{i}")])
                .args(["-D", "publish", "correlation-data", &format!("corr-{i}")])
                .args(["-F", "%D %p", "-m", &format!("question {i}"), "-W", "15"])
                .output()
                .await
                .expect("mosquitto_rr");
            (i, out)
        }));
    }
    for run in runs {
        let (i, out) = run.await.unwrap();
        assert!(
            out.status.success(),
            "{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("corr-{i} re:question {i}\n"),
            "request {i}"
        );
    }
    assert!(gw.max_in_flight() > 1, "the requests overlapped");
    bridge.stop().await.unwrap();
}

/// One client, 20 requests in flight on one response topic: every reply
/// carries the correlation data of its request, and the request's content
/// type. A route with `republish` publishes there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_the_correlation_data_of_their_request() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    gw.reply_prefix("ask", "re:");
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: ask, topic: "req/+", function: ask, max_in_flight: 16, republish: {topic: "log/{1}"}}"#,
    );
    let client = Client::start(broker.port(), &["resp/c", "log/+"]).await;
    let bridge = start_in_process(&cfg).await;
    for i in 0..20 {
        client.request(
            &format!("req/{}", i % 4),
            format!("q{i}").as_bytes(),
            "resp/c",
            Some(format!("id-{i}").as_bytes()),
        );
    }
    let replies = client.wait_for_n("resp/c", 20, LONG).await;
    let mut seen = std::collections::BTreeSet::new();
    for r in &replies {
        let corr =
            String::from_utf8(r.correlation_data.clone().expect("correlation data")).unwrap();
        let i: usize = corr.strip_prefix("id-").unwrap().parse().unwrap();
        assert_eq!(r.payload, format!("re:q{i}").into_bytes(), "{corr}");
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        assert_eq!(r.response_topic, None, "a reply asks for no reply");
        seen.insert(i);
    }
    assert_eq!(seen.len(), 20, "{replies:?}");
    let mut logged = 0;
    for t in 0..4 {
        logged += client.wait_for_n(&format!("log/{t}"), 5, LONG).await.len();
    }
    assert_eq!(logged, 20);
    bridge.stop().await.unwrap();
}

/// `response: {enabled: false}`: the request is processed as any message and
/// nothing is published on its response topic. A response topic inside the
/// route's own input (a loop) fails the message to its dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_can_be_turned_off_and_never_loop() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: quiet, topic: "quiet/+", function: f, republish: {topic: "done/{1}"}, response: {enabled: false}}"#,
    )
    .route(r#"{name: loop, topic: "loop/+", function: f}"#);
    let client = Client::start(
        broker.port(),
        &["done/+", "resp/#", "loop/#", "fxbridge/dead-letter/#"],
    )
    .await;
    let bridge = start_in_process(&cfg).await;
    client.request("quiet/1", b"one", "resp/quiet", Some(b"c1"));
    client.request("loop/1", b"two", "loop/back", Some(b"c2"));
    client.request("quiet/2", b"three", "resp/quiet", Some(b"c3"));
    client.wait_for_n("done/1", 1, LONG).await;
    client.wait_for_n("done/2", 1, LONG).await;
    let dead = client
        .wait_for_n("fxbridge/dead-letter/loop", 1, LONG)
        .await;
    let env: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(env["error_kind"], "output-refused", "{env}");
    assert!(
        env["error"].as_str().unwrap().contains("loop/back"),
        "{env}"
    );
    // A response goes out before the message's other results, each confirmed
    // before the next: with done/1 and done/2 in, none is coming.
    assert!(client.on("resp/quiet").is_empty());
    assert!(client.on("loop/back").is_empty());
    bridge.stop().await.unwrap();
}

/// `traceparent` (allowlisted by default) reaches the gateway as gRPC
/// metadata, other user properties do not; the result keeps them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_gateway_and_the_result() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: t, topic: "t/+", function: f, republish: {topic: "t-out/{1}"}}"#,
    );
    let client = Client::start(broker.port(), &["t-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let props = vec![
        ("TraceParent".to_string(), trace.to_string()),
        ("secret".to_string(), "not for the gateway".to_string()),
        ("tracestate".to_string(), "unit=°C".to_string()),
    ];
    client.publish("t/1", b"hello", props.clone());
    let out = client.wait_for_n("t-out/1", 1, LONG).await;
    assert_eq!(out[0].payload, b"hello");
    assert_eq!(out[0].user_properties, props, "the result keeps them");
    let calls = gw.invocations();
    assert_eq!(calls.len(), 1);
    let md = &calls[0].metadata;
    assert!(
        md.contains(&("traceparent".to_string(), trace.to_string())),
        "{md:?}"
    );
    assert!(md.iter().all(|(k, _)| k != "secret"), "{md:?}");
    // Not visible ASCII: gRPC metadata cannot carry it, so it is left out.
    assert!(md.iter().all(|(k, _)| k != "tracestate"), "{md:?}");
    bridge.stop().await.unwrap();
}

/// A message whose expiry interval runs out while it waits in the bridge
/// (behind another message of its topic) is not invoked, and is counted; a
/// message without expiry behind it is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_invoked() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: e, topic: "e/+", function: f, republish: {topic: "e-out/{1}"}}"#,
    );
    let client = Client::start(broker.port(), &["e-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    gw.hold(b"first");
    client.publish("e/1", b"first", Vec::new());
    common::wait::wait_until(LONG, "first held at the gateway", || gw.in_flight() == 1).await;
    client.publish_with(
        "e/1",
        b"short-lived",
        rumqttc::v5::mqttbytes::v5::PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        },
    );
    client.publish("e/1", b"last", Vec::new());
    // Both are in the bridge, waiting behind "first" (per-topic order); the
    // short-lived one's second of life then passes there.
    common::wait::wait_until(LONG, "three messages received", || {
        bridge.metrics.totals().0 == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    gw.release();
    let out = client.wait_for_n("e-out/1", 2, LONG).await;
    let payloads: Vec<_> = out.iter().map(|g| g.payload.clone()).collect();
    assert_eq!(payloads, vec![b"first".to_vec(), b"last".to_vec()]);
    assert_eq!(gw.calls_with(b"short-lived"), 0);
    let page = bridge.metrics.render();
    assert_eq!(
        common::bridge::metric(&page, "route_expired_total{route=\"e\"}"),
        Some(1),
        "{page}"
    );
    bridge.stop().await.unwrap();
}

/// With `telemetry.otlp`, every message's spans arrive at an OTLP receiver as
/// one tree: `receive` under the publisher's span (or a root the bridge
/// starts), `invoke` and `publish` (or `dead-letter`) under `receive`. The
/// gateway gets the `invoke` span's context as its parent, and the result and
/// the dead letter carry their own span's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_at_the_otlp_receiver_as_one_tree() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let otlp = common::otlp::Receiver::start().await;
    let mut cfg = v5(
        &broker,
        &gw,
        r#"{name: t, topic: "tr/+", function: f, republish: {topic: "tr-out/{1}"}, dead_letter: "tr-dead/{1}"}"#,
    );
    cfg.extra = format!(
        "telemetry:\n  otlp: {{endpoint: \"{}\", service_name: edge-7, interval: 100ms}}\n\
         plugins:\n  cache_dir: {:?}\n",
        otlp.endpoint(),
        common::plugins::shared_cache_dir().display().to_string(),
    );
    // A route with a plugin (both hooks) for message 4.
    cfg = cfg.route(&format!(
        r#"{{name: p, topic: "trp/+", function: g, republish: {{topic: "trp-out/{{1}}"}}, transform: {{component: {:?}}}}}"#,
        common::dist("noop").display().to_string()
    ));
    let client = Client::start(broker.port(), &["tr-out/+", "tr-dead/+", "trp-out/+"]).await;
    let bridge = start_in_process(&cfg).await;

    // 1. A message with the publisher's trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let device_span = "00f067aa0ba902b7";
    let props = vec![
        (
            "traceparent".to_string(),
            format!("00-{trace}-{device_span}-01"),
        ),
        ("tracestate".to_string(), "edge=7".to_string()),
        ("unit".to_string(), "C".to_string()),
    ];
    client.publish("tr/1", b"traced", props);
    let out = client.wait_for_n("tr-out/1", 1, LONG).await;
    // 2. One without: the bridge starts a trace.
    client.publish("tr/2", b"untraced", Vec::new());
    let out2 = client.wait_for_n("tr-out/2", 1, LONG).await;
    // 3. One the gateway refuses: dead-lettered.
    gw.fail_next(1, tonic::Code::InvalidArgument);
    client.publish("tr/3", b"refused", Vec::new());
    let dead = client.wait_for_n("tr-dead/3", 1, LONG).await;
    // 4. Through a plugin, with a trace context.
    let trace4 = "0af7651916cd43dd8448eb211c80319c";
    client.publish(
        "trp/1",
        b"plugged",
        vec![(
            "traceparent".to_string(),
            format!("00-{trace4}-b7ad6b7169203331-01"),
        )],
    );
    let out4 = client.wait_for_n("trp-out/1", 1, LONG).await;

    // Four receive spans, with their children (2 + 2 + 2 + 4).
    otlp.wait_for("14 spans", LONG, |s| s.len() >= 14).await;
    let spans = otlp.spans();
    let named = |name: &str, trace: &str| -> Vec<common::otlp::Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.trace == trace)
            .cloned()
            .collect()
    };
    assert!(spans.iter().all(|s| s.service == "edge-7"), "{spans:#?}");

    // 1: receive is the child of the device's span; invoke and publish of receive.
    let receive = named("receive", trace);
    assert_eq!(receive.len(), 1, "{spans:#?}");
    let receive = &receive[0];
    assert_eq!(receive.parent, device_span);
    assert_eq!(receive.attribute("fxbridge.route"), Some("t"));
    assert_eq!(
        receive.attribute("messaging.destination.name"),
        Some("tr/1")
    );
    let invoke = named("invoke", trace);
    let publish = named("publish", trace);
    assert_eq!((invoke.len(), publish.len()), (1, 1), "{spans:#?}");
    assert_eq!(invoke[0].parent, receive.id);
    assert_eq!(invoke[0].attribute("faas.invoked_name"), Some("f"));
    assert_eq!(publish[0].parent, receive.id);
    assert_eq!(
        publish[0].attribute("messaging.destination.name"),
        Some("tr-out/1")
    );
    // The gateway's parent is the invoke span; the result's is the publish span.
    let calls = gw.invocations();
    let md = &calls[0].metadata;
    let sent = format!("00-{trace}-{}-01", invoke[0].id);
    assert!(
        md.contains(&("traceparent".to_string(), sent.clone())),
        "{md:?} lacks {sent}"
    );
    assert!(
        md.contains(&("tracestate".to_string(), "edge=7".to_string())),
        "{md:?}"
    );
    let carried = |props: &[(String, String)], key: &str| -> Vec<String> {
        props
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        carried(&out[0].user_properties, "traceparent"),
        vec![format!("00-{trace}-{}-01", publish[0].id)]
    );
    assert_eq!(
        carried(&out[0].user_properties, "tracestate"),
        vec!["edge=7"]
    );
    assert_eq!(
        carried(&out[0].user_properties, "unit"),
        vec!["C"],
        "others kept"
    );

    // 2: a root started by the bridge; the result carries it.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "receive" && s.parent.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        2,
        "messages 2 and 3 start their own trace: {spans:#?}"
    );
    let tp2 = carried(&out2[0].user_properties, "traceparent");
    assert_eq!(tp2.len(), 1, "{:?}", out2[0].user_properties);
    let root2 = roots
        .iter()
        .find(|s| tp2[0].contains(&s.trace))
        .expect("the result of message 2 carries its trace");
    let publish2 = named("publish", &root2.trace);
    assert_eq!(publish2.len(), 1);
    assert_eq!(publish2[0].parent, root2.id);
    assert_eq!(tp2[0], format!("00-{}-{}-01", root2.trace, publish2[0].id));

    // 3: dead-lettered: receive and invoke fail, the dead letter has its span.
    let root3 = roots
        .iter()
        .find(|s| s.trace != root2.trace)
        .expect("message 3's trace");
    assert_eq!(root3.status, 2, "receive failed: {root3:?}");
    assert!(
        root3.status_message.contains("INVALID_ARGUMENT"),
        "{root3:?}"
    );
    let invoke3 = named("invoke", &root3.trace);
    assert_eq!((invoke3.len(), invoke3[0].status), (1, 2), "{spans:#?}");
    let dead3 = named("dead-letter", &root3.trace);
    assert_eq!(dead3.len(), 1, "{spans:#?}");
    assert_eq!(dead3[0].parent, root3.id);
    assert_eq!(dead3[0].attribute("error.type"), Some("gateway"));
    assert_eq!(
        carried(&dead[0].user_properties, "traceparent"),
        vec![format!("00-{}-{}-01", root3.trace, dead3[0].id)]
    );

    // 4: the hooks have their spans, in the tree; the plugin's result carries
    // the publish span's context though the plugin set no properties.
    let receive4 = named("receive", trace4);
    assert_eq!(receive4.len(), 1, "{spans:#?}");
    assert_eq!(receive4[0].parent, "b7ad6b7169203331");
    for stage in ["before-invoke", "invoke", "after-invoke", "publish"] {
        let s = named(stage, trace4);
        assert_eq!(s.len(), 1, "{stage}: {spans:#?}");
        assert_eq!(s[0].parent, receive4[0].id, "{stage}");
    }
    assert_eq!(
        carried(&out4[0].user_properties, "traceparent"),
        vec![format!("00-{trace4}-{}-01", named("publish", trace4)[0].id)]
    );
    bridge.stop().await.unwrap();
}

/// The payload format indicator: a function's reply goes out marked as UTF-8
/// text; a payload marked UTF-8 that is not is dead-lettered with the reason,
/// not invoked; unmarked bytes are just bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_format_indicator_is_honoured() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: u, topic: "pf/+", function: f, republish: {topic: "pf-out/{1}"}, dead_letter: "pf-dead/{1}"}"#,
    );
    let client = Client::start(broker.port(), &["pf-out/+", "pf-dead/+"]).await;
    let bridge = start_in_process(&cfg).await;
    let utf8 = || rumqttc::v5::mqttbytes::v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    client.publish_with("pf/bad", b"caf\xe9", utf8());
    client.publish_with("pf/good", "café".as_bytes(), utf8());
    client.publish("pf/bytes", b"\xff\x00\xfe", Vec::new());
    let dead = client.wait_for_n("pf-dead/bad", 1, LONG).await;
    let envelope: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(
        envelope["error_kind"], "payload-format-invalid",
        "{envelope}"
    );
    assert!(dead[0].utf8, "a dead letter is JSON text");
    let good = client.wait_for_n("pf-out/good", 1, LONG).await;
    assert_eq!(good[0].payload, "café".as_bytes());
    assert!(good[0].utf8, "the function's reply is text");
    client.wait_for_n("pf-out/bytes", 1, LONG).await;
    // The bad one never reached the gateway; the other two did.
    let inputs = gw.answered_inputs();
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    assert!(!inputs.contains(b"caf\xe9".as_slice()));
    bridge.stop().await.unwrap();
}

/// Contract 0.2.0: a plugin sees a request's response topic, correlation
/// data, content type and payload format, and sets the content type, payload
/// format and correlation data of what it publishes; a reply keeps the
/// request's unless the plugin sets its own. Components built against 0.1.0
/// (py-fanout) still run, their results without those properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_and_set_mqtt5_properties_and_0_1_0_plugins_still_run() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let mut cfg = v5(
        &broker,
        &gw,
        &format!(
            r#"{{name: h, topic: "pl/+", function: f, republish: {{topic: "pl-out/{{1}}"}}, transform: {{component: {:?}}}}}"#,
            common::dist("hostile").display().to_string()
        ),
    )
    .route(&format!(
        r#"{{name: py, topic: "dev/+/state", function: f, republish: {{allow: ["metrics/#"]}}, transform: {{component: {:?}, config: {{prefix: metrics}}}}}}"#,
        common::dist("py-fanout").display().to_string()
    ));
    cfg.extra = format!(
        "plugins:\n  cache_dir: {:?}\n",
        common::plugins::shared_cache_dir().display().to_string()
    );
    let client = Client::start(broker.port(), &["pl-out/+", "metrics/#", "resp/+"]).await;
    let bridge = start_in_process(&cfg).await;

    // The pre hook describes what it saw; the gateway echoes it.
    client.publish_with(
        "pl/describe",
        b"describe",
        PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("resp/describe".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
            ..Default::default()
        },
    );
    let seen = client.wait_for_n("resp/describe", 1, LONG).await;
    let seen: serde_json::Value = serde_json::from_slice(&seen[0].payload).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({"content_type": "text/plain", "utf8": true, "response_topic": "resp/describe", "correlation_data": "corr-1"})
    );

    // The gateway replies `typed:...` / `correlate:...` (echo), the post hook
    // turns it into a result with those properties.
    let request = |topic: &str, corr: &'static [u8]| PublishProperties {
        content_type: Some("application/x-request".into()),
        response_topic: Some(topic.into()),
        correlation_data: Some(bytes::Bytes::from_static(corr)),
        ..Default::default()
    };
    client.publish_with("pl/1", b"typed:text/csv", request("resp/typed", b"c-typed"));
    let typed = client.wait_for_n("resp/typed", 1, LONG).await;
    assert_eq!(typed[0].payload, b"typed");
    assert_eq!(
        typed[0].content_type.as_deref(),
        Some("text/csv"),
        "the plugin's"
    );
    assert!(typed[0].utf8);
    assert_eq!(
        typed[0].correlation_data.as_deref(),
        Some(&b"c-typed"[..]),
        "the request's"
    );
    client.publish_with("pl/2", b"correlate:mine", request("resp/corr", b"c-theirs"));
    let corr = client.wait_for_n("resp/corr", 1, LONG).await;
    assert_eq!(
        corr[0].correlation_data.as_deref(),
        Some(&b"mine"[..]),
        "the plugin's"
    );
    assert_eq!(
        corr[0].content_type.as_deref(),
        Some("application/x-request"),
        "the request's"
    );
    assert!(!corr[0].utf8);
    // Republished results carry the plugin's properties too.
    let out = client.wait_for_n("pl-out/1", 1, LONG).await;
    assert_eq!(out[0].content_type.as_deref(), Some("text/csv"));

    // A 0.1.0 component: runs, fans out, results without content type.
    client.publish("dev/d9/state", br#"{"t": 21.5}"#, Vec::new());
    let fanned = client.wait_for_n("metrics/d9/t", 1, LONG).await;
    assert_eq!(fanned[0].payload, b"21.5");
    assert_eq!(fanned[0].content_type, None);
    bridge.stop().await.unwrap();
}

/// `republish.user_properties` are added to every result of the route, after
/// the ones the result keeps from its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sets_user_properties_on_its_results() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: up, topic: "up/+", function: f, republish: {topic: "up-out/{1}", user_properties: [[source, fxbridge], [site, edge-7]]}}"#,
    );
    let client = Client::start(broker.port(), &["up-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    client.publish("up/1", b"x", vec![("unit".to_string(), "C".to_string())]);
    let out = client.wait_for_n("up-out/1", 1, LONG).await;
    let plain: Vec<(String, String)> = out[0]
        .user_properties
        .iter()
        .filter(|(k, _)| k != "traceparent")
        .cloned()
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        plain,
        pairs(&[("unit", "C"), ("source", "fxbridge"), ("site", "edge-7")])
    );
    bridge.stop().await.unwrap();
}

/// A broker that announces a Maximum QoS of 1 (mosquitto `max_qos 1`) would
/// disconnect a client that publishes at QoS 2: results of a route that
/// republishes at QoS 2 go out at QoS 1 instead, and arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_maximum_qos_is_respected() {
    let broker = Mosquitto::start_with("max_qos 1");
    let gw = TestGateway::start().await;
    let cfg = v5(
        &broker,
        &gw,
        r#"{name: q, topic: "mq/+", function: f, republish: {topic: "mq-out/{1}", qos: 2}}"#,
    );
    let client = Client::start(broker.port(), &["mq-out/+"]).await;
    let bridge = start_in_process(&cfg).await;
    for i in 0..5 {
        client.publish(&format!("mq/{i}"), b"x", Vec::new());
    }
    for i in 0..5 {
        client.wait_for_n(&format!("mq-out/{i}"), 1, LONG).await;
    }
    common::wait::wait_until(LONG, "5 sources acknowledged", || {
        bridge.metrics.totals() == (5, 5)
    })
    .await;
    bridge.stop().await.unwrap();
    assert!(
        !broker.log().contains("QoS not supported")
            && !broker.log().contains("disconnected due to"),
        "{}",
        broker.log()
    );
}
