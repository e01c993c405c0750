//! TLS client settings shared by the MQTT and the gateway connections.
//!
//! Both trust either the CA file named in `bridge.yaml` or the system's roots,
//! and present a client certificate when one is configured. rustls with the
//! `ring` provider; nothing here reads the network. `fxbridge check` and every
//! reload build these settings once before anything connects, so a CA file
//! without a certificate, or a key that does not parse, is a configuration
//! error and not a connection that fails later.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Certificates for `mqtts://` or `https://`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM CA bundle; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Server name to verify, when it differs from the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A rustls client config from `tls` (paths relative to `base`); `peer` names
/// the other side in errors ("MQTT", "gateway").
pub fn client_config(
    tls: Option<&TlsFiles>,
    base: &Path,
    peer: &str,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca_file.as_ref()) {
        Some(ca) => {
            let path = base.join(ca);
            for cert in CertificateDer::pem_file_iter(&path)
                .with_context(|| format!("cannot read {peer} CA {}", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("bad certificate in {}", path.display()))?)
                    .with_context(|| format!("unusable {peer} CA certificate"))?;
            }
            if roots.is_empty() {
                bail!("{peer} CA file {} holds no PEM certificate", path.display());
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system store may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.client_cert_file.as_ref().zip(t.client_key_file.as_ref()))
    {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(base.join(cert))
                .with_context(|| format!("cannot read {peer} client certificate"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("bad {peer} client certificate"))?;
            let key = PrivateKeyDer::from_pem_file(base.join(key))
                .with_context(|| format!("cannot read {peer} client key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .with_context(|| format!("unusable {peer} client certificate"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}
