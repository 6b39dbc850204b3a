//! A throwaway CA and a server certificate for the server's address in its
//! namespace. tailscaled trusts the CA through `SSL_CERT_FILE`, curl through
//! `--cacert`; nothing is installed system-wide.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`; the server
/// certificate's only SAN is `ip` (rcgen makes an IP SAN of an address).
pub fn write(dir: &Path, ip: &str) -> anyhow::Result<CertPaths> {
    let ca_key = KeyPair::generate().context("CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshscale e2e throwaway CA");
    let ca = ca_params.self_signed(&ca_key).context("CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().context("server key")?;
    let cert = CertificateParams::new(vec![ip.to_string()])
        .context("server certificate params")?
        .signed_by(&key, &issuer)
        .context("server certificate")?;
    let paths = CertPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    for (path, pem) in [
        (&paths.ca, ca.pem()),
        (&paths.cert, cert.pem()),
        (&paths.key, key.serialize_pem()),
    ] {
        std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(paths)
}
