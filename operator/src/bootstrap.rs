//! Zero-touch install: the credentials `helm install` alone would otherwise
//! need a manual step for. The operator, not the chart, generates them once
//! into Secrets (so `helm template` renders no random material and GitOps
//! tools and upgrades never regenerate them), then keeps using what it finds:
//!
//! - the control server's TLS certificate and CA (`tls.crt`, `tls.key`, `ca.crt`);
//! - the bootstrap admin API key (`apikey`), which the control server
//!   accepts (`admin.bootstrap_api_key_path`) and the operator presents.
//!
//! Creation is a plain create: of replicas racing at first start exactly one
//! wins (409 for the others), and all then read the winner's Secret. A
//! Secret that exists is never overwritten: a user may bring their own, and
//! replacing it (then restarting the operator) rotates the key.
//!
//! And the injection user: the MeshUser injected pods join as is created if
//! missing, so no hand-made MeshUser is needed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tracing::info;

use crate::crd::{MeshUser, MeshUserSpec};
use crate::webhook::tls;

/// The data key of the admin API key Secret.
pub const API_KEY: &str = "apikey";
/// What the control server requires of a bootstrap key.
pub const MIN_API_KEY_LEN: usize = 32;
const MANAGER: &str = "meshscale-operator";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {name}: {problem}")]
    Unusable { name: String, problem: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("no randomness from the system")]
    Random,
}

/// A new admin API key: `msboot-` and 48 random hex digits.
pub fn new_api_key() -> Result<String, BootstrapError> {
    let mut b = [0u8; 24];
    tokio_rustls::rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| BootstrapError::Random)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("msboot-{hex}"))
}

fn data<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    s.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

fn secret(ns: &str, name: &str, type_: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some(type_.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The Secret as it is, or as created from `make` when there is none.
async fn get_or_create(
    api: &Api<Secret>,
    name: &str,
    make: impl FnOnce() -> Result<Secret, BootstrapError>,
) -> Result<Secret, BootstrapError> {
    if let Some(s) = api.get_opt(name).await? {
        return Ok(s);
    }
    match api.create(&PostParams::default(), &make()?).await {
        Ok(s) => {
            info!(secret = name, "generated");
            Ok(s)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The admin API key from Secret `name`, generated on first use.
pub async fn ensure_api_key(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<String, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = get_or_create(&api, name, || {
        let key = new_api_key()?;
        Ok(secret(
            ns,
            name,
            "Opaque",
            BTreeMap::from([(API_KEY.to_string(), ByteString(key.into_bytes()))]),
        ))
    })
    .await?;
    let unusable = |problem: &str| BootstrapError::Unusable {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    let raw = data(&s, API_KEY).ok_or_else(|| unusable("no `apikey` entry"))?;
    let key = std::str::from_utf8(raw)
        .map_err(|_| unusable("`apikey` is not text"))?
        .trim()
        .to_string();
    if key.len() < MIN_API_KEY_LEN {
        return Err(unusable("`apikey` is shorter than 32 characters"));
    }
    Ok(key)
}

/// The control server's TLS Secret, generated on first use (a CA valid ten
/// years and a certificate for `dns_names`); returns the CA (PEM) to trust.
pub async fn ensure_control_tls(
    client: &Client,
    ns: &str,
    name: &str,
    dns_names: &[String],
) -> Result<Vec<u8>, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = get_or_create(&api, name, || {
        let g = tls::generate_named("meshscale control CA", dns_names, 3650)?;
        let b = |s: String| ByteString(s.into_bytes());
        Ok(secret(
            ns,
            name,
            "kubernetes.io/tls",
            BTreeMap::from([
                ("tls.crt".to_string(), b(g.cert_pem)),
                ("tls.key".to_string(), b(g.key_pem)),
                ("ca.crt".to_string(), b(g.ca_pem)),
            ]),
        ))
    })
    .await?;
    for k in ["tls.crt", "tls.key"] {
        if data(&s, k).is_none() {
            return Err(BootstrapError::Unusable {
                name: name.to_string(),
                problem: format!("no `{k}` entry"),
            });
        }
    }
    data(&s, "ca.crt")
        .map(<[u8]>::to_vec)
        .ok_or_else(|| BootstrapError::Unusable {
            name: name.to_string(),
            problem: "no `ca.crt` entry: the operator cannot verify the control server".into(),
        })
}

/// Creates the MeshUser `name` unless it exists; `true` when created.
pub async fn ensure_mesh_user(client: &Client, name: &str) -> Result<bool, BootstrapError> {
    let api: Api<MeshUser> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(false);
    }
    let mut mu = MeshUser::new(
        name,
        MeshUserSpec {
            name: None,
            display_name: Some("Injected pods".into()),
            email: None,
        },
    );
    mu.labels_mut()
        .insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    match api.create(&PostParams::default(), &mu).await {
        Ok(_) => {
            info!(meshuser = name, "created the injection user");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::FakeApiServer;

    #[tokio::test]
    async fn secrets_are_generated_once_and_then_kept() {
        let fake = FakeApiServer::default();
        let client = fake.client();
        let k1 = ensure_api_key(&client, "mesh", "rel-admin-apikey")
            .await
            .unwrap();
        assert!(k1.starts_with("msboot-") && k1.len() >= MIN_API_KEY_LEN);
        let k2 = ensure_api_key(&client, "mesh", "rel-admin-apikey")
            .await
            .unwrap();
        assert_eq!(k1, k2, "an existing key is kept");
        let names = vec!["rel-control.mesh.svc".to_string()];
        let ca1 = ensure_control_tls(&client, "mesh", "rel-control-tls", &names)
            .await
            .unwrap();
        let ca2 = ensure_control_tls(&client, "mesh", "rel-control-tls", &names)
            .await
            .unwrap();
        assert_eq!(ca1, ca2);
        assert!(
            String::from_utf8(ca1)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        // Brought by the user: used as it is, not replaced.
        fake.put(
            "v1",
            "secrets",
            "mesh",
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "own", "namespace": "mesh"},
                "data": {"apikey": "bXNhcGktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}}),
        );
        assert_eq!(
            ensure_api_key(&client, "mesh", "own").await.unwrap(),
            "msapi-0123456789abcdef0123456789abcdef"
        );
        fake.put(
            "v1",
            "secrets",
            "mesh",
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "weak", "namespace": "mesh"},
                "data": {"apikey": "c2hvcnQ="}}),
        );
        assert!(matches!(
            ensure_api_key(&client, "mesh", "weak").await,
            Err(BootstrapError::Unusable { .. })
        ));
    }

    #[tokio::test]
    async fn the_injection_user_is_created_once() {
        let fake = FakeApiServer::default();
        let client = fake.client();
        assert!(ensure_mesh_user(&client, "k8s").await.unwrap());
        assert!(!ensure_mesh_user(&client, "k8s").await.unwrap());
        assert_eq!(fake.list("meshscale.dev/v1alpha1", "meshusers").len(), 1);
    }
}
