//! MQTT clients for tests (rumqttc, MQTT 3.1.1): a confirmed publisher and a
//! collector that records everything it receives.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use super::wait::{unique, wait_until};

/// Publishes every `(topic, payload)` at QoS 1 over a fresh connection and
/// returns once the broker has acknowledged all of them (at most 30 s).
pub async fn publish_all(port: u16, msgs: &[(String, Vec<u8>)]) {
    publish_all_qos(port, msgs, QoS::AtLeastOnce).await;
}

/// Like [`publish_all`] at `qos` (1: until every PUBACK; 2: every PUBCOMP).
pub async fn publish_all_qos(port: u16, msgs: &[(String, Vec<u8>)], qos: QoS) {
    publish(port, msgs, qos, false).await;
}

/// Like [`publish_all`], with the RETAIN flag: the broker keeps the last
/// message of each topic for later subscribers.
pub async fn publish_retained(port: u16, msgs: &[(String, Vec<u8>)]) {
    publish(port, msgs, QoS::AtLeastOnce, true).await;
}

async fn publish(port: u16, msgs: &[(String, Vec<u8>)], qos: QoS, retain: bool) {
    assert!(
        qos != QoS::AtMostOnce,
        "QoS 0 has no confirmation to wait for"
    );
    if msgs.is_empty() {
        return;
    }
    let mut opts = MqttOptions::new(unique("test-pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, msgs.len() + 10);
    for (topic, payload) in msgs {
        client
            .try_publish(topic.clone(), qos, retain, payload.clone())
            .expect("queue publish");
    }
    let want = msgs.len();
    let confirmed = async {
        let mut acked = 0usize;
        while acked < want {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => acked += 1,
                Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker after {acked}/{want} PUBACKs: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), confirmed)
        .await
        .expect("the broker did not acknowledge every publish within 30 s");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// Publishes `msgs` at QoS 1 at about `rate` per second (paced against the
/// clock, not by sleeping a fixed time per message), then waits until the
/// broker has acknowledged all of them (at most 30 s after the last).
pub async fn publish_at_rate(port: u16, msgs: &[(String, Vec<u8>)], rate: u32) {
    let mut opts = MqttOptions::new(unique("test-pub-rate"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, msgs.len() + 10);
    let want = msgs.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < want {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker after {acked}/{want} PUBACKs: {e}"),
            }
        }
        eventloop
    });
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs(1) / rate.max(1);
    for (i, (topic, payload)) in msgs.iter().enumerate() {
        tokio::time::sleep_until(start + gap * u32::try_from(i).unwrap_or(u32::MAX)).await;
        client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .expect("queue publish");
    }
    let mut eventloop = tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .expect("the broker did not acknowledge every publish within 30 s")
        .expect("publisher task");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// `count` messages `<prefix>-<i>` on `topic`, ready for [`publish_all`].
pub fn numbered(
    topic: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| (topic.to_string(), format!("{prefix}-{i}").into_bytes()))
        .collect()
}

/// A message as a collector received it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Subscribes (QoS 1) and records every message, in arrival order. Keeps
/// reconnecting if the broker goes away; aborted on drop.
pub struct Collector {
    msgs: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// A clean-session collector; returns once the broker granted the subscriptions.
    pub async fn start(port: u16, filters: &[&str]) -> Collector {
        Self::launch(port, &unique("test-collector"), true, filters).await
    }

    /// A persistent-session collector with a fixed id: with a persistent broker it
    /// misses nothing while the broker restarts.
    pub async fn start_persistent(port: u16, client_id: &str, filters: &[&str]) -> Collector {
        Self::launch(port, client_id, false, filters).await
    }

    async fn launch(port: u16, client_id: &str, clean: bool, filters: &[&str]) -> Collector {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(clean)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        for f in filters {
            client
                .try_subscribe(*f, QoS::AtLeastOnce)
                .expect("queue subscribe");
        }
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let sink = Arc::clone(&msgs);
        let want_subacks = filters.len();
        let task = tokio::spawn(async move {
            let _client = client; // the event loop ends when every client is gone
            let mut subscribed = Some(subscribed_tx);
            let mut subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= want_subacks {
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("collector: no SUBACK within 10 s")
            .expect("collector task ended");
        Collector { msgs, task }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.msgs.lock().unwrap().clone()
    }

    /// Messages received on `topic`.
    pub fn on(&self, topic: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }

    /// Distinct `(topic, payload)` pairs received.
    pub fn distinct(&self) -> usize {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .collect::<HashSet<_>>()
            .len()
    }

    /// Receptions beyond the first of each `(topic, payload)`.
    pub fn duplicates(&self) -> usize {
        self.count() - self.distinct()
    }

    /// How often each payload arrived.
    pub fn payload_counts(&self) -> HashMap<Vec<u8>, usize> {
        let mut counts = HashMap::new();
        for m in self.msgs.lock().unwrap().iter() {
            *counts.entry(m.payload.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until at least `n` distinct `(topic, payload)` pairs have arrived.
    pub async fn wait_for_distinct(&self, n: usize, timeout: Duration) {
        let what = format!("{n} distinct messages");
        wait_until(timeout, &what, || self.distinct() >= n).await;
    }

    /// Waits until a message with `payload` has arrived on `topic`.
    pub async fn wait_for(&self, topic: &str, payload: &[u8], timeout: Duration) {
        let what = format!("{payload:?} on {topic}");
        wait_until(timeout, &what, || {
            self.msgs
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.topic == topic && m.payload == payload)
        })
        .await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
