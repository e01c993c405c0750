//! A plain TCP proxy on a loopback port that can black-hole its traffic: while
//! black-holed it accepts connections and keeps every socket open, but moves
//! no byte in either direction, like a route that silently drops packets (no
//! RST, no FIN). Healing it lets new and old connections flow again.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; stops accepting on drop.
pub struct TcpProxy {
    port: u16,
    holes: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let holes = Arc::new(watch::channel(false).0);
        let h = Arc::clone(&holes);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(forward(cr, sw, h.subscribe()));
                tokio::spawn(forward(sr, cw, h.subscribe()));
            }
        });
        TcpProxy { port, holes, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops moving bytes (sockets stay open) until [`TcpProxy::heal`].
    pub fn black_hole(&self) {
        self.holes.send_replace(true);
    }

    pub fn heal(&self) {
        self.holes.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hole: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While black-holed, read nothing (the sender's data waits in its
        // socket buffers, as on a dead route).
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Re-check the hole when it opens while waiting for data.
            _ = hole.wait_for(|h| *h) => continue,
        };
        // Data read just before the hole opened waits for it to close.
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
