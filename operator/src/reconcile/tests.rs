//! Reconcilers against the in-memory control server and Kubernetes API.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::json;

use super::*;
use crate::admin::{Admin, timestamp};
use crate::conditions::{self, READY, SYNCED};
use crate::crd::{MeshNode, MeshNodeSpec, MeshUser, MeshUserSpec, PreAuthKey, PreAuthKeySpec, Tag};
use crate::fake::{FakeAdmin, FakeKube};
use crate::kubeops::FINALIZER;
use crate::reconcile::pak::{ANN_KEY_ID, SECRET_KEY};

type TestCtx = Ctx<FakeAdmin, FakeKube>;

fn ctx() -> TestCtx {
    Ctx::new(FakeAdmin::default(), FakeKube::default())
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn meshuser(name: &str) -> MeshUser {
    let mut mu = MeshUser::new(
        name,
        MeshUserSpec {
            name: None,
            display_name: Some("Alice".into()),
            email: None,
        },
    );
    mu.metadata.generation = Some(1);
    mu
}

/// What the API server would now hand the reconciler: finalizers and status as written.
fn refreshed_user(mu: &MeshUser, c: &TestCtx) -> MeshUser {
    let s = c.kube.state.lock().unwrap();
    let mut mu = mu.clone();
    mu.metadata.finalizers = s
        .user_finalizers
        .get(&mu.metadata.name.clone().unwrap())
        .cloned();
    mu.status = s
        .user_status
        .get(&mu.metadata.name.clone().unwrap())
        .cloned();
    mu
}

fn pak(name: &str, user: &str) -> PreAuthKey {
    let mut p = PreAuthKey::new(
        name,
        PreAuthKeySpec {
            user: user.into(),
            reusable: true,
            ephemeral: true,
            expiration: "24h".into(),
            rotate_before: Some("1h".into()),
            tags: vec![Tag("tag:k8s".into())],
            secret_name: "meshscale-authkey".into(),
        },
    );
    p.metadata.namespace = Some("apps".into());
    p.metadata.uid = Some("uid-1".into());
    p.metadata.generation = Some(1);
    p
}

fn refreshed_pak(p: &PreAuthKey, c: &TestCtx) -> PreAuthKey {
    let s = c.kube.state.lock().unwrap();
    let key = format!("apps/{}", p.metadata.name.clone().unwrap());
    let mut p = p.clone();
    p.metadata.finalizers = s.pak_finalizers.get(&key).cloned();
    p.status = s.pak_status.get(&key).cloned();
    p
}

async fn with_user(c: &TestCtx, name: &str) -> u64 {
    c.admin.create_user(name, "", "").await.unwrap().id
}

#[tokio::test]
async fn meshuser_creates_the_user_once_and_adopts_it_afterwards() {
    let c = ctx();
    let mu = meshuser("alice");
    let action = user::reconcile(&mu, &c).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let mu = refreshed_user(&mu, &c);
    assert_eq!(mu.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    let status = mu.status.clone().unwrap();
    assert!(status.id.is_some());
    assert!(conditions::is_true(&status.conditions, READY));
    assert_eq!(
        conditions::reason(&status.conditions, READY),
        Some("Created")
    );
    for _ in 0..3 {
        user::reconcile(&mu, &c).await.unwrap();
    }
    let s = c.admin.state.lock().unwrap();
    assert_eq!(s.users.len(), 1);
    assert_eq!(s.create_user_calls, 1);
    let st = c.kube.state.lock().unwrap().user_status["alice"].clone();
    assert_eq!(conditions::reason(&st.conditions, READY), Some("Exists"));
}

#[tokio::test]
async fn concurrent_meshuser_reconciles_never_make_two_users() {
    let c = Arc::new(ctx());
    let mu = meshuser("bob");
    let (a, b, d) = tokio::join!(
        user::reconcile(&mu, &c),
        user::reconcile(&mu, &c),
        user::reconcile(&mu, &c)
    );
    assert!(a.is_ok() && b.is_ok() && d.is_ok());
    assert_eq!(c.admin.state.lock().unwrap().users.len(), 1);
}

#[tokio::test]
async fn deleting_a_meshuser_expels_its_nodes_deletes_the_user_and_releases_the_finalizer() {
    let c = ctx();
    let mu = meshuser("carol");
    user::reconcile(&mu, &c).await.unwrap();
    c.admin.add_node("carol", "laptop");
    c.admin.add_node("carol", "phone");
    let mut mu = refreshed_user(&mu, &c);
    user::reconcile(&mu, &c).await.unwrap();
    assert_eq!(
        c.kube.state.lock().unwrap().user_status["carol"].node_count,
        2
    );
    mu.metadata.deletion_timestamp = Some(now_time());
    assert_eq!(
        user::reconcile(&mu, &c).await.unwrap(),
        Action::await_change()
    );
    let s = c.admin.state.lock().unwrap();
    assert!(s.users.is_empty());
    assert!(s.nodes.is_empty());
    assert_eq!(
        c.kube.state.lock().unwrap().user_finalizers["carol"],
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn control_server_down_reports_unreachable_and_recovers() {
    let c = ctx();
    let mu = meshuser("dave");
    c.admin.set_down(true);
    let err = user::reconcile(&mu, &c).await.unwrap_err();
    assert!(matches!(
        err,
        ReconcileError::Admin(crate::admin::AdminError::Unavailable(_))
    ));
    let st = c.kube.state.lock().unwrap().user_status["dave"].clone();
    assert_eq!(
        conditions::reason(&st.conditions, SYNCED),
        Some("ControlServerUnreachable")
    );
    assert!(!conditions::is_true(&st.conditions, READY));
    // The back-off the controller's error policy applies grows per object.
    let delays: Vec<Duration> = (0..3).map(|_| c.backoff.fail("MeshUser/dave")).collect();
    assert!(delays[0] < delays[1] && delays[1] < delays[2]);
    c.admin.set_down(false);
    let mu = refreshed_user(&mu, &c);
    user::reconcile(&mu, &c).await.unwrap();
    let st = c.kube.state.lock().unwrap().user_status["dave"].clone();
    assert!(conditions::is_true(&st.conditions, SYNCED));
    assert!(conditions::is_true(&st.conditions, READY));
    assert_eq!(c.admin.state.lock().unwrap().users.len(), 1);
}

/// Collects everything the reconcilers log, to check no key ever shows up.
#[derive(Clone, Default)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn preauthkey_value_goes_only_into_the_secret_and_is_not_reissued() {
    let sink = LogSink::default();
    let w = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let c = ctx();
    with_user(&c, "alice").await;
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    let secret = c.kube.state.lock().unwrap().secrets["apps/meshscale-authkey"].clone();
    let value = String::from_utf8(secret.data.as_ref().unwrap()[SECRET_KEY].0.clone()).unwrap();
    assert!(value.starts_with("mskey-secret-"));
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("PreAuthKey", "uid-1")
    );

    let p = refreshed_pak(&p, &c);
    let status = p.status.clone().unwrap();
    assert!(status.id.is_some() && status.expires_at.is_some() && !status.used);
    assert!(conditions::is_true(&status.conditions, READY));
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(!status_json.contains(&value));
    // Reconciling again (or after a restart) keeps the same key.
    for _ in 0..3 {
        pak::reconcile(&refreshed_pak(&p, &c), &c).await.unwrap();
    }
    assert_eq!(c.admin.state.lock().unwrap().keys.len(), 1);
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("pre-auth key issued"), "{logs}");
    assert!(!logs.contains(&value));
}

#[tokio::test]
async fn preauthkey_is_reissued_before_expiry() {
    let c = ctx();
    with_user(&c, "alice").await;
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    let first = refreshed_pak(&p, &c).status.unwrap().id.unwrap();
    // Forty minutes left, and the spec says rotate an hour before expiry.
    c.admin
        .state
        .lock()
        .unwrap()
        .keys
        .get_mut(&first)
        .unwrap()
        .expiration = Some(timestamp(
        chrono::Utc::now() + chrono::Duration::minutes(40),
    ));
    pak::reconcile(&refreshed_pak(&p, &c), &c).await.unwrap();
    let second = refreshed_pak(&p, &c).status.unwrap().id.unwrap();
    assert_ne!(first, second);
    let secret = c.kube.state.lock().unwrap().secrets["apps/meshscale-authkey"].clone();
    let ann = secret.metadata.annotations.unwrap();
    assert_eq!(ann[ANN_KEY_ID], second.to_string());
}

#[tokio::test]
async fn preauthkey_adopts_the_key_in_its_secret_after_a_crash_before_the_status_write() {
    let c = ctx();
    with_user(&c, "alice").await;
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    // The status write was lost: the reconciler sees no status at all.
    let mut again = refreshed_pak(&p, &c);
    again.status = None;
    pak::reconcile(&again, &c).await.unwrap();
    assert_eq!(c.admin.state.lock().unwrap().keys.len(), 1);
}

#[tokio::test]
async fn preauthkey_with_bad_durations_is_reported_and_not_retried() {
    let c = ctx();
    with_user(&c, "alice").await;
    let mut p = pak("inject", "alice");
    p.spec.rotate_before = Some("48h".into());
    assert_eq!(
        pak::reconcile(&p, &c).await.unwrap(),
        Action::await_change()
    );
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert_eq!(
        conditions::reason(&st.conditions, READY),
        Some("InvalidSpec")
    );
    p.spec.rotate_before = None;
    p.spec.expiration = "soon".into();
    assert_eq!(
        pak::reconcile(&p, &c).await.unwrap(),
        Action::await_change()
    );
    assert!(c.admin.state.lock().unwrap().keys.is_empty());
}

#[tokio::test]
async fn preauthkey_for_a_missing_user_waits_for_it() {
    let c = ctx();
    let p = pak("inject", "nobody");
    let action = pak::reconcile(&p, &c).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert_eq!(
        conditions::reason(&st.conditions, READY),
        Some("UserNotFound")
    );
}

#[tokio::test]
async fn preauthkey_whose_secret_cannot_be_written_leaves_no_working_key() {
    let c = ctx();
    with_user(&c, "alice").await;
    c.kube.state.lock().unwrap().fail_secret_writes = true;
    assert!(pak::reconcile(&pak("inject", "alice"), &c).await.is_err());
    let s = c.admin.state.lock().unwrap();
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.expired_keys, s.keys.keys().copied().collect::<Vec<_>>());
}

#[tokio::test]
async fn preauthkey_never_overwrites_a_secret_it_does_not_own() {
    let c = ctx();
    with_user(&c, "alice").await;
    let foreign: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "meshscale-authkey", "namespace": "apps"}}),
    )
    .unwrap();
    c.kube
        .state
        .lock()
        .unwrap()
        .secrets
        .insert("apps/meshscale-authkey".into(), foreign);
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert_eq!(
        conditions::reason(&st.conditions, READY),
        Some("SecretConflict")
    );
    assert!(c.admin.state.lock().unwrap().keys.is_empty());
}

#[tokio::test]
async fn deleting_a_preauthkey_expires_its_key() {
    let c = ctx();
    with_user(&c, "alice").await;
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    let mut p = refreshed_pak(&p, &c);
    let id = p.status.as_ref().unwrap().id.unwrap();
    p.metadata.deletion_timestamp = Some(now_time());
    pak::reconcile(&p, &c).await.unwrap();
    assert_eq!(c.admin.state.lock().unwrap().expired_keys, vec![id]);
    assert_eq!(
        c.kube.state.lock().unwrap().pak_finalizers["apps/inject"],
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn meshnodes_mirror_the_node_table_both_ways() {
    let c = ctx();
    with_user(&c, "alice").await;
    let a = c.admin.add_node("alice", "web-7f9c-abcde");
    let b = c.admin.add_node("alice", "laptop");
    let pods = std::collections::HashMap::from([(
        "web-7f9c-abcde".to_string(),
        "apps/web-7f9c-abcde".to_string(),
    )]);
    let r = nodes::sync(&c, &pods).await.unwrap();
    assert_eq!(r.created, 2);
    {
        let s = c.kube.state.lock().unwrap();
        let mn = &s.nodes[&crate::crd::mesh_node_name(a)];
        let st = mn.status.as_ref().unwrap();
        assert_eq!(st.hostname, "web-7f9c-abcde");
        assert_eq!(st.user, "alice");
        assert_eq!(st.pod.as_deref(), Some("apps/web-7f9c-abcde"));
    }
    // Unchanged: nothing to write.
    assert_eq!(
        nodes::sync(&c, &pods).await.unwrap(),
        nodes::SyncReport::default()
    );
    // Node goes offline in the server: status follows.
    c.admin
        .state
        .lock()
        .unwrap()
        .nodes
        .get_mut(&b)
        .unwrap()
        .online = false;
    assert_eq!(nodes::sync(&c, &pods).await.unwrap().updated, 1);
    // Deleting the CR deletes the node.
    let mut mn = c.kube.state.lock().unwrap().nodes[&crate::crd::mesh_node_name(b)].clone();
    mn.metadata.deletion_timestamp = Some(now_time());
    c.kube
        .state
        .lock()
        .unwrap()
        .nodes
        .insert(crate::crd::mesh_node_name(b), mn.clone());
    nodes::reconcile(&mn, &c).await.unwrap();
    assert!(!c.admin.state.lock().unwrap().nodes.contains_key(&b));
    assert!(
        !c.kube
            .state
            .lock()
            .unwrap()
            .nodes
            .contains_key(&crate::crd::mesh_node_name(b))
    );
    // A node removed in the server loses its CR without another DeleteNode.
    c.admin.state.lock().unwrap().nodes.remove(&a);
    assert_eq!(nodes::sync(&c, &pods).await.unwrap().deleted, 1);
    assert!(c.kube.state.lock().unwrap().nodes.is_empty());
}

#[tokio::test]
async fn a_meshnode_for_a_node_already_gone_is_released() {
    let c = ctx();
    let mut mn = MeshNode::new("node-99", MeshNodeSpec { node_id: 99 });
    mn.metadata.finalizers = Some(vec![FINALIZER.into()]);
    mn.metadata.deletion_timestamp = Some(now_time());
    c.kube
        .state
        .lock()
        .unwrap()
        .nodes
        .insert("node-99".into(), mn.clone());
    nodes::reconcile(&mn, &c).await.unwrap();
    assert!(c.kube.state.lock().unwrap().nodes.is_empty());
}

#[tokio::test]
async fn a_gone_pod_takes_its_node_with_it() {
    let c = ctx();
    with_user(&c, "alice").await;
    c.admin.add_node("alice", "web-7f9c-abcde");
    let other = c.admin.add_node("alice", "web-7f9c-zzzzz");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-7f9c-abcde", "namespace": "apps"},
        "spec": {
            "initContainers": [{"name": "meshscale-sidecar", "image": "x", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "y"}]
        }
    }))
    .unwrap();
    assert!(pods::is_injected(&pod));
    assert_eq!(pods::pod_gone(&pod, None, &c).await.unwrap(), 1);
    let s = c.admin.state.lock().unwrap();
    assert_eq!(s.nodes.keys().copied().collect::<Vec<_>>(), vec![other]);
}
