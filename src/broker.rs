//! The embedded MQTT broker (rumqttd as a library), for single-binary edge
//! devices and for `fxbridge demo`.
//!
//! rumqttd runs its own threads and offers no way to stop them; the broker lives
//! until the process exits. It keeps sessions in memory only, so a restart of
//! the process loses what was queued: devices that need messages kept across a
//! restart should use an external broker with persistence (mosquitto).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::EmbeddedBrokerConfig;

/// Starts the broker and waits (up to five seconds) until it accepts connections.
pub async fn start(cfg: &EmbeddedBrokerConfig, max_payload: usize) -> Result<()> {
    // rumqttd logs a bind failure and carries on; check the address first so a
    // taken port is an error here.
    std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("embedded broker cannot listen on {}", cfg.listen))?;
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_payload,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "fxbridge-embedded".to_string(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("embedded".to_string(), server.clone())])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker thread")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(cfg.listen).await.is_ok() {
            tracing::info!(listen = %cfg.listen, "embedded broker ready");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the embedded broker did not start listening on {}",
                cfg.listen
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
