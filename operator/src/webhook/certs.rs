//! The operator owns the webhook's serving certificate: it generates one with
//! rcgen into the webhook Secret, renews it ahead of expiry, and keeps the
//! `MutatingWebhookConfiguration`'s `caBundle` in step. The webhook server
//! picks the new files up from the mounted Secret without a restart.
//!
//! Renewal must never leave a window in which the API server distrusts the
//! certificate being served (with `failurePolicy: Ignore` pods would start
//! without their sidecar; with `Fail` they would not start at all). So the CA
//! bundle carries the previous CA next to the new one, and it is patched
//! BEFORE the Secret changes: whichever certificate the server presents while
//! the kubelet refreshes the mounted files, the bundle trusts it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{info, instrument};

use super::tls::{self, TlsError};
use crate::admin::Admin;
use crate::kubeops::{Kube, KubeError};
use crate::reconcile::Ctx;

pub const ANN_NOT_AFTER: &str = "meshscale.dev/not-after";
/// The CAs the API server should trust: the current one and its predecessor.
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where the webhook's certificate lives and what it must say.
#[derive(Debug, Clone)]
pub struct CertTarget {
    pub namespace: String,
    pub secret: String,
    pub webhook_config: String,
    pub dns_names: Vec<String>,
    pub days: i64,
    pub renew_before: chrono::Duration,
}

fn data<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    s.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

/// Why the Secret's certificate cannot be kept until `at`: checked from the
/// certificates themselves, never from our annotation (which a `helm
/// upgrade` or a hand edit leaves behind when it replaces the files). It must
/// hold a key matching the certificate, and the certificate must verify, as
/// the API server will verify it, for every DNS name against the bundle the
/// operator puts into `caBundle`, and still at `at`.
pub fn check(s: &Secret, t: &CertTarget, at: DateTime<Utc>) -> Result<(), String> {
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{RootCertStore, crypto};

    let (Some(cert), Some(key)) = (data(s, "tls.crt"), data(s, "tls.key")) else {
        return Err("no tls.crt/tls.key".into());
    };
    let served = super::tls::MemoryCert::default();
    served.set_pem(cert, key).map_err(|e| e.to_string())?;
    let bundle = data(s, CA_BUNDLE_KEY)
        .or_else(|| data(s, "ca.crt"))
        .ok_or("no CA bundle")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle) {
        let ca = ca.map_err(|e| format!("CA bundle: {e}"))?;
        roots.add(ca).map_err(|e| format!("CA bundle: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    let (leaf, rest) = chain.split_first().ok_or("tls.crt holds no certificate")?;
    let provider = std::sync::Arc::new(crypto::ring::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let secs = u64::try_from(at.timestamp()).unwrap_or_default();
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    for name in &t.dns_names {
        let sn = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
        verifier
            .verify_server_cert(leaf, rest, &sn, &[], when)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// The last CERTIFICATE block of a PEM bundle (the newest CA: we append).
fn last_cert(pem: &str) -> Option<&str> {
    let start = pem.rfind("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find("-----END CERTIFICATE-----")? + start;
    Some(&pem[start..end + "-----END CERTIFICATE-----".len()])
}

/// The bundle to trust after a renewal: the CA currently serving (if any) and the new one.
pub fn next_bundle(old: Option<&Secret>, new_ca: &str) -> String {
    let old_ca = old
        .and_then(|s| data(s, "ca.crt"))
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(last_cert);
    match old_ca {
        Some(ca) if ca.trim() != new_ca.trim() => format!("{}\n{}\n", ca.trim(), new_ca.trim()),
        _ => format!("{}\n", new_ca.trim()),
    }
}

fn secret_for(t: &CertTarget, g: &tls::Generated, bundle: &str, expires: DateTime<Utc>) -> Secret {
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(t.secret.clone()),
            namespace: Some(t.namespace.clone()),
            annotations: Some(BTreeMap::from([(
                ANN_NOT_AFTER.to_string(),
                expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            )])),
            ..Default::default()
        },
        // The chart creates it as a TLS Secret; the type cannot change.
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), b(&g.cert_pem)),
            ("tls.key".to_string(), b(&g.key_pem)),
            ("ca.crt".to_string(), b(&g.ca_pem)),
            (CA_BUNDLE_KEY.to_string(), b(bundle)),
        ])),
        ..Default::default()
    }
}

/// One pass: renew when due, and make the webhook configuration trust the
/// Secret's CAs either way (so a configuration re-rendered by `helm upgrade`
/// is corrected at the next pass). `true` when a new certificate was made.
#[instrument(skip_all, fields(secret = %format!("{}/{}", t.namespace, t.secret)))]
pub async fn ensure<A: Admin, K: Kube>(
    t: &CertTarget,
    ctx: &Ctx<A, K>,
    now: DateTime<Utc>,
) -> Result<bool, CertError> {
    let current = ctx.kube.get_secret(&t.namespace, &t.secret).await?;
    let verdict = match &current {
        Some(s) => check(s, t, now + t.renew_before),
        None => Err("no Secret".into()),
    };
    if let Err(why) = &verdict {
        info!(reason = %why, "a new webhook certificate is due");
    } else {
        let bundle = current
            .as_ref()
            .and_then(|s| data(s, CA_BUNDLE_KEY).or_else(|| data(s, "ca.crt")))
            .unwrap_or_default()
            .to_vec();
        ctx.kube
            .set_webhook_ca_bundle(&t.webhook_config, &bundle)
            .await?;
        return Ok(false);
    }
    let g = tls::generate(&t.dns_names, t.days)?;
    let expires = now + chrono::Duration::days(t.days);
    let bundle = next_bundle(current.as_ref(), &g.ca_pem);
    // Trust first, serve second (see the module comment).
    ctx.kube
        .set_webhook_ca_bundle(&t.webhook_config, bundle.as_bytes())
        .await?;
    ctx.kube
        .apply_secret(secret_for(t, &g, &bundle, expires))
        .await?;
    info!(expires = %expires.to_rfc3339_opts(SecondsFormat::Secs, true), "webhook certificate issued");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeAdmin, FakeKube};

    fn target() -> CertTarget {
        CertTarget {
            namespace: "meshscale".into(),
            secret: "rel-webhook-tls".into(),
            webhook_config: "rel-inject".into(),
            dns_names: vec!["rel-webhook.meshscale.svc".into()],
            days: 365,
            renew_before: chrono::Duration::days(30),
        }
    }

    fn secret(c: &Ctx<FakeAdmin, FakeKube>) -> Secret {
        c.kube.state.lock().unwrap().secrets["meshscale/rel-webhook-tls"].clone()
    }

    fn text(s: &Secret, key: &str) -> String {
        String::from_utf8(data(s, key).unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn issues_renews_before_expiry_and_keeps_the_old_ca_trusted() {
        let c = Ctx::new(FakeAdmin::default(), FakeKube::default());
        let t = target();
        let now = Utc::now();
        // Nothing yet (or the chart's certificate without our annotation): issue.
        assert!(ensure(&t, &c, now).await.unwrap());
        let first = secret(&c);
        let first_ca = text(&first, "ca.crt");
        assert!(text(&first, "tls.crt").contains("BEGIN CERTIFICATE"));
        assert!(text(&first, "tls.key").contains("PRIVATE KEY"));
        let bundle = c.kube.state.lock().unwrap().webhook_ca["rel-inject"].clone();
        assert_eq!(String::from_utf8(bundle).unwrap().trim(), first_ca.trim());

        // Fresh: nothing issued, the bundle is re-asserted.
        c.kube
            .state
            .lock()
            .unwrap()
            .webhook_ca
            .insert("rel-inject".into(), b"stale from helm upgrade".to_vec());
        assert!(
            !ensure(&t, &c, now + chrono::Duration::days(300))
                .await
                .unwrap()
        );
        let bundle = c.kube.state.lock().unwrap().webhook_ca["rel-inject"].clone();
        assert_eq!(String::from_utf8(bundle).unwrap().trim(), first_ca.trim());

        // Within 30 days of expiry: renewed; both CAs trusted.
        assert!(
            ensure(&t, &c, now + chrono::Duration::days(340))
                .await
                .unwrap()
        );
        let second = secret(&c);
        let second_ca = text(&second, "ca.crt");
        assert_ne!(first_ca, second_ca);
        let bundle =
            String::from_utf8(c.kube.state.lock().unwrap().webhook_ca["rel-inject"].clone())
                .unwrap();
        assert!(bundle.contains(first_ca.trim()) && bundle.contains(second_ca.trim()));
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);

        // The next renewal drops the oldest CA: the bundle never grows past two.
        assert!(
            ensure(&t, &c, now + chrono::Duration::days(700))
                .await
                .unwrap()
        );
        let bundle =
            String::from_utf8(c.kube.state.lock().unwrap().webhook_ca["rel-inject"].clone())
                .unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!bundle.contains(first_ca.trim()));
    }

    /// Bug: `helm upgrade` re-rendered the Secret's tls.crt, tls.key and
    /// ca.crt (a new CA) but left our annotation and the old ca-bundle.crt; the
    /// operator trusted its annotation and kept the stale bundle in caBundle,
    /// so the API server could not verify the webhook (fail-open: pods without
    /// sidecar). Now the certificate itself is checked against the bundle.
    #[tokio::test]
    async fn a_certificate_the_bundle_does_not_trust_is_reissued_despite_a_fresh_annotation() {
        let c = Ctx::new(FakeAdmin::default(), FakeKube::default());
        let t = target();
        let now = Utc::now();
        assert!(ensure(&t, &c, now).await.unwrap());
        // The "upgrade": new files from another CA, our annotation and bundle untouched.
        let helm = tls::generate(&t.dns_names, 3650).unwrap();
        {
            let mut st = c.kube.state.lock().unwrap();
            let s = st.secrets.get_mut("meshscale/rel-webhook-tls").unwrap();
            let d = s.data.as_mut().unwrap();
            d.insert(
                "tls.crt".into(),
                ByteString(helm.cert_pem.clone().into_bytes()),
            );
            d.insert(
                "tls.key".into(),
                ByteString(helm.key_pem.clone().into_bytes()),
            );
            d.insert(
                "ca.crt".into(),
                ByteString(helm.ca_pem.clone().into_bytes()),
            );
        }
        assert!(check(&secret(&c), &t, now).is_err());
        assert!(ensure(&t, &c, now).await.unwrap(), "must reissue");
        let fixed = secret(&c);
        check(&fixed, &t, now + t.renew_before).expect("the new certificate verifies");
        // What the API server trusts now verifies what is served, and still
        // trusts the helm CA whose certificate may be served until the new files land.
        let bundle = c.kube.state.lock().unwrap().webhook_ca["rel-inject"].clone();
        let mut served = fixed.clone();
        served
            .data
            .as_mut()
            .unwrap()
            .insert(CA_BUNDLE_KEY.into(), ByteString(bundle.clone()));
        check(&served, &t, now).expect("caBundle trusts the served certificate");
        assert!(
            String::from_utf8(bundle)
                .unwrap()
                .contains(helm.ca_pem.trim())
        );
        // And then it is stable: nothing more is issued.
        assert!(!ensure(&t, &c, now).await.unwrap());
    }

    #[test]
    fn a_secret_missing_keys_or_names_or_expiring_soon_fails_the_check() {
        let t = target();
        let now = Utc::now();
        let g = tls::generate(&t.dns_names, 90).unwrap();
        let b = |s: &str| ByteString(s.as_bytes().to_vec());
        let good = Secret {
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), b(&g.cert_pem)),
                ("tls.key".to_string(), b(&g.key_pem)),
                ("ca.crt".to_string(), b(&g.ca_pem)),
            ])),
            ..Default::default()
        };
        check(&good, &t, now).expect("valid");
        assert!(check(&good, &t, now + chrono::Duration::days(120)).is_err());
        let mut wrong_name = t.clone();
        wrong_name.dns_names = vec!["other.meshscale.svc".into()];
        assert!(check(&good, &wrong_name, now).is_err());
        let other = tls::generate(&t.dns_names, 90).unwrap();
        let mut wrong_key = good.clone();
        wrong_key
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), b(&other.key_pem));
        assert!(check(&wrong_key, &t, now).is_err());
        let mut no_key = good.clone();
        no_key.data.as_mut().unwrap().remove("tls.key");
        assert!(check(&no_key, &t, now).is_err());
    }
}
