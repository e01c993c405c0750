//! The RabbitMQ node already running on this machine (127.0.0.1:5672, shared,
//! never restarted here) with its MQTT plugin: `scripts/rabbitmq-mqtt.sh`
//! starts the plugin's listener on a loopback port if it is not running yet
//! (idempotent) and prints the port.
//!
//! The node is shared: tests use their own topic prefix and client ids
//! ([`super::wait::unique`], which holds the process id), close only their
//! own connections, and drop the sessions (durable queues) they created.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

/// The MQTT port of the running RabbitMQ node, set up once per process by
/// `scripts/rabbitmq-mqtt.sh`. Fails, never skips, when RabbitMQ is missing.
pub fn mqtt_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-mqtt.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run scripts/rabbitmq-mqtt.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/rabbitmq-mqtt.sh failed (a RabbitMQ node must run on 127.0.0.1:5672):\n{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .trim()
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("scripts/rabbitmq-mqtt.sh printed no port: {stdout:?}"))
    })
}

/// `rabbitmqctl -q eval <expr>`: its output, trimmed.
pub fn eval(expr: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "eval", expr])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl eval failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The version of the running node (e.g. `3.10.8`).
pub fn version() -> String {
    eval("rabbit_misc:version().").trim_matches('"').to_string()
}

/// Closes the MQTT connections whose client id starts with one of `prefixes`
/// (and no other: the node is shared), the way the broker closes a connection
/// itself; returns how many. RabbitMQ 3.10 keeps MQTT client ids in
/// `rabbit_mqtt_collector` (`rabbitmqctl list_connections` does not list MQTT
/// connections there).
pub fn close_connections(prefixes: &[&str]) -> usize {
    let expr = format!(
        "length([rabbit_mqtt_reader:close_connection(P, \"fxbridge test: forced disconnect\") \
         || {{Id, P}} <- rabbit_mqtt_collector:list(), {}]).",
        any_prefix(prefixes)
    );
    let out = eval(&expr);
    out.parse()
        .unwrap_or_else(|_| panic!("close_connections: unexpected answer {out:?}"))
}

/// How many MQTT connections with a client id starting with one of
/// `prefixes` the node has.
pub fn connections(prefixes: &[&str]) -> usize {
    let expr = format!(
        "length([P || {{Id, P}} <- rabbit_mqtt_collector:list(), {}]).",
        any_prefix(prefixes)
    );
    let out = eval(&expr);
    out.parse()
        .unwrap_or_else(|_| panic!("connections: unexpected answer {out:?}"))
}

/// An Erlang condition on `Id`: it starts with one of `prefixes`.
fn any_prefix(prefixes: &[&str]) -> String {
    let list: Vec<String> = prefixes
        .iter()
        .map(|p| {
            assert!(
                p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "unsafe prefix {p:?}"
            );
            format!("\"{p}\"")
        })
        .collect();
    format!(
        "lists:any(fun(Pre) -> lists:prefix(Pre, Id) end, [{}])",
        list.join(", ")
    )
}

/// Ends the persistent sessions of `client_ids` (their durable queues) by
/// connecting once with a clean session, as MQTT 3.1.1 defines it. Best effort.
pub async fn forget_sessions(port: u16, client_ids: &[String]) {
    for id in client_ids {
        let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
        opts.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 10);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let _ = client.try_disconnect();
            while el.poll().await.is_ok() {}
        })
        .await;
    }
}
