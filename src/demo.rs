//! `fxbridge demo`: the whole path on one machine with nothing else installed,
//! WebAssembly transform included.
//!
//! It starts the embedded MQTT broker and an in-process stand-in for the
//! OpenFx gateway (an echo function), runs the bridge with one route whose
//! transform is the `sensor-normalize` plugin (units to °C, a per-device
//! calibration, a deadband, a range check), publishes a scripted set of
//! sensor readings as a device would, and prints what happens to each: the
//! result (which carries the plugin's canonical document, echoed back by the
//! function), a skip inside the deadband, or a dead letter with its reason.
//! Everything goes over real MQTT and real gRPC on 127.0.0.1, and the status
//! page is served while it runs. It is a demo, not a deployment.
//!
//! The plugin is built into the binary (`plugins/prebuilt/`, built from
//! `plugins/sensor-normalize` by `plugins/prebuilt/build.sh`, which CI runs
//! to check the bytes are reproducible), so the first command on a fresh
//! machine needs no WebAssembly toolchain.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::gateway::standin::{self, Echo};
use crate::metrics::Metrics;

/// The sensor-normalize component the demo runs.
pub const PLUGIN: &[u8] = include_bytes!("../plugins/prebuilt/sensor-normalize.wasm");

/// What a reading should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Result,
    Skipped,
    DeadLetter,
}

/// The script: (device, payload, expected outcome, what the plugin does).
const READINGS: [(&str, &str, Outcome, &str); 6] = [
    (
        "dev-1",
        r#"{"temp":98.6,"unit":"F"}"#,
        Outcome::Result,
        "°F to °C",
    ),
    (
        "dev-1",
        r#"{"temp":37.2}"#,
        Outcome::Skipped,
        "within the 0.5 °C deadband of dev-1's last value",
    ),
    (
        "dev-2",
        r#"{"temp":21.5,"humidity":0.45,"humidity_unit":"fraction"}"#,
        Outcome::Result,
        "dev-2's calibration (-0.5 °C), humidity to %",
    ),
    (
        "dev-1",
        r#"{"temp":38.1,"rssi":-71}"#,
        Outcome::Result,
        "unknown fields dropped",
    ),
    (
        "dev-3",
        r#"{"temp":300.15,"unit":"K"}"#,
        Outcome::Result,
        "K to °C",
    ),
    (
        "dev-3",
        r#"{"temp":200,"unit":"F"}"#,
        Outcome::DeadLetter,
        "93.3 °C is out of range",
    ),
];

/// The demo's temporary directory (the plugin file), removed at the end.
struct DemoDir(std::path::PathBuf);

impl DemoDir {
    fn create() -> Result<DemoDir> {
        let dir = std::env::temp_dir().join(format!("fxbridge-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(DemoDir(dir))
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// The demo's configuration: what a bridge.yaml for it would say.
fn demo_config(broker_port: u16, gateway_port: u16, admin_port: u16, plugin: &Path) -> String {
    format!(
        r#"
broker:
  listen: 127.0.0.1:{broker_port}
mqtt:
  client_id: fxbridge-demo
gateway:
  url: http://127.0.0.1:{gateway_port}
  timeout: 2s
admin:
  listen: 127.0.0.1:{admin_port}
routes:
  - name: temperature
    topic: sensors/+/temperature
    function: echo
    republish:
      topic: results/{{1}}/temperature
    transform:
      component: {plugin:?}
      config:
        deadband: {{temperature: 0.5}}
        ranges: {{temperature: {{min: -40, max: 85}}}}
        device_calibration:
          dev-2: {{temperature: {{offset: -0.5}}}}
"#,
        plugin = plugin.display().to_string()
    )
}

/// What the consumer client sees.
enum Seen {
    Subscribed,
    Message(String, String),
}

/// A consumer of results and dead letters, as a separate MQTT client.
fn consumer(port: u16) -> (mpsc::UnboundedReceiver<Seen>, CancellationToken) {
    let mut opts = rumqttc::MqttOptions::new("demo-consumer", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let done = stop.clone();
    tokio::spawn(async move {
        let _ =
            client
                .subscribe_many(["results/#", "fxbridge/dead-letter/#"].map(|t| {
                    rumqttc::SubscribeFilter::new(t.to_string(), rumqttc::QoS::AtLeastOnce)
                }))
                .await;
        loop {
            let ev = tokio::select! {
                () = done.cancelled() => break,
                ev = events.poll() => ev,
            };
            let seen = match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => Seen::Subscribed,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    Seen::Message(p.topic, String::from_utf8_lossy(&p.payload).into_owned())
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("demo consumer: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
        let _ = client.disconnect().await;
    });
    (rx, stop)
}

/// Runs the demo; with `stay`, keeps the bridge and its status page running
/// afterwards until SIGINT or SIGTERM.
pub async fn run(stay: bool) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "fxbridge demo: embedded MQTT broker, stand-in gateway (echo) and a WebAssembly transform."
    );
    println!("Not an OpenFx deployment.\n");
    let (broker_port, gateway_port, admin_port) = (free_port()?, free_port()?, free_port()?);
    let dir = DemoDir::create()?;
    let plugin_path = dir.0.join("sensor-normalize.wasm");
    std::fs::write(&plugin_path, PLUGIN)
        .with_context(|| format!("cannot write {}", plugin_path.display()))?;

    let stop_gateway = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", gateway_port))
        .await
        .context("stand-in gateway cannot listen")?;
    let echo = Echo {
        prefix: String::new(),
    };
    let gw_stop = stop_gateway.clone();
    let gateway =
        tokio::spawn(
            async move { standin::serve(listener, echo, gw_stop.cancelled_owned()).await },
        );

    let yaml = demo_config(broker_port, gateway_port, admin_port, &plugin_path);
    let config = Config::parse(&yaml, "demo.yaml", &dir.0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = Metrics::new();
    let bridge = Bridge::start(config, std::sync::Arc::clone(&metrics)).await?;
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(PLUGIN))
    };
    println!("route:   sensors/+/temperature -> sensor-normalize.wasm -> Invoke(echo) -> sensor-normalize.wasm -> results/{{1}}/temperature");
    println!(
        "plugin:  sensor-normalize ({} KB, sha256 {}): units to °C, calibration, deadband 0.5 °C, range -40..85 °C",
        PLUGIN.len() / 1024,
        &sha[..12]
    );
    println!("broker:  mqtt://127.0.0.1:{broker_port} (embedded)");
    println!("gateway: http://127.0.0.1:{gateway_port} (stand-in, pb.FxGateway/Invoke, echoes its input)");
    println!(
        "status:  http://127.0.0.1:{admin_port}/  (the status page{})\n",
        if stay {
            "; Ctrl-C stops the demo"
        } else {
            ", while the demo runs; --stay keeps it up"
        }
    );
    tokio::time::timeout(Duration::from_secs(10), bridge.metrics.wait_ready())
        .await
        .context("the bridge did not subscribe within 10 s")?;

    let (mut seen, stop_consumer) = consumer(broker_port);
    let mut device = {
        let mut opts = rumqttc::MqttOptions::new("demo-device", "127.0.0.1", broker_port);
        opts.set_keep_alive(Duration::from_secs(10));
        rumqttc::AsyncClient::new(opts, 16)
    };
    let device_events = tokio::spawn(async move {
        // The device's own acknowledgements; its errors are the consumer's too.
        while device.1.poll().await.is_ok() {}
    });
    let outcome = async {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
                Ok(Some(Seen::Subscribed)) => break,
                Ok(Some(Seen::Message(..))) => {}
                _ => bail!("the demo consumer could not subscribe"),
            }
        }
        let route = metrics.route("temperature");
        let mut matched = 0;
        for (i, (dev, payload, expected, what)) in READINGS.iter().enumerate() {
            let skipped_before = route.skipped.load(Relaxed);
            println!(
                "{}. {dev} sends   sensors/{dev}/temperature  {payload}",
                i + 1
            );
            device
                .0
                .publish(
                    format!("sensors/{dev}/temperature"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.to_string(),
                )
                .await
                .context("demo publish")?;
            let got =
                wait_outcome(&mut seen, || route.skipped.load(Relaxed) > skipped_before).await;
            let label = match &got {
                Some((Outcome::Result, topic, body)) => format!("   result     {topic}  {body}"),
                Some((Outcome::Skipped, ..)) => {
                    "   skipped    by the plugin; nothing invoked, nothing published".to_string()
                }
                Some((Outcome::DeadLetter, topic, body)) => {
                    format!("   dead letter {topic}  {}", dead_letter_reason(body))
                }
                None => "   nothing within 10 s".to_string(),
            };
            println!("{label}");
            println!("   ({what})\n");
            if got.as_ref().map(|g| g.0) == Some(*expected) {
                matched += 1;
            }
        }
        Ok(matched)
    }
    .await;
    let matched = match outcome {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: {e:#}");
            0
        }
    };
    println!(
        "{matched} of {} readings came out as expected (the results carry the plugin's canonical document, echoed back by the function).",
        READINGS.len()
    );
    if stay {
        println!("The bridge keeps running: status page at http://127.0.0.1:{admin_port}/ ; Ctrl-C stops it.");
        crate::cli::stop_signal().await;
    }
    stop_consumer.cancel();
    device_events.abort();
    bridge.stop().await?;
    stop_gateway.cancel();
    let _ = gateway.await;
    Ok(if matched == READINGS.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits (10 s at most) for a reading's result or dead letter, or for the
/// route's skip counter to move.
async fn wait_outcome(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    skipped: impl Fn() -> bool,
) -> Option<(Outcome, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if skipped() {
            return Some((Outcome::Skipped, String::new(), String::new()));
        }
        let next = tokio::time::timeout(Duration::from_millis(20), seen.recv()).await;
        match next {
            Ok(Some(Seen::Message(topic, body))) => {
                let kind = if topic.starts_with("fxbridge/dead-letter/") {
                    Outcome::DeadLetter
                } else {
                    Outcome::Result
                };
                return Some((kind, topic, body));
            }
            Ok(Some(Seen::Subscribed)) | Err(_) => {}
            Ok(None) => return None,
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// The `error_kind` and `error` of a dead letter's envelope.
fn dead_letter_reason(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => format!(
            "{}: {}",
            v["error_kind"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or(body)
        ),
        Err(_) => body.to_string(),
    }
}
