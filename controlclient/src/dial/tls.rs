//! TLS client settings for the two kinds of request Tailscale clients make:
//!
//! * `GET /key` verifies the certificate (system roots plus an optional
//!   extra CA), like any HTTPS request.
//! * The `/ts2021` upgrade only *logs* verification failures
//!   (`controlhttp.tryURLUpgrade` demotes them): the Noise handshake
//!   authenticates the server by the key from `/key`, so a middlebox that
//!   re-signs TLS sees nothing but Noise. Handshake signatures are still
//!   checked, as Go's `InsecureSkipVerify` still checks them.

use std::sync::Arc;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Why TLS could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error("extra CA is not a PEM certificate: {0}")]
    BadCa(String),
    #[error("extra CA holds no certificate")]
    EmptyCa,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Client configurations for one server, built once and shared by every
/// connection (a load generator opens many).
#[derive(Clone)]
pub struct TlsConfigs {
    /// For `/key`: verification enforced.
    pub strict: Arc<ClientConfig>,
    /// For `/ts2021`: verification failures logged only.
    pub log_only: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs").finish_non_exhaustive()
    }
}

/// Parses a PEM bundle of extra trusted CAs.
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::BadCa(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::EmptyCa);
    }
    Ok(certs)
}

impl TlsConfigs {
    /// System roots plus `extra_ca_pem`.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping unreadable system CA certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::trace!(added, ignored, "system CA certificates");
        if let Some(pem) = extra_ca_pem {
            for cert in parse_ca_pem(pem)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::BadCa(e.to_string()))?;
            }
        }
        let roots = Arc::new(roots);
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Config(e.to_string()))?,
            )
        };

        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsSetupError::Config(e.to_string()))
        };
        // No ALPN: both requests are HTTP/1.1 (h2 cannot switch protocols).
        let strict = builder()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let log_only = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LogOnlyVerifier {
                inner: verifier,
                provider: provider.clone(),
            }))
            .with_no_client_auth();
        Ok(Self {
            strict: Arc::new(strict),
            log_only: Arc::new(log_only),
        })
    }
}

#[derive(Debug)]
struct LogOnlyVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LogOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = match &self.inner {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => Err(rustls::Error::General("no trusted CA certificates".into())),
        };
        if let Err(e) = outcome {
            tracing::warn!(server = ?server_name, error = %e, "TLS certificate verification for the noise upgrade failed; continuing, noise authenticates the server");
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_pem_parsing() {
        assert_eq!(parse_ca_pem(b""), Err(TlsSetupError::EmptyCa));
        assert_eq!(parse_ca_pem(b"hello"), Err(TlsSetupError::EmptyCa));
        assert!(matches!(
            parse_ca_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err(TlsSetupError::BadCa(_))
        ));
        assert!(TlsConfigs::new(Some(b"junk")).is_err());
    }
}
