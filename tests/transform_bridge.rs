//! End to end through the bridge (embedded broker, stand-in gateway, real
//! MQTT and gRPC on 127.0.0.1): a route's plugin loads at start, transforms a
//! message before and after Invoke, and a hostile message is dead-lettered with
//! its plugin failure kind while the route keeps working.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dist;
use fxbridge::bridge::Bridge;
use fxbridge::config::Config;
use fxbridge::gateway::standin::{self, Echo};
use fxbridge::metrics::Metrics;
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_in_the_bridge_and_failures_are_dead_lettered() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (broker_port, gateway_port) = (free_port(), free_port());
    let stop_gateway = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", gateway_port))
        .await
        .unwrap();
    let gw_stop = stop_gateway.clone();
    let gateway = tokio::spawn(async move {
        standin::serve(
            listener,
            Echo {
                prefix: String::new(),
            },
            gw_stop.cancelled_owned(),
        )
        .await
    });
    let cache = common::plugins::shared_cache_dir();
    let yaml = format!(
        r#"
broker:
  listen: 127.0.0.1:{broker_port}
mqtt:
  client_id: fxbridge-transform-test
gateway:
  url: http://127.0.0.1:{gateway_port}
  timeout: 2s
plugins:
  cache_dir: {cache}
routes:
  - name: sensors
    topic: sensors/+/temp
    function: normalize
    republish: {{allow: ["results/+"]}}
    transform:
      component: {sensor}
      config: {{reply_topic: "results/{{device}}"}}
  - name: hostile
    topic: hostile/in
    function: echo
    republish: {{topic: "hostile/out"}}
    transform:
      component: {hostile}
      limits: {{timeout: 100ms}}
"#,
        cache = cache.display(),
        sensor = dist("sensor-normalize").display(),
        hostile = dist("hostile").display(),
    );
    let config =
        Config::parse(&yaml, "test.yaml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new();
    let bridge = Bridge::start(config, metrics.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), bridge.metrics.wait_ready())
        .await
        .expect("bridge ready");

    let mut opts = rumqttc::MqttOptions::new("transform-test-client", "127.0.0.1", broker_port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    for filter in ["results/#", "hostile/out", "fxbridge/dead-letter/#"] {
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let mut got: Vec<(String, String)> = Vec::new();
    let mut subacks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 3 {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => panic!("client: {e}"),
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                subacks += 1;
                if subacks == 3 {
                    let q = rumqttc::QoS::AtLeastOnce;
                    client
                        .publish(
                            "sensors/dev-1/temp",
                            q,
                            false,
                            r#"{"temp": 98.6, "unit": "F"}"#,
                        )
                        .await
                        .unwrap();
                    client
                        .publish("hostile/in", q, false, "loop")
                        .await
                        .unwrap();
                    client
                        .publish("hostile/in", q, false, "after the loop")
                        .await
                        .unwrap();
                }
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    let rendered = metrics.render();
    bridge.stop().await.unwrap();
    stop_gateway.cancel();
    let _ = gateway.await;

    let find = |topic: &str| got.iter().find(|(t, _)| t == topic).map(|(_, p)| p.clone());
    let result = find("results/dev-1").unwrap_or_else(|| panic!("no result: {got:?}"));
    let v: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(v["device"], "dev-1", "{result}");
    assert_eq!(v["result"]["temperature_c"], 37.0, "{result}");
    let dead =
        find("fxbridge/dead-letter/hostile").unwrap_or_else(|| panic!("no dead letter: {got:?}"));
    let d: serde_json::Value = serde_json::from_str(&dead).unwrap();
    assert_eq!(d["plugin_error"], "timeout", "{dead}");
    assert_eq!(
        find("hostile/out").as_deref(),
        Some("after the loop"),
        "{got:?}"
    );
    assert!(
        rendered.contains(r#"fxbridge_plugin_errors_total{route="hostile",kind="timeout"} 1"#),
        "{rendered}"
    );
}
