//! `fxbridge demo`: the whole path on one machine with nothing else installed.
//!
//! It starts the embedded MQTT broker and an in-process stand-in for the OpenFx
//! gateway (an echo function that answers like OpenFx's Go template, `[Go] ` +
//! input), runs the bridge with one route, publishes sample sensor readings as a
//! device would, and prints what comes back on the result topic. Everything goes
//! over real MQTT and real gRPC on 127.0.0.1. It is a demo, not a deployment.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::gateway::standin::{self, Echo};
use crate::metrics::Metrics;

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// The demo's configuration: what a bridge.yaml for it would say.
fn demo_config(broker_port: u16, gateway_port: u16) -> String {
    format!(
        r#"
broker:
  listen: 127.0.0.1:{broker_port}
mqtt:
  client_id: fxbridge-demo
gateway:
  url: http://127.0.0.1:{gateway_port}
  timeout: 2s
routes:
  - name: temperature
    topic: sensors/+/temperature
    function: echo
    republish:
      topic: results/{{1}}/temperature
"#
    )
}

/// Runs the demo with `messages` sample readings.
pub async fn run(messages: usize) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("fxbridge demo: embedded MQTT broker + stand-in gateway (echo). Not an OpenFx deployment.\n");
    let (broker_port, gateway_port) = (free_port()?, free_port()?);

    let stop_gateway = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", gateway_port))
        .await
        .context("stand-in gateway cannot listen")?;
    let echo = Echo {
        prefix: "[Go] ".to_string(),
    };
    let gw_stop = stop_gateway.clone();
    let gateway =
        tokio::spawn(
            async move { standin::serve(listener, echo, gw_stop.cancelled_owned()).await },
        );

    let yaml = demo_config(broker_port, gateway_port);
    let config =
        Config::parse(&yaml, "demo.yaml", Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("route:   sensors/+/temperature -> Invoke(echo) -> results/{{1}}/temperature");
    println!("broker:  mqtt://127.0.0.1:{broker_port} (embedded)");
    println!("gateway: http://127.0.0.1:{gateway_port} (stand-in, pb.FxGateway/Invoke)\n");
    let bridge = Bridge::start(config, Metrics::new()).await?;
    tokio::time::timeout(Duration::from_secs(10), bridge.metrics.wait_ready())
        .await
        .context("the bridge did not subscribe within 10 s")?;

    // A device and a consumer, as separate MQTT clients.
    let mut opts = rumqttc::MqttOptions::new("demo-device", "127.0.0.1", broker_port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    client
        .subscribe("results/#", rumqttc::QoS::AtLeastOnce)
        .await
        .context("demo subscribe")?;

    let mut results = BTreeMap::new();
    let mut published = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while results.len() < messages {
        let ev = tokio::time::timeout_at(deadline, events.poll()).await;
        match ev {
            Err(_) => break,
            Ok(Err(e)) => {
                eprintln!("demo client: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) if !published => {
                published = true;
                for i in 0..messages {
                    let device = format!("dev-{}", i % 3 + 1);
                    let reading = format!(
                        r#"{{"device":"{device}","seq":{i},"celsius":{:.1}}}"#,
                        20.0 + i as f64 * 0.7
                    );
                    println!("device   -> sensors/{device}/temperature  {reading}");
                    client
                        .publish(
                            format!("sensors/{device}/temperature"),
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            reading,
                        )
                        .await
                        .context("demo publish")?;
                }
                println!();
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                println!("consumer <- {}  {}", p.topic, text);
                results.insert(text, p.topic);
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    bridge.stop().await?;
    stop_gateway.cancel();
    let _ = gateway.await;
    println!(
        "\n{} of {messages} readings came back through the bridge.",
        results.len()
    );
    Ok(if results.len() == messages {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
