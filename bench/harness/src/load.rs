//! The load clients: a publisher (closed loop with a bounded window, or open
//! loop at a fixed rate) and a collector of the results, both rumqttc clients.
//!
//! Every published payload carries a marker `~<topic>.<seq>.<ns>~`: the topic
//! index, the message's sequence number within its topic and the send time in
//! nanoseconds since the run's epoch. The echo gateway returns the input as
//! `Msg`, and the plugin payloads put the marker in a field that the plugins
//! pass through, so the marker survives to the result: the collector gets the
//! end-to-end latency and checks per-topic order from it alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Notify;

/// How payloads look (what the route's plugin expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The marker, padded with `x` to the payload size.
    Plain,
    /// A sensor-normalize reading: `{"ts":"<marker>","temp":21.5}`.
    SensorJson,
    /// A js-csv line: `<marker>,21.5,C` (the marker is the device column).
    Csv,
    /// A py-fanout reading: `{"m":"<marker>","temp":21.5}` (two metrics).
    FanoutJson,
}

/// Builds message `seq` of topic `topic`, sent at `ns`.
pub fn payload(format: Format, size: usize, topic: u32, seq: u64, ns: u64) -> Vec<u8> {
    let marker = format!("~{topic}.{seq}.{ns}~");
    // Vary the reading so that no plugin's deadband drops it.
    let temp = 15.0 + (seq % 50) as f64 * 0.5;
    match format {
        Format::Plain => {
            let mut p = marker.into_bytes();
            if p.len() < size {
                p.resize(size, b'x');
            }
            p
        }
        Format::SensorJson => format!(r#"{{"ts":"{marker}","temp":{temp}}}"#).into_bytes(),
        Format::Csv => format!("{marker},{temp},C").into_bytes(),
        Format::FanoutJson => format!(r#"{{"m":"{marker}","temp":{temp}}}"#).into_bytes(),
    }
}

/// The marker in `p`, if any: (topic, seq, ns).
pub fn parse_marker(p: &[u8]) -> Option<(u32, u64, u64)> {
    let start = p.iter().position(|&b| b == b'~')? + 1;
    let len = p[start..].iter().position(|&b| b == b'~')?;
    let text = std::str::from_utf8(&p[start..start + len]).ok()?;
    let mut parts = text.split('.');
    let topic = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let ns = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((topic, seq, ns))
}

/// What the collector has seen.
#[derive(Debug, Default)]
pub struct Seen {
    /// Results carrying a marker (one per delivered input).
    pub delivered: u64,
    /// Every message on the result topics (fan-out included, probes included).
    pub messages: u64,
    /// A marker whose seq is not above the last one of its topic.
    pub order_violations: u64,
    /// Latencies in nanoseconds, one per marker.
    pub latencies: Vec<u64>,
    /// Last seq per topic index.
    last_seq: Vec<Option<u64>>,
    pub last_at: Option<Instant>,
}

/// Shared between the collector's task and the publisher.
pub struct Collector {
    pub seen: Mutex<Seen>,
    pub delivered: AtomicU64,
    pub progress: Notify,
    stop: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _client: AsyncClient,
}

/// Options of a broker connection for a load client.
fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    o.set_request_channel_capacity(1000);
    o.set_clean_session(true);
    o
}

impl Collector {
    /// Subscribes `filter` at `qos` and returns once the broker confirmed it.
    pub async fn start(
        port: u16,
        filter: &str,
        qos: QoS,
        epoch: Instant,
        topics: u32,
    ) -> Result<Arc<Collector>> {
        let (client, mut eventloop) = AsyncClient::new(options("bench-collector", port), 1000);
        let collector = Arc::new(Collector {
            seen: Mutex::new(Seen {
                last_seq: vec![None; topics as usize],
                ..Seen::default()
            }),
            delivered: AtomicU64::new(0),
            progress: Notify::new(),
            stop: AtomicBool::new(false),
            task: Mutex::new(None),
            _client: client.clone(),
        });
        client
            .subscribe(filter, qos)
            .await
            .context("collector cannot queue its subscription")?;
        let (suback_tx, suback_rx) = tokio::sync::oneshot::channel::<()>();
        let c = collector.clone();
        let task = tokio::spawn(async move {
            let mut suback = Some(suback_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => c.on_message(&p.payload, epoch),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = suback.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if c.stop.load(Relaxed) {
                            return;
                        }
                        tracing::warn!(error = %e, "collector connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        if let Ok(mut t) = collector.task.lock() {
            *t = Some(task);
        }
        tokio::time::timeout(Duration::from_secs(5), suback_rx)
            .await
            .context("collector: no SUBACK within 5 s")?
            .context("collector task ended before its SUBACK")?;
        Ok(collector)
    }

    fn on_message(&self, payload: &[u8], epoch: Instant) {
        let now = Instant::now();
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        seen.messages += 1;
        let Some((topic, seq, ns)) = parse_marker(payload) else {
            return;
        };
        let now_ns = u64::try_from(now.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        seen.latencies.push(now_ns.saturating_sub(ns));
        seen.delivered += 1;
        seen.last_at = Some(now);
        let mut violation = false;
        if let Some(last) = seen.last_seq.get_mut(topic as usize) {
            violation = matches!(*last, Some(l) if seq <= l);
            *last = Some(last.map_or(seq, |l| l.max(seq)));
        }
        if violation {
            seen.order_violations += 1;
        }
        drop(seen);
        self.delivered.fetch_add(1, Relaxed);
        self.progress.notify_one();
    }

    /// Clears what was seen (after a warm-up) .
    pub fn reset(&self, topics: u32) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Seen {
                last_seq: vec![None; topics as usize],
                ..Seen::default()
            };
        }
        self.delivered.store(0, Relaxed);
    }

    /// Waits until `expected` results arrived, or nothing new arrived for `idle`.
    pub async fn wait_for(&self, expected: u64, idle: Duration, cap: Duration) {
        let deadline = Instant::now() + cap;
        let mut last = self.delivered.load(Relaxed);
        let mut last_change = Instant::now();
        while Instant::now() < deadline {
            let now = self.delivered.load(Relaxed);
            if now >= expected {
                return;
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= idle {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), self.progress.notified()).await;
        }
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Relaxed);
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

/// Stops the collector's task when a scenario ends, on any path (its task holds
/// an `Arc` of the collector, so the collector itself is never dropped first).
pub struct CollectorGuard(pub Arc<Collector>);

impl std::ops::Deref for CollectorGuard {
    type Target = Collector;
    fn deref(&self) -> &Collector {
        &self.0
    }
}

impl Drop for CollectorGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A publishing client with its event loop polled in a task.
pub struct Publisher {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16) -> Result<Publisher> {
        Self::connect_as(port, "bench-publisher").await
    }

    /// A publisher with its own client id.
    pub async fn connect_as(port: u16, client_id: &str) -> Result<Publisher> {
        let (client, mut eventloop) = AsyncClient::new(options(client_id, port), 1000);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connack = Some(tx);
            for _ in 0..u64::MAX {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connack.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "publisher connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .context("publisher: no CONNACK within 5 s")?
            .context("publisher task ended before its CONNACK")?;
        Ok(Publisher { client, task })
    }

    pub async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .context("publisher request queue closed")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// At most `window` messages sent but not yet delivered.
    Closed { window: u64 },
    /// A fixed rate in messages per second, whatever comes back.
    Open { rate: u64 },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    pub n: u64,
    pub topics: u32,
    pub qos: QoS,
    pub size: usize,
    pub format: Format,
    pub mode: Mode,
    /// Topic of topic index `t`; one per topic index.
    pub topic_names: Vec<String>,
}

/// What the publisher did.
pub struct Sent {
    pub sent: u64,
    pub started: Instant,
    pub stalled: bool,
}

/// Publishes the load. Closed loop stops early when nothing is delivered for `stall`.
pub async fn publish(
    load: &Load,
    publisher: &Publisher,
    collector: &Collector,
    epoch: Instant,
    stall: Duration,
) -> Result<Sent> {
    if load.topic_names.len() != load.topics as usize || load.topics == 0 {
        bail!(
            "load has {} topic names for {} topics",
            load.topic_names.len(),
            load.topics
        );
    }
    let mut seqs = vec![0u64; load.topics as usize];
    let started = Instant::now();
    let mut ticker = match load.mode {
        Mode::Open { rate } => {
            let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
            Some(tokio::time::interval(period))
        }
        Mode::Closed { .. } => None,
    };
    let mut stalled = false;
    let mut sent = 0u64;
    for i in 0..load.n {
        match load.mode {
            Mode::Closed { window } => {
                let mut waited_since = None::<Instant>;
                let mut last_seen = collector.delivered.load(Relaxed);
                while sent.saturating_sub(collector.delivered.load(Relaxed)) >= window {
                    let now_seen = collector.delivered.load(Relaxed);
                    if now_seen != last_seen {
                        last_seen = now_seen;
                        waited_since = None;
                    }
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= stall {
                        stalled = true;
                        break;
                    }
                    let _ = tokio::time::timeout(
                        Duration::from_millis(10),
                        collector.progress.notified(),
                    )
                    .await;
                }
                if stalled {
                    break;
                }
            }
            Mode::Open { .. } => {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
            }
        }
        let t = (i % u64::from(load.topics)) as usize;
        let seq = seqs[t];
        seqs[t] += 1;
        let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let p = payload(load.format, load.size, t as u32, seq, ns);
        publisher.publish(&load.topic_names[t], load.qos, p).await?;
        sent += 1;
    }
    Ok(Sent {
        sent,
        started,
        stalled,
    })
}

/// The `q`-quantile (0..=1) of sorted `v`, in milliseconds.
pub fn quantile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted
        .get(idx.min(sorted.len() - 1))
        .map(|&ns| ns as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_in_every_format() {
        for f in [
            Format::Plain,
            Format::SensorJson,
            Format::Csv,
            Format::FanoutJson,
        ] {
            let p = payload(f, 64, 7, 42, 123_456_789);
            assert_eq!(parse_marker(&p), Some((7, 42, 123_456_789)), "{f:?}");
        }
        assert_eq!(payload(Format::Plain, 1024, 1, 2, 3).len(), 1024);
        assert_eq!(parse_marker(b"no marker"), None);
        assert_eq!(parse_marker(b"~1.2~"), None);
    }

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        assert_eq!(quantile_ms(&v, 0.5), Some(501.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
