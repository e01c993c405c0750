//! A minimal MQTT 5 client for tests (rumqttc v5): publishes with properties
//! (user properties, response topic, correlation data) and records what it
//! receives with theirs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::wait::{unique, wait_until};

/// One message received, with its MQTT 5 properties.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub payload: Vec<u8>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// Payload format indicator 1 (UTF-8).
    pub utf8: bool,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
}

pub struct Client {
    pub client: AsyncClient,
    pub got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects and subscribes to `filters` (QoS 1); returns once every SUBACK
    /// is in (at most 10 s).
    pub async fn start(port: u16, filters: &[&str]) -> Client {
        let opts = MqttOptions::new(unique("v5"), "127.0.0.1", port);
        let (client, mut el) = AsyncClient::new(opts, 1000);
        for f in filters {
            client.try_subscribe(*f, QoS::AtLeastOnce).unwrap();
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let want = filters.len();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut subacks = 0;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        sink.lock().unwrap().push(Got {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            user_properties: props.user_properties,
                            content_type: props.content_type,
                            utf8: props.payload_format_indicator == Some(1),
                            response_topic: props.response_topic,
                            correlation_data: props.correlation_data.map(|c| c.to_vec()),
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= want {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        if want > 0 {
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .unwrap()
                .unwrap();
        }
        Client { client, got, task }
    }

    /// Queues a QoS 1 publish with `props` as its user properties.
    pub fn publish(&self, topic: &str, payload: &[u8], props: Vec<(String, String)>) {
        let p = PublishProperties {
            user_properties: props,
            ..Default::default()
        };
        self.publish_with(topic, payload, p);
    }

    /// Queues a QoS 1 request: `payload` on `topic`, answer wanted on
    /// `response_topic` with `correlation` (when given).
    pub fn request(
        &self,
        topic: &str,
        payload: &[u8],
        response_topic: &str,
        correlation: Option<&[u8]>,
    ) {
        let p = PublishProperties {
            response_topic: Some(response_topic.to_string()),
            correlation_data: correlation.map(bytes::Bytes::copy_from_slice),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        self.publish_with(topic, payload, p);
    }

    pub fn publish_with(&self, topic: &str, payload: &[u8], props: PublishProperties) {
        self.client
            .try_publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), props)
            .unwrap();
    }

    /// Everything received on `topic`, in arrival order.
    pub fn on(&self, topic: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.topic == topic)
            .cloned()
            .collect()
    }

    /// Waits (at most `timeout`) until `n` messages arrived on `topic`.
    pub async fn wait_for_n(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Got> {
        wait_until(timeout, &format!("{n} messages on {topic}"), || {
            self.on(topic).len() >= n
        })
        .await;
        self.on(topic)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
