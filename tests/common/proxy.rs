//! A TCP proxy between a client and the broker that reads the MQTT 3.1.1 packets
//! going through it, so a test can see what was sent on the wire and in which
//! order: CONNECT client ids, PUBLISH and PUBACK packets in both directions.
//! Bytes are forwarded unchanged as they arrive; [`MqttProxy::cut`] closes every
//! open connection at once (a network failure as the client sees it).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A packet seen on connection number `conn` (numbered from 0 in accept order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connect {
        conn: usize,
        client_id: String,
    },
    /// Broker -> client.
    Publish {
        conn: usize,
        pkid: u16,
        topic: String,
        payload: Vec<u8>,
    },
    /// Client -> broker.
    PubAck {
        conn: usize,
        pkid: u16,
    },
    /// Client -> broker: a PUBLISH of the client's.
    Sent {
        conn: usize,
        pkid: u16,
        topic: String,
        payload: Vec<u8>,
    },
    /// Broker -> client: the broker accepted the client's PUBLISH `pkid`.
    Accepted {
        conn: usize,
        pkid: u16,
    },
}

/// The proxy; stops accepting on drop (open connections end with the test runtime).
pub struct MqttProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Fired to close every connection open at that moment.
    cut: Arc<Mutex<tokio_util::sync::CancellationToken>>,
    task: JoinHandle<()>,
}

impl MqttProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> MqttProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Mutex::new(tokio_util::sync::CancellationToken::new()));
        let log = Arc::clone(&seen);
        let cuts = Arc::clone(&cut);
        let task = tokio::spawn(async move {
            let mut conn = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                let cut = cuts.lock().unwrap().clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    tokio::select! {
                        () = pipe(client, broker, conn, log) => {}
                        () = cut.cancelled() => {}
                    }
                });
                conn += 1;
            }
        });
        MqttProxy {
            port,
            seen,
            cut,
            task,
        }
    }

    /// Closes every connection open now (both sides see the TCP connection
    /// end); later connections are forwarded as usual.
    pub fn cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = tokio_util::sync::CancellationToken::new();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every packet of interest so far, in the order the proxy saw them.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The connections opened by `client_id`.
    pub fn connections_of(&self, client_id: &str) -> Vec<usize> {
        self.seen()
            .iter()
            .filter_map(|s| match s {
                Seen::Connect { conn, client_id: c } if c == client_id => Some(*conn),
                _ => None,
            })
            .collect()
    }
}

impl Drop for MqttProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, broker: TcpStream, conn: usize, log: Arc<Mutex<Vec<Seen>>>) {
    let (cr, cw) = client.into_split();
    let (br, bw) = broker.into_split();
    let up = forward(cr, bw, Direction::ToBroker, conn, Arc::clone(&log));
    let down = forward(br, cw, Direction::ToClient, conn, log);
    // When either side closes, close both.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToBroker,
    ToClient,
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dir: Direction,
    conn: usize,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Record before forwarding, so the log order follows the wire order.
        while let Some((packet, used)) = split_packet(&pending) {
            if let Some(s) = interpret(&packet, dir, conn) {
                log.lock().unwrap().push(s);
            }
            pending.drain(..used);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One complete packet (fixed header byte, body) from the front of `data`, and
/// how many bytes it took; `None` if it is not complete yet.
fn split_packet(data: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let first = *data.first()?;
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let b = *data.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        assert!(shift <= 21, "malformed MQTT remaining length");
    }
    let body = data.get(i..i + len)?;
    Some(((first, body.to_vec()), i + len))
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn interpret(packet: &(u8, Vec<u8>), dir: Direction, conn: usize) -> Option<Seen> {
    let (first, body) = packet;
    match (first >> 4, dir) {
        // CONNECT (3.1.1): protocol name, level, flags, keep alive, then client id.
        (1, Direction::ToBroker) => {
            let name_len = usize::from(u16_at(body, 0)?);
            let at = 2 + name_len + 4;
            let id_len = usize::from(u16_at(body, at)?);
            let id = body.get(at + 2..at + 2 + id_len)?;
            Some(Seen::Connect {
                conn,
                client_id: String::from_utf8_lossy(id).into_owned(),
            })
        }
        (3, dir) => {
            let qos = (first >> 1) & 3;
            let topic_len = usize::from(u16_at(body, 0)?);
            let topic = String::from_utf8_lossy(body.get(2..2 + topic_len)?).into_owned();
            let mut at = 2 + topic_len;
            let pkid = if qos > 0 {
                at += 2;
                u16_at(body, at - 2)?
            } else {
                0
            };
            let payload = body.get(at..)?.to_vec();
            Some(match dir {
                Direction::ToClient => Seen::Publish {
                    conn,
                    pkid,
                    topic,
                    payload,
                },
                Direction::ToBroker => Seen::Sent {
                    conn,
                    pkid,
                    topic,
                    payload,
                },
            })
        }
        (4, Direction::ToBroker) => Some(Seen::PubAck {
            conn,
            pkid: u16_at(body, 0)?,
        }),
        (4, Direction::ToClient) => Some(Seen::Accepted {
            conn,
            pkid: u16_at(body, 0)?,
        }),
        _ => None,
    }
}
