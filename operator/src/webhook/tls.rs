//! The webhook's serving certificate: generated with rcgen, read from files
//! (a mounted Secret) and reloaded when they change, without a restart — a
//! stale certificate would make every pod in the cluster unschedulable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("no certificate in {0}")]
    NoCert(String),
    #[error("unusable private key: {0}")]
    Key(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// PEM files of a fresh CA and a serving certificate it signed.
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA and a certificate for `dns_names` (e.g. `svc.ns.svc`), valid `days` days.
pub fn generate(dns_names: &[String], days: i64) -> Result<Generated, TlsError> {
    generate_named("meshscale webhook CA", dns_names, days)
}

/// [`generate`] with the CA's common name.
pub fn generate_named(
    ca_name: &str,
    dns_names: &[String],
    days: i64,
) -> Result<Generated, TlsError> {
    // Day granularity is all rcgen takes without the `time` crate; starting
    // yesterday also absorbs clock skew between nodes.
    let not_before = ymd(chrono::Utc::now() - chrono::Duration::days(1));
    let not_after = ymd(chrono::Utc::now() + chrono::Duration::days(days));
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    ca.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    leaf.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    leaf.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Generated {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ymd(t: chrono::DateTime<chrono::Utc>) -> (i32, u8, u8) {
    use chrono::Datelike;
    // month() is 1..=12 and day() 1..=31: both fit.
    (t.year(), t.month() as u8, t.day() as u8)
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read_err = |p: &Path, e: String| TlsError::Read {
        path: p.display().to_string(),
        reason: e,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    // The key's own error text could quote key material: say only that it failed.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| read_err(key, "not a PEM private key".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Serves the certificate in two files, picking up new contents on the next
/// handshake after they change. A broken new pair keeps the old one serving.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let loaded = load(&cert, &key)?;
        let stamps = (mtime(&cert), mtime(&key));
        Ok(Self {
            state: Mutex::new((stamps.0, stamps.1, loaded)),
            cert,
            key,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (mtime(&self.cert), mtime(&self.key));
        if (stamps.0, stamps.1) != (state.0, state.1) {
            match load(&self.cert, &self.key) {
                Ok(k) => {
                    info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    *state = (stamps.0, stamps.1, k);
                }
                // Often a half-written pair (Secret volumes swap a symlink; others
                // write file by file): retry on the next handshake.
                Err(e) => warn!(error = %e, "keeping the previous webhook certificate"),
            }
        }
        Arc::clone(&state.2)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A certificate handed over in memory: what the operator read from the
/// webhook Secret through the API. Until the first one arrives it serves
/// nothing, so the readiness probe (an HTTPS request) keeps the replica out
/// of the Service instead of presenting an untrusted certificate.
#[derive(Debug, Default)]
pub struct MemoryCert {
    current: Mutex<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl MemoryCert {
    /// Serves this PEM pair from the next handshake on; `Ok(false)` when it is
    /// the pair already served. A broken pair keeps the previous one.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, TlsError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(c, _)| c == cert_pem) {
            return Ok(false);
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Read {
                path: "the webhook Secret's tls.crt".into(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCert("the webhook Secret's tls.crt".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| TlsError::Key("tls.key is not a PEM private key".into()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let ck = CertifiedKey::new(chain, signer);
        ck.keys_match()
            .map_err(|e| TlsError::Key(format!("tls.key does not match tls.crt: {e}")))?;
        *current = Some((cert_pem.to_vec(), Arc::new(ck)));
        Ok(true)
    }

    pub fn is_set(&self) -> bool {
        self.current.lock().map(|c| c.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for MemoryCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, k)| Arc::clone(k)))
    }
}

pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_no_client_auth()
                .with_cert_resolver(Arc::clone(&resolver))
        })
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this branch is unreachable in practice.
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(resolver)
        });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
