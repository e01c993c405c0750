//! The gateway client against real tonic gateways on loopback ports: over TLS
//! (`https://`, with a certificate made for the test), and how it uses its
//! connection: many calls on one, and one shared attempt when it cannot connect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fxbridge::config::GatewayConfig;
use fxbridge::gateway::standin::Echo;
use fxbridge::gateway::Gateway;
use fxbridge::proto::fx_gateway_server::FxGatewayServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::Code;

/// A self-signed certificate for `localhost`, written to `dir` as `ca.pem`.
struct Tls {
    dir: tempfile::TempDir,
    cert_pem: String,
    key_pem: String,
}

fn certificate() -> Tls {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate a test certificate");
    let cert_pem = made.cert.pem();
    let key_pem = made.signing_key.serialize_pem();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.pem"), &cert_pem).expect("write ca.pem");
    Tls {
        dir,
        cert_pem,
        key_pem,
    }
}

/// Serves the echo function over TLS on a free port until the runtime ends.
async fn tls_gateway(tls: &Tls) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .expect("server TLS config")
        .add_service(FxGatewayServer::new(Echo::default()));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    port
}

fn config(yaml: &str) -> GatewayConfig {
    serde_yaml::from_str(yaml).expect("gateway config")
}

/// One Invoke of `echo` with `input`, through a new client configured by `yaml`.
async fn invoke_once(
    yaml: &str,
    base: &std::path::Path,
    input: &'static [u8],
) -> Result<String, tonic::Status> {
    let gateway = Gateway::new(&config(yaml), base).expect("gateway");
    gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(input),
            Duration::from_secs(5),
            &[],
        )
        .await
        .map_err(|e| e.status().clone())
}

#[tokio::test]
async fn https_with_a_ca_file_invokes_over_tls() {
    let tls = certificate();
    let port = tls_gateway(&tls).await;
    let base = tls.dir.path();

    // The certificate names localhost; the URL's host is an IP, so the name to
    // verify is given explicitly.
    let by_ip = format!(
        "url: https://127.0.0.1:{port}\ntls:\n  ca_file: ca.pem\n  server_name: localhost\n"
    );
    let reply = invoke_once(&by_ip, base, b"over tls").await;
    assert_eq!(reply.expect("invoke over TLS"), "over tls");
    let gateway = Gateway::new(&config(&by_ip), base).expect("gateway");
    let health = gateway.health_check(Duration::from_secs(5)).await;
    assert_eq!(health.expect("health check over TLS"), "OK");

    // Without server_name, the URL's host is verified.
    let by_name = format!("url: https://localhost:{port}\ntls:\n  ca_file: ca.pem\n");
    let reply = invoke_once(&by_name, base, b"\x00\xffbytes").await;
    assert_eq!(
        reply.expect("invoke over TLS by host name"),
        "\u{0}\u{fffd}bytes"
    );
}

#[tokio::test]
async fn https_refuses_a_server_it_does_not_trust() {
    let tls = certificate();
    let port = tls_gateway(&tls).await;
    let refused = [
        // The system roots do not hold the test's self-signed certificate.
        format!("url: https://localhost:{port}\n"),
        // A name the certificate does not carry.
        format!(
            "url: https://127.0.0.1:{port}\ntls:\n  ca_file: ca.pem\n  server_name: gateway.example\n"
        ),
    ];
    for yaml in refused {
        let err = invoke_once(&yaml, tls.dir.path(), b"x")
            .await
            .expect_err("the call must fail");
        assert_eq!(err.code(), Code::Unavailable, "{yaml}: {err:?}");
        assert!(
            err.message().contains("TLS handshake"),
            "{yaml}: {}",
            err.message()
        );
    }
}

/// Serves the echo function in plaintext on a free port, counting the TCP
/// connections it accepts.
async fn counting_gateway() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<tokio::net::TcpStream>>(16);
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if tx.send(Ok(stream)).await.is_err() {
                break;
            }
        }
    });
    let server = Server::builder().add_service(FxGatewayServer::new(Echo::default()));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)));
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_connection() {
    let (port, accepted) = counting_gateway().await;
    let cfg = config(&format!(
        "url: http://127.0.0.1:{port}\nmax_concurrent: 32\n"
    ));
    let gateway = Gateway::new(&cfg, std::path::Path::new(".")).expect("gateway");

    let calls = (0..200).map(|i| {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let input = format!("call {i}");
            let reply = gateway
                .invoke(
                    "echo",
                    bytes::Bytes::from(input.clone()),
                    Duration::from_secs(10),
                    &[],
                )
                .await
                .expect("invoke");
            assert_eq!(reply, input);
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.expect("call task");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "200 calls, one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_wait_for_a_failing_connection_attempt_share_its_failure() {
    // A peer that accepts TCP and then says nothing: the TLS handshake hangs
    // until the connect timeout, like a gateway behind a black hole.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let cfg = config(&format!(
        "url: https://127.0.0.1:{port}\nconnect_timeout: 2s\n"
    ));
    let gateway = Gateway::new(&cfg, std::path::Path::new(".")).expect("gateway");

    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                gateway
                    .invoke(
                        "echo",
                        bytes::Bytes::from_static(b"x"),
                        Duration::from_secs(10),
                        &[],
                    )
                    .await
            })
        })
        .collect();
    for call in calls {
        let err = call
            .await
            .expect("call task")
            .expect_err("nothing answers: the call must fail");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("no connection within 2s"),
            "{}",
            err.message()
        );
    }
    // One attempt for the whole burst: 20 attempts in turn would take 40 s.
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection attempt");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The failure is not remembered beyond the calls that waited for it.
    let err = gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(b"x"),
            Duration::from_secs(10),
            &[],
        )
        .await
        .expect_err("still nothing answers");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a later call tries again"
    );
}
