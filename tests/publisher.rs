//! The publisher connection on its own, against a real mosquitto behind a proxy
//! that reads the wire: a publish is confirmed only by the broker's PUBACK of
//! that very publish, also when the connection drops again and again while
//! publishes are in flight.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::proxy::{MqttProxy, Seen};
use common::{BridgeConfig, Mosquitto};
use fxbridge::message::Message;
use fxbridge::message::QoS;
use fxbridge::mqtt::outbound::{PublishError, PublisherTask};
use fxbridge::mqtt::Endpoint;
use tokio_util::sync::CancellationToken;

/// A confirmed payload and how many packets the proxy had seen by then.
type Confirmed = (Vec<u8>, usize);

/// For a publish confirmed when the proxy had logged `mark` packets: the
/// connection and packet id it went out with and was accepted under, or why
/// the wire does not show such a pair before `mark`. A PUBACK belongs to the
/// latest PUBLISH with its packet id on its connection.
fn accepted_on_the_wire(
    seen: &[Seen],
    mark: usize,
    payload: &[u8],
) -> Result<(usize, u16), String> {
    let seen = &seen[..mark];
    for (i, s) in seen.iter().enumerate().rev() {
        let Seen::Sent {
            conn,
            pkid,
            payload: p,
            ..
        } = s
        else {
            continue;
        };
        if p != payload {
            continue;
        }
        for later in &seen[i + 1..] {
            match later {
                Seen::Accepted { conn: c, pkid: k } if c == conn && k == pkid => {
                    return Ok((*conn, *pkid))
                }
                Seen::Sent {
                    conn: c, pkid: k, ..
                } if c == conn && k == pkid => break,
                _ => {}
            }
        }
    }
    Err(format!(
        "{:?} was confirmed, but no PUBACK of its own PUBLISH precedes the confirmation",
        String::from_utf8_lossy(payload)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_always_belongs_to_its_own_publish_across_reconnects() {
    let broker = Mosquitto::start();
    let proxy = Arc::new(MqttProxy::start(broker.port()).await);
    let cfg = BridgeConfig::new(proxy.port(), "http://127.0.0.1:9")
        .route(r#"{name: r, topic: "in", function: f}"#)
        .parse();
    let endpoint = Endpoint::publisher(&cfg).expect("publisher settings");
    let (task, publisher) = PublisherTask::new(
        endpoint,
        cfg.mqtt.max_packet_size.as_usize(),
        cfg.mqtt.max_qos,
        64,
        cfg.mqtt.reconnect.clone(),
    );
    let close = CancellationToken::new();
    let running = tokio::spawn(task.run(close.clone()));

    // 16 workers publish 1000 distinct messages, each until it is confirmed;
    // every confirmation is stamped with how much of the wire the proxy had seen.
    let n = 1000usize;
    let next = Arc::new(Mutex::new(0usize));
    let confirmed: Arc<Mutex<Vec<Confirmed>>> = Arc::default();
    let retries = Arc::new(Mutex::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (publisher, next, confirmed, retries, proxy) = (
            publisher.clone(),
            Arc::clone(&next),
            Arc::clone(&confirmed),
            Arc::clone(&retries),
            Arc::clone(&proxy),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut next = next.lock().unwrap();
                    if *next == n {
                        return;
                    }
                    *next += 1;
                    *next - 1
                };
                let payload = format!("m-{i}").into_bytes();
                loop {
                    let msg = Message::new(
                        format!("out/{}", i % 7),
                        Bytes::from(payload.clone()),
                        QoS::AtLeastOnce,
                    );
                    match publisher.publish(msg).await {
                        Ok(()) => {
                            let mark = proxy.seen().len();
                            confirmed.lock().unwrap().push((payload, mark));
                            break;
                        }
                        Err(PublishError::ConnectionLost) => {
                            *retries.lock().unwrap() += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("publish m-{i} failed: {e}"),
                    }
                }
            }
        }));
    }
    // Cut the connection every 100 confirmations while the workers publish,
    // each time after the publisher has connected again.
    let connections = || {
        proxy
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::Connect { .. }))
            .count()
    };
    let mut cuts = 0;
    for k in 1..=8 {
        common::wait_until(Duration::from_secs(30), "more confirmations", || {
            let done = confirmed.lock().unwrap().len();
            done >= k * 100 || done == n
        })
        .await;
        if confirmed.lock().unwrap().len() == n {
            break;
        }
        proxy.cut();
        cuts += 1;
        common::wait_until(Duration::from_secs(30), "a new connection", || {
            connections() > cuts
        })
        .await;
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("every publish confirmed within 60 s")
            .expect("worker");
    }
    let seen = proxy.seen();
    let confirmed = confirmed.lock().unwrap().clone();
    assert_eq!(confirmed.len(), n);
    let problems: Vec<String> = confirmed
        .iter()
        .filter_map(|(payload, mark)| accepted_on_the_wire(&seen, *mark, payload).err())
        .collect();
    eprintln!(
        "{n} publishes confirmed over {} connections ({cuts} cut), {} retried after a lost connection, {} mismatches",
        connections(),
        retries.lock().unwrap(),
        problems.len()
    );
    assert!(cuts >= 5, "only {cuts} cuts happened while publishing");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    close.cancel();
    let _ = running.await;
}
