//! The gateway client over TLS (`https://`), against a real tonic gateway
//! serving TLS on a loopback port with a certificate made for the test.

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

#[tokio::test]
async fn https_with_a_ca_file_invokes_over_tls() {
    let tls = certificate();
    let port = tls_gateway(&tls).await;

    // The certificate names localhost; the URL's host is an IP, so the name to
    // verify is given explicitly.
    let by_ip = config(&format!(
        "url: https://127.0.0.1:{port}\ntls:\n  ca_file: ca.pem\n  server_name: localhost\n"
    ));
    let gateway = Gateway::new(&by_ip, tls.dir.path()).expect("gateway");
    let reply = gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(b"over tls"),
            Duration::from_secs(5),
        )
        .await
        .expect("invoke over TLS");
    assert_eq!(reply, "over tls");
    let health = gateway
        .health_check(Duration::from_secs(5))
        .await
        .expect("health check over TLS");
    assert_eq!(health, "OK");

    // Without server_name, the URL's host is verified.
    let by_name = config(&format!(
        "url: https://localhost:{port}\ntls:\n  ca_file: ca.pem\n"
    ));
    let gateway = Gateway::new(&by_name, tls.dir.path()).expect("gateway");
    let reply = gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(b"\x00\xffbytes"),
            Duration::from_secs(5),
        )
        .await
        .expect("invoke over TLS by host name");
    assert_eq!(reply, "\u{0}\u{fffd}bytes");
}

#[tokio::test]
async fn https_refuses_a_server_it_does_not_trust() {
    let tls = certificate();
    let port = tls_gateway(&tls).await;

    // The system roots do not hold the test's self-signed certificate.
    let untrusted = config(&format!("url: https://localhost:{port}\n"));
    let gateway = Gateway::new(&untrusted, tls.dir.path()).expect("gateway");
    let err = gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(b"x"),
            Duration::from_secs(5),
        )
        .await
        .expect_err("an untrusted certificate must fail the call");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("TLS handshake"), "{}", err.message());

    // A name the certificate does not carry fails the same way.
    let wrong_name = config(&format!(
        "url: https://127.0.0.1:{port}\ntls:\n  ca_file: ca.pem\n  server_name: gateway.example\n"
    ));
    let gateway = Gateway::new(&wrong_name, tls.dir.path()).expect("gateway");
    let err = gateway
        .invoke(
            "echo",
            bytes::Bytes::from_static(b"x"),
            Duration::from_secs(5),
        )
        .await
        .expect_err("a certificate for another name must fail the call");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("TLS handshake"), "{}", err.message());
}
