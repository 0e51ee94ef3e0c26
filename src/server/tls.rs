//! TLS towards clients (rustls with the aws-lc-rs provider).

use crate::config::{ClientTls, ClientTlsMode};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(tls: &ClientTls) -> Result<Option<TlsAcceptor>, String> {
    if tls.mode == ClientTlsMode::Disable {
        return Ok(None);
    }
    let (Some(cert_path), Some(key_path)) = (&tls.cert, &tls.key) else {
        return Err("client_tls.cert and client_tls.key are required".into());
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client_tls.cert {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client_tls.cert {}: no certificate found",
            cert_path.display()
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("client_tls.key {}: {e}", key_path.display()))?
        .ok_or_else(|| {
            format!(
                "client_tls.key {}: no private key found",
                key_path.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("client_tls: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
