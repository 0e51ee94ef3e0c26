//! rustls client configurations for the backend TLS modes, with libpq's
//! meanings: `require`/`prefer` encrypt without verifying the certificate,
//! `verify-full` checks the chain and the host name.

use crate::config::{BackendTlsMode, Region};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Builds the TLS client config a region needs, or `None` for `disable`.
pub fn client_config(
    region_name: &str,
    region: &Region,
) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("region {region_name}: TLS setup: {e}"))?;
    let config = match region.tls {
        BackendTlsMode::Disable => return Ok(None),
        BackendTlsMode::Prefer | BackendTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        BackendTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match &region.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("regions.{region_name}.ca_file {}: {e}", path.display())
                    })?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert.map_err(|e| {
                            format!("regions.{region_name}.ca_file {}: {e}", path.display())
                        })?;
                        roots.add(cert).map_err(|e| {
                            format!("regions.{region_name}.ca_file {}: {e}", path.display())
                        })?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err(format!(
                    "regions.{region_name}: verify-full needs a CA certificate (set ca_file)"
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Encrypts without authenticating the server, as libpq's `sslmode=require`.
/// Signatures are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
