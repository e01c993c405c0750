//! WebAssembly transforms end to end: real plugins from `plugins/dist` (built
//! by `bash plugins/build.sh`), a private mosquitto, the test gateway, and the
//! bridge in process.
//!
//! - sensor-normalize (Rust): the pre hook reshapes the input, a reading inside
//!   the deadband is skipped (acknowledged, not invoked), and the post hook
//!   republishes to a topic computed from the device id;
//! - py-fanout (Python): one reply fans out to one message per metric;
//! - js-csv (JavaScript): CSV in, JSON to the function, CSV back;
//! - hostile: every way a plugin can misbehave dead-letters that message with
//!   the reason, the next message on the same route succeeds, and another
//!   route is unaffected.

mod common;

use std::time::Duration;

use common::{publish_all, start_in_process, BridgeConfig, Collector, Mosquitto, TestGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn dist(name: &str) -> String {
    common::dist(name).display().to_string()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(bytes)))
}

/// Waits until every received message has been acknowledged.
async fn wait_all_acked(bridge: &fxbridge::bridge::Bridge) {
    common::wait_until(WAIT, "every received message acknowledged", || {
        let (received, acked) = bridge.metrics.totals();
        received > 0 && received == acked
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_normalize_reshapes_skips_inside_the_deadband_and_replies_per_device() {
    let broker = Mosquitto::start();
    let gateway = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gateway.url()).route(&format!(
        "{{name: sensors, topic: \"sensors/+/temp\", function: normalize, ordering: per-topic, \
          republish: {{allow: [\"results/+\"]}}, \
          transform: {{component: \"{}\", config: {{reply_topic: \"results/{{device}}\", \
          deadband: {{temperature: 0.5}}}}}}}}",
        dist("sensor-normalize.wasm")
    ));
    let bridge = start_in_process(&cfg).await;
    let results = Collector::start(broker.port(), &["results/#", "unused/#"]).await;

    let t = "sensors/dev-1/temp".to_string();
    publish_all(
        broker.port(),
        &[
            (
                t.clone(),
                br#"{"temp": 98.6, "unit": "F", "ts": 1}"#.to_vec(),
            ),
            // 37.2 C is within 0.5 of 37.0: skipped.
            (
                t.clone(),
                br#"{"temp": 37.2, "unit": "C", "ts": 2}"#.to_vec(),
            ),
            (
                t.clone(),
                br#"{"temp": 38.0, "unit": "C", "ts": 3}"#.to_vec(),
            ),
        ],
    )
    .await;
    common::wait_until(WAIT, "two results on results/dev-1", || {
        results.on("results/dev-1").len() == 2
    })
    .await;
    wait_all_acked(&bridge).await;

    let inputs: Vec<Value> = gateway
        .invocations()
        .iter()
        .map(|i| json_of(&i.input))
        .collect();
    assert_eq!(
        inputs,
        vec![
            json!({"device": "dev-1", "ts": 1, "temperature_c": 37.0}),
            json!({"device": "dev-1", "ts": 3, "temperature_c": 38.0}),
        ],
        "the pre hook reshaped the input and skipped the reading inside the deadband"
    );
    let got: Vec<Value> = results
        .on("results/dev-1")
        .iter()
        .map(|m| json_of(&m.payload))
        .collect();
    assert_eq!(got[0]["device"], "dev-1");
    assert_eq!(got[0]["function"], "normalize");
    assert_eq!(
        got[0]["result"], inputs[0],
        "the post hook wrapped the function's reply"
    );
    assert_eq!(got[1]["result"], inputs[1]);
    assert!(
        results.on("unused/dev-1").is_empty(),
        "the post hook chose the topic"
    );
    let (received, acked) = bridge.metrics.totals();
    assert_eq!(
        (received, acked),
        (3, 3),
        "the skipped reading was acknowledged too"
    );
    bridge.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_fanout_turns_one_reply_into_a_message_per_metric() {
    let broker = Mosquitto::start();
    let gateway = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gateway.url()).route(&format!(
        "{{name: fanout, topic: \"dev/+/state\", function: echo, \
          republish: {{allow: [\"metrics/#\"]}}, \
          transform: {{component: \"{}\", config: {{prefix: metrics}}}}}}",
        dist("py-fanout.wasm")
    ));
    let bridge = start_in_process(&cfg).await;
    let out = Collector::start(broker.port(), &["metrics/#"]).await;
    publish_all(
        broker.port(),
        &[(
            "dev/d7/state".into(),
            br#"{"temp": 21.5, "hum": 40}"#.to_vec(),
        )],
    )
    .await;
    out.wait_for("metrics/d7/temp", b"21.5", WAIT).await;
    out.wait_for("metrics/d7/hum", b"40", WAIT).await;
    let invoked = gateway.invocations();
    assert_eq!(invoked.len(), 1);
    assert_eq!(
        json_of(&invoked[0].input),
        json!({"device": "d7", "temp": 21.5, "hum": 40}),
        "the Python pre hook added the device id from the topic"
    );
    wait_all_acked(&bridge).await;
    assert_eq!(out.count(), 2, "exactly one message per metric");
    bridge.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_csv_turns_csv_into_json_and_the_reply_back_into_csv() {
    let broker = Mosquitto::start();
    let gateway = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gateway.url()).route(&format!(
        "{{name: csv, topic: \"csv/+\", function: echo, republish: {{topic: \"csv-out/{{1}}\"}}, \
          transform: {{component: \"{}\", config: {{reply_columns: [device, temp]}}}}}}",
        dist("js-csv.wasm")
    ));
    let bridge = start_in_process(&cfg).await;
    let out = Collector::start(broker.port(), &["csv-out/#"]).await;
    publish_all(
        broker.port(),
        &[("csv/dev-7".into(), b"dev-7,21.5,C".to_vec())],
    )
    .await;
    out.wait_for("csv-out/dev-7", b"dev-7,21.5", WAIT).await;
    assert_eq!(
        json_of(&gateway.invocations()[0].input),
        json!({"device": "dev-7", "temp": 21.5, "unit": "C"}),
        "the JavaScript pre hook parsed the CSV line"
    );
    bridge.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_plugin_dead_letters_its_message_and_the_bridge_carries_on() {
    let broker = Mosquitto::start();
    let gateway = TestGateway::start().await;
    let cfg = BridgeConfig::new(broker.port(), &gateway.url())
        .route(&format!(
            "{{name: hostile, topic: \"h/+\", function: echo, ordering: per-topic, \
              republish: {{topic: \"h-out/{{1}}\"}}, \
              transform: {{component: \"{}\", limits: {{timeout: 1s, memory: 32MiB}}}}}}",
            dist("hostile.wasm")
        ))
        .route("{name: plain, topic: \"g/+\", function: echo, republish: {topic: \"g-out/{1}\"}}");
    let bridge = start_in_process(&cfg).await;
    let dead = Collector::start(broker.port(), &["fxbridge/dead-letter/#"]).await;
    let out = Collector::start(broker.port(), &["h-out/#", "g-out/#"]).await;

    // (command, expected plugin_error kind, text the error must contain)
    let cases = [
        ("loop", "timeout", ""),
        ("sleep", "timeout", ""),
        ("alloc", "memory_limit", ""),
        ("recurse", "trap", ""),
        ("deep", "trap", "call stack exhausted"),
        ("unreachable", "trap", "unreachable"),
        ("panic", "trap", ""),
        ("fail", "guest_error", "asked to fail"),
        ("file", "guest_error", "file access denied"),
        ("socket", "guest_error", "socket access denied"),
    ];
    for (i, (command, kind, text)) in cases.iter().enumerate() {
        let topic = format!("h/{command}");
        let good = format!("good-after-{command}");
        publish_all(
            broker.port(),
            &[
                (topic.clone(), command.as_bytes().to_vec()),
                (topic.clone(), good.clone().into_bytes()),
                (format!("g/{i}"), good.clone().into_bytes()),
            ],
        )
        .await;
        // The next message on the same route and topic succeeds on a fresh instance.
        out.wait_for(&format!("h-out/{command}"), good.as_bytes(), WAIT)
            .await;
        out.wait_for(&format!("g-out/{i}"), good.as_bytes(), WAIT)
            .await;
        common::wait_until(WAIT, "the dead letter", || dead.count() == i + 1).await;
        let letter = json_of(&dead.messages()[i].payload);
        assert_eq!(letter["route"], "hostile", "{letter}");
        assert_eq!(letter["topic"], topic.as_str(), "{letter}");
        assert_eq!(
            letter["error_kind"], "transform-before",
            "{command}: {letter}"
        );
        assert_eq!(letter["plugin_error"], *kind, "{command}: {letter}");
        let error = letter["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(text),
            "{command}: {error:?} should mention {text:?}"
        );
        assert_eq!(
            gateway.calls_with(command.as_bytes()),
            0,
            "{command}: a failed pre hook never invokes"
        );
    }
    wait_all_acked(&bridge).await;
    bridge.stop().await.expect("stop");
}
