//! The REAL `controller::run` (kube-runtime controllers and watchers) over a
//! REAL kube client that reaches the fake API server through a kubeconfig,
//! over TLS, with watch streams: list, watch from the list's
//! resourceVersion, bookmarks, and 410 Gone → relist. The control server is
//! the in-memory `FakeAdmin`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::Ctx;
use crate::controller;
use crate::crd::{MeshUser, MeshUserSpec};
use crate::fake::FakeAdmin;
use crate::fake_apiserver::{FakeApiServer, TlsServer};
use crate::injectkey::KeyDefaults;
use crate::kubeops::KubeClient;

pub(super) fn install_crypto() {
    // What main() does first; a second install in the same process is refused, harmlessly.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

pub(super) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn keys() -> KeyDefaults {
    KeyDefaults {
        secret_prefix: "meshscale-authkey".into(),
        user: "k8s".into(),
        tags: vec!["tag:k8s".into()],
        namespace_tag_prefix: "tag:k8s-ns-".into(),
        expiration: "30d".into(),
        rotate_before: "7d".into(),
    }
}

pub(super) async fn tls_fake() -> (FakeApiServer, TlsServer, kube::Client) {
    install_crypto();
    let fake = FakeApiServer::default();
    fake.set_bookmark_interval(Duration::from_millis(200));
    let tls = fake.serve_tls().await.expect("serve tls");
    let client = tls.client().await.expect("client");
    (fake, tls, client)
}

fn user(name: &str) -> MeshUser {
    MeshUser::new(
        name,
        MeshUserSpec {
            name: None,
            display_name: None,
            email: None,
        },
    )
}

fn lists_of(fake: &FakeApiServer, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.starts_with(&format!("GET {path}?")) && !r.contains("watch=true"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_run_reconciles_through_tls_watches_bookmarks_and_a_410_relist() {
    let (fake, _tls, client) = tls_fake().await;
    let ctx = Arc::new(Ctx::new(
        FakeAdmin::default(),
        KubeClient::new(client.clone(), "test-0"),
    ));
    let run = tokio::spawn(controller::run(
        client.clone(),
        Arc::clone(&ctx),
        Duration::from_secs(1),
        Arc::new(keys()),
        false,
    ));
    let users: Api<MeshUser> = Api::all(client.clone());
    users
        .create(&PostParams::default(), &user("team-a"))
        .await
        .expect("create");
    // The watch delivers the new object: the user exists on the server and
    // the CR says so.
    eventually("team-a reconciled", || async {
        users
            .get("team-a")
            .await
            .ok()
            .and_then(|u| u.status)
            .is_some_and(|s| s.id.is_some())
    })
    .await;
    assert!(
        ctx.admin
            .state
            .lock()
            .unwrap()
            .users
            .values()
            .any(|u| u.name == "team-a")
    );
    let watch = fake
        .requests()
        .into_iter()
        .find(|r| {
            r.starts_with("GET /apis/meshscale.dev/v1alpha1/meshusers?") && r.contains("watch=true")
        })
        .expect("a MeshUser watch");
    assert!(watch.contains("allowWatchBookmarks=true"), "{watch}");
    assert!(watch.contains("resourceVersion="), "{watch}");

    // History compacted and every watch cut: the resumed watch gets 410 Gone
    // and the watcher lists again; what is created afterwards still arrives.
    let listed = lists_of(&fake, "/apis/meshscale.dev/v1alpha1/meshusers");
    fake.compact();
    fake.close_watches();
    eventually("a relist after 410 Gone", || async {
        lists_of(&fake, "/apis/meshscale.dev/v1alpha1/meshusers") > listed
    })
    .await;
    users
        .create(&PostParams::default(), &user("team-b"))
        .await
        .expect("create");
    eventually("team-b reconciled after the relist", || async {
        users
            .get("team-b")
            .await
            .ok()
            .and_then(|u| u.status)
            .is_some_and(|s| s.id.is_some())
    })
    .await;
    assert!(!run.is_finished(), "the controllers must survive a relist");
    run.abort();
}

/// The fake's watch protocol itself, as kube's watcher expects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_watch_replays_from_a_version_bookmarks_and_answers_410_when_compacted() {
    use futures_util::StreamExt;
    use kube::api::WatchParams;
    use kube::core::WatchEvent;
    let (fake, _tls, client) = tls_fake().await;
    let users: Api<MeshUser> = Api::all(client);
    let a = users
        .create(&PostParams::default(), &user("a"))
        .await
        .expect("create");
    let rv_a: u64 = a
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or("")
        .parse()
        .expect("rv");
    users
        .create(&PostParams::default(), &user("b"))
        .await
        .expect("create");
    users
        .patch_status(
            "b",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {"id": 3}})),
        )
        .await
        .expect("status");
    let mut s = users
        .watch(&WatchParams::default().timeout(10), &rv_a.to_string())
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    let mut last = rv_a;
    while seen.len() < 3 {
        match s.next().await.expect("event").expect("ok") {
            WatchEvent::Added(u) | WatchEvent::Modified(u) => {
                let rv: u64 = u
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap_or("")
                    .parse()
                    .expect("rv");
                assert!(rv > last, "resourceVersions increase");
                last = rv;
                seen.push(u.metadata.name.unwrap_or_default());
            }
            WatchEvent::Bookmark(bm) => {
                let rv: u64 = bm.metadata.resource_version.parse().expect("rv");
                assert!(rv >= last);
                seen.push("bookmark".into());
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(seen, ["b", "b", "bookmark"]);
    fake.compact();
    let mut s = users
        .watch(&WatchParams::default().timeout(10), &rv_a.to_string())
        .await
        .expect("watch")
        .boxed();
    match s.next().await.expect("event").expect("ok") {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        e => panic!("expected 410 Gone, got {e:?}"),
    }
}

/// Through the real kube client: a field the server drops is cleared in the
/// MeshNode (merge patch with an explicit null), and a sync that finds
/// nothing changed sends no patch at all.
#[tokio::test]
async fn meshnode_fields_cleared_on_the_server_clear_and_unchanged_nodes_are_not_patched() {
    let fake = FakeApiServer::default();
    let c = Ctx::new(FakeAdmin::default(), KubeClient::new(fake.client(), "t"));
    c.admin.state.lock().unwrap().next_id = 0;
    let id = c.admin.add_node("", "web-1");
    let expiry = chrono::Utc::now() + chrono::Duration::days(10);
    c.admin
        .state
        .lock()
        .unwrap()
        .nodes
        .get_mut(&id)
        .unwrap()
        .expiry = Some(crate::admin::timestamp(expiry));
    let pods = std::collections::HashMap::new();
    super::nodes::sync(&c, &pods).await.expect("sync");
    let name = crate::crd::mesh_node_name(id);
    let cr = fake
        .get("meshscale.dev/v1alpha1", "meshnodes", "", &name)
        .expect("cr");
    assert!(cr["status"]["expiry"].is_string(), "{cr}");

    // `nodes expire --disable`: the server has no expiry any more.
    c.admin
        .state
        .lock()
        .unwrap()
        .nodes
        .get_mut(&id)
        .unwrap()
        .expiry = None;
    let r = super::nodes::sync(&c, &pods).await.expect("sync");
    assert_eq!(r.updated, 1);
    let cr = fake
        .get("meshscale.dev/v1alpha1", "meshnodes", "", &name)
        .expect("cr");
    assert!(
        cr["status"].get("expiry").is_none_or(|v| v.is_null()),
        "{cr}"
    );

    // Converged: further syncs write nothing.
    let patches = |f: &FakeApiServer| {
        f.requests()
            .iter()
            .filter(|r| r.starts_with("PATCH"))
            .count()
    };
    let before = patches(&fake);
    for _ in 0..3 {
        let r = super::nodes::sync(&c, &pods).await.expect("sync");
        assert_eq!(r, super::nodes::SyncReport::default());
    }
    assert_eq!(patches(&fake), before, "{:?}", fake.requests());
}

fn pak_for(user: &str) -> crate::crd::PreAuthKey {
    let mut p = crate::crd::PreAuthKey::new(
        "inject",
        crate::crd::PreAuthKeySpec {
            user: user.into(),
            reusable: true,
            ephemeral: true,
            expiration: "24h".into(),
            rotate_before: Some("1h".into()),
            tags: vec![crate::crd::Tag("tag:k8s".into())],
            secret_name: "meshscale-authkey".into(),
        },
    );
    p.metadata.namespace = Some("apps".into());
    p
}

/// Bug 4 through the real controller: the PreAuthKey controller watches its
/// Secrets (a label-selected watch); deleting the Secret brings a new key at
/// once, and the old key is expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_key_secret_under_the_running_controller_replaces_and_expires_the_key() {
    use k8s_openapi::api::core::v1::Secret;
    let (_fake, _tls, client) = tls_fake().await;
    let ctx = Arc::new(Ctx::new(
        FakeAdmin::default(),
        KubeClient::new(client.clone(), "test-0"),
    ));
    crate::admin::Admin::create_user(&ctx.admin, "alice", "", "")
        .await
        .expect("user");
    let run = tokio::spawn(controller::run(
        client.clone(),
        Arc::clone(&ctx),
        Duration::from_secs(1),
        Arc::new(keys()),
        false,
    ));
    let paks: Api<crate::crd::PreAuthKey> = Api::namespaced(client.clone(), "apps");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");
    paks.create(&PostParams::default(), &pak_for("alice"))
        .await
        .expect("create");
    let status_id = || async {
        paks.get("inject")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.id)
    };
    eventually("the first key", || async { status_id().await.is_some() }).await;
    let first = status_id().await.expect("id");
    secrets
        .delete("meshscale-authkey", &Default::default())
        .await
        .expect("delete");
    eventually("a new key after the Secret's deletion", || async {
        status_id().await.is_some_and(|id| id != first)
            && secrets
                .get_opt("meshscale-authkey")
                .await
                .ok()
                .flatten()
                .is_some()
    })
    .await;
    assert!(
        ctx.admin
            .state
            .lock()
            .unwrap()
            .expired_keys
            .contains(&first),
        "the old key still works"
    );
    run.abort();
}

/// Bug 5 through the real kube client: while the API server refuses Secret
/// writes, the dry run (a real `dryRun=All` request) fails first, so no key
/// is minted; the PreAuthKey carries the reason and an event says so.
#[tokio::test]
async fn a_refused_secret_write_mints_nothing_and_is_reported_through_the_api() {
    let fake = FakeApiServer::default();
    let client = fake.client();
    let c = Ctx::new(FakeAdmin::default(), KubeClient::new(client.clone(), "t"));
    crate::admin::Admin::create_user(&c.admin, "alice", "", "")
        .await
        .expect("user");
    let paks: Api<crate::crd::PreAuthKey> = Api::namespaced(client.clone(), "apps");
    paks.create(&PostParams::default(), &pak_for("alice"))
        .await
        .expect("create");
    fake.fail_writes("v1", "secrets", true);
    for _ in 0..3 {
        let p = paks.get("inject").await.expect("get");
        assert!(super::pak::reconcile(&p, &c).await.is_err());
    }
    assert!(
        c.admin.state.lock().unwrap().keys.is_empty(),
        "a key was minted"
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains("/secrets/meshscale-authkey?") && r.contains("dryRun=All")),
        "{:?}",
        fake.requests()
    );
    let p = paks.get("inject").await.expect("get");
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretWriteFailed")
    );
    assert!(
        fake.list("events.k8s.io/v1", "events")
            .iter()
            .any(|e| e["reason"] == "SecretWriteFailed")
    );
    // A dry run leaves nothing behind.
    assert!(
        fake.get("v1", "secrets", "apps", "meshscale-authkey")
            .is_none()
    );
    fake.fail_writes("v1", "secrets", false);
    let p = paks.get("inject").await.expect("get");
    super::pak::reconcile(&p, &c).await.expect("reconcile");
    assert!(
        fake.get("v1", "secrets", "apps", "meshscale-authkey")
            .is_some()
    );
    assert_eq!(c.admin.state.lock().unwrap().keys.len(), 1);
}
