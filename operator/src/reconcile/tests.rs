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
    {
        let s = c.admin.state.lock().unwrap();
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.create_user_calls, 1);
    }
    // The reason tells how the user came to be and stays so: the reconcile
    // its own status write triggers must not flip it to Exists.
    let st = c.kube.state.lock().unwrap().user_status["alice"].clone();
    assert_eq!(conditions::reason(&st.conditions, READY), Some("Created"));
    // A MeshUser for a user that already exists adopts it: Exists.
    let other = MeshUser::new(
        "alice-again",
        MeshUserSpec {
            name: Some("alice".into()),
            display_name: None,
            email: None,
        },
    );
    user::reconcile(&other, &c).await.unwrap();
    let st = c.kube.state.lock().unwrap().user_status["alice-again"].clone();
    assert_eq!(conditions::reason(&st.conditions, READY), Some("Exists"));
}

#[tokio::test]
async fn meshuser_node_count_follows_the_node_sync_and_unchanged_counts_are_not_written() {
    let c = ctx();
    let mu = meshuser("alice");
    user::reconcile(&mu, &c).await.unwrap();
    let mu = refreshed_user(&mu, &c);
    assert_eq!(mu.status.as_ref().unwrap().node_count, 0);
    c.kube
        .state
        .lock()
        .unwrap()
        .users
        .insert("alice".into(), mu.clone());
    c.admin.add_node("alice", "web-1");
    c.admin.add_node("alice", "web-2");
    nodes::sync(&c, &Default::default()).await.unwrap();
    let count = |c: &TestCtx| {
        c.kube.state.lock().unwrap().users["alice"]
            .status
            .as_ref()
            .unwrap()
            .node_count
    };
    assert_eq!(count(&c), 2);
    // Nothing changed: no status write at all.
    c.kube.state.lock().unwrap().user_status.clear();
    nodes::sync(&c, &Default::default()).await.unwrap();
    assert!(c.kube.state.lock().unwrap().user_status.is_empty());
    let first = c
        .admin
        .state
        .lock()
        .unwrap()
        .nodes
        .keys()
        .copied()
        .next()
        .unwrap();
    c.admin.delete_node(first).await.unwrap();
    nodes::sync(&c, &Default::default()).await.unwrap();
    assert_eq!(count(&c), 1);
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
    // The outage and the recovery are both visible in `kubectl describe`.
    assert_eq!(
        c.kube.reasons(),
        vec!["ControlServerUnreachable", "UserCreated"]
    );
    let s = c.kube.state.lock().unwrap();
    assert!(s.events[0].1.warning);
    assert_eq!(s.events[0].0, "MeshUser//dave");
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
async fn preauthkey_whose_secret_cannot_be_written_says_so_and_mints_nothing() {
    let c = ctx();
    with_user(&c, "alice").await;
    c.kube.state.lock().unwrap().fail_secret_writes = true;
    let p = pak("inject", "alice");
    for _ in 0..3 {
        assert!(pak::reconcile(&refreshed_pak(&p, &c), &c).await.is_err());
    }
    // The dry run refused the write: no key minted (and none to expire) on any retry.
    assert_eq!(c.admin.state.lock().unwrap().keys.len(), 0);
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert_eq!(
        conditions::reason(&st.conditions, READY),
        Some("SecretWriteFailed")
    );
    assert!(!conditions::is_true(&st.conditions, READY));
    assert!(c.kube.reasons().contains(&"SecretWriteFailed"));
    // Fixed (e.g. the RBAC rule added): the next retry issues the key.
    c.kube.state.lock().unwrap().fail_secret_writes = false;
    pak::reconcile(&refreshed_pak(&p, &c), &c).await.unwrap();
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert!(conditions::is_true(&st.conditions, READY));
    assert_eq!(c.admin.state.lock().unwrap().keys.len(), 1);
}

#[tokio::test]
async fn preauthkey_whose_secret_write_fails_after_the_dry_run_leaves_no_working_key() {
    let c = ctx();
    with_user(&c, "alice").await;
    c.kube.state.lock().unwrap().fail_secret_apply = true;
    let p = pak("inject", "alice");
    assert!(pak::reconcile(&p, &c).await.is_err());
    let s = c.admin.state.lock().unwrap();
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.expired_keys, s.keys.keys().copied().collect::<Vec<_>>());
    drop(s);
    let st = refreshed_pak(&p, &c).status.unwrap();
    assert_eq!(
        conditions::reason(&st.conditions, READY),
        Some("SecretWriteFailed")
    );
}

#[tokio::test]
async fn deleting_the_key_secret_issues_a_new_key_and_expires_the_old_one() {
    let c = ctx();
    with_user(&c, "alice").await;
    let p = pak("inject", "alice");
    pak::reconcile(&p, &c).await.unwrap();
    let old = refreshed_pak(&p, &c).status.unwrap().id.unwrap();
    c.kube
        .state
        .lock()
        .unwrap()
        .secrets
        .remove("apps/meshscale-authkey");
    pak::reconcile(&refreshed_pak(&p, &c), &c).await.unwrap();
    let new = refreshed_pak(&p, &c).status.unwrap().id.unwrap();
    assert_ne!(old, new);
    assert_eq!(c.admin.state.lock().unwrap().expired_keys, vec![old]);
    let secret = c.kube.state.lock().unwrap().secrets["apps/meshscale-authkey"].clone();
    assert_eq!(
        secret.metadata.annotations.unwrap()[ANN_KEY_ID],
        new.to_string()
    );
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
    let a = c.admin.add_node("alice", "web-7f9c-abcde-apps");
    let b = c.admin.add_node("alice", "laptop");
    c.admin
        .state
        .lock()
        .unwrap()
        .nodes
        .get_mut(&a)
        .unwrap()
        .tags = vec!["tag:k8s".into(), "tag:k8s-ns-apps".into()];
    // Keyed by the sidecar's hostname, `<pod>-<namespace>`.
    let pods = std::collections::HashMap::from([(
        "web-7f9c-abcde-apps".to_string(),
        "apps/web-7f9c-abcde".to_string(),
    )]);
    let r = nodes::sync(&c, &pods).await.unwrap();
    assert_eq!(r.created, 2);
    {
        let s = c.kube.state.lock().unwrap();
        let mn = &s.nodes[&crate::crd::mesh_node_name(a)];
        let st = mn.status.as_ref().unwrap();
        assert_eq!(st.hostname, "web-7f9c-abcde-apps");
        assert_eq!(st.user, "alice");
        assert_eq!(st.pod.as_deref(), Some("apps/web-7f9c-abcde"));
        // The node's identity in the policy, shown by `kubectl get meshnodes`.
        assert_eq!(st.tags, ["tag:k8s", "tag:k8s-ns-apps"]);
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
    c.admin.add_node("alice", "web-7f9c-abcde-apps");
    // The same pod name in another namespace is another node.
    let same_name = c.admin.add_node("alice", "web-7f9c-abcde-other");
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
    assert_eq!(
        s.nodes.keys().copied().collect::<Vec<_>>(),
        vec![same_name, other]
    );
}

fn node_at(id: u64, hostname: &str, created: Option<i64>) -> crate::admin::Node {
    crate::admin::Node {
        id,
        name: hostname.into(),
        created_at: created.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    }
}

fn recorded(id: u64, pod: Option<&str>) -> MeshNode {
    let mut mn = MeshNode::new(
        &crate::crd::mesh_node_name(id),
        crate::crd::MeshNodeSpec { node_id: id },
    );
    mn.status = Some(crate::crd::MeshNodeStatus {
        pod: pod.map(Into::into),
        ..Default::default()
    });
    mn
}

#[test]
fn stale_nodes_are_those_of_gone_pods_and_older_namesakes_only() {
    let t0 = 1_700_000_000;
    let live = std::collections::HashMap::from([(
        "db-0-apps".to_string(),
        pods::LivePod {
            pod: "apps/db-0".into(),
            created: chrono::DateTime::from_timestamp(t0, 0),
        },
    )]);
    let nodes = vec![
        node_at(1, "web-1-apps", Some(t0 - 100)), // recorded pod, now gone
        node_at(2, "laptop", Some(t0 - 100)),     // never a pod
        node_at(3, "db-0-apps", Some(t0 - 50)),   // the StatefulSet pod's predecessor
        node_at(4, "db-0-apps", Some(t0 + 5)),    // the live pod's own node
        node_at(7, "db-0-apps", Some(t0 - 10)),   // its own too, behind a skewed clock
        node_at(5, "db-0-apps", None),            // unknown age: kept
        node_at(6, "api-1-apps", Some(t0 - 100)), // gone pod never recorded: kept
    ];
    let recorded = vec![
        recorded(1, Some("apps/web-1")),
        recorded(2, None),
        recorded(4, Some("apps/db-0")),
    ];
    assert_eq!(pods::stale_nodes(&nodes, &recorded, &live), vec![1, 3]);
}

#[tokio::test]
async fn resync_deletes_nodes_of_pods_gone_while_the_operator_was_down() {
    let c = ctx();
    with_user(&c, "alice").await;
    let gone = c.admin.add_node("alice", "web-1-apps");
    let kept = c.admin.add_node("alice", "laptop");
    let live_node = c.admin.add_node("alice", "web-2-apps");
    // A previous operator recorded both pods in the MeshNodes.
    let pods_then = std::collections::HashMap::from([
        ("web-1-apps".to_string(), "apps/web-1".to_string()),
        ("web-2-apps".to_string(), "apps/web-2".to_string()),
    ]);
    nodes::sync(&c, &pods_then).await.unwrap();
    // Now only web-2 is alive.
    let live = std::collections::HashMap::from([(
        "web-2-apps".to_string(),
        pods::LivePod {
            pod: "apps/web-2".into(),
            created: None,
        },
    )]);
    assert_eq!(pods::resync(&live, &c).await.unwrap(), 1);
    let s = c.admin.state.lock().unwrap();
    assert!(!s.nodes.contains_key(&gone));
    assert!(s.nodes.contains_key(&kept) && s.nodes.contains_key(&live_node));
}

#[tokio::test]
async fn an_injected_pod_gets_its_namespace_key_once_and_user_pods_their_own() {
    let c = ctx();
    let d = crate::webhook::patch::tests::cfg().keys;
    let pod = |name: &str, ann: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps", "annotations": ann},
        }))
        .unwrap()
    };
    let a = pods::ensure_injection_key(&pod("a", json!({})), &d, &c)
        .await
        .unwrap();
    let b = pods::ensure_injection_key(&pod("b", json!({})), &d, &c)
        .await
        .unwrap();
    assert_eq!(a.as_deref(), Some("meshscale-authkey"));
    assert_eq!(a, b);
    let team =
        pods::ensure_injection_key(&pod("c", json!({"meshscale.dev/user": "team-a"})), &d, &c)
            .await
            .unwrap()
            .unwrap();
    let bad = pods::ensure_injection_key(&pod("d", json!({"meshscale.dev/tags": "nope"})), &d, &c)
        .await
        .unwrap();
    assert_eq!(bad, None);
    // A key made before namespace tags existed gets them (and is then reissued).
    c.kube
        .state
        .lock()
        .unwrap()
        .paks
        .get_mut("apps/meshscale-authkey")
        .unwrap()
        .tags = vec![Tag("tag:k8s".into())];
    pods::ensure_injection_key(&pod("e", json!({})), &d, &c)
        .await
        .unwrap();
    let s = c.kube.state.lock().unwrap();
    assert_eq!(s.paks.len(), 2);
    let spec = &s.paks["apps/meshscale-authkey"];
    assert!(spec.reusable && spec.ephemeral);
    assert_eq!(spec.user, "k8s");
    assert_eq!(spec.secret_name, "meshscale-authkey");
    // Every pod of the namespace carries its namespace tag too.
    assert_eq!(
        spec.tags,
        vec![Tag("tag:k8s".into()), Tag("tag:k8s-ns-apps".into())]
    );
    assert_eq!(s.paks[&format!("apps/{team}")].user, "team-a");
}
