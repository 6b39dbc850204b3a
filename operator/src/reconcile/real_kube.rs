//! The reconcile functions the controller calls, over the REAL `KubeClient`
//! (kube `Api`s, the event `Recorder`) talking to the in-process fake API
//! server (`fake_apiserver.rs`), and the REAL gRPC admin client talking to a
//! REAL `meshscale serve` on loopback. No watches: each step reads the object
//! back from the fake API and calls the reconciler, as the controller would on
//! the watch event.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::real_server::{RealServer, users_named};
use super::{Ctx, ReconcileError, pak, pods, user};
use crate::admin::{Admin, AdminError};
use crate::crd::{MeshUser, MeshUserSpec, PreAuthKey, PreAuthKeySpec, Tag};
use crate::fake_apiserver::FakeApiServer;
use crate::kubeops::{FINALIZER, KubeClient};

fn condition<'a>(c: &'a [crate::crd::Condition], type_: &str) -> Option<&'a crate::crd::Condition> {
    c.iter().find(|c| c.type_ == type_)
}

fn event_reasons(api: &FakeApiServer) -> Vec<String> {
    api.list("events.k8s.io/v1", "events")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kube_client_and_real_server_drive_crs_through_create_update_outage_and_delete() {
    let mut s = RealServer::start().await;
    let fake = FakeApiServer::default();
    let client = fake.client();
    let c = Ctx::new(s.admin().await, KubeClient::new(client.clone(), "test-0"));
    let users: Api<MeshUser> = Api::all(client.clone());
    let paks: Api<PreAuthKey> = Api::namespaced(client.clone(), "apps");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");

    // MeshUser created (as `kubectl apply` would) → user on the server,
    // finalizer on, status Ready with the server's id.
    let mu = MeshUser::new(
        "team-a",
        MeshUserSpec {
            name: None,
            display_name: Some("Team A".into()),
            email: Some("a@example.com".into()),
        },
    );
    users
        .create(&PostParams::default(), &mu)
        .await
        .expect("create");
    let mu = users.get("team-a").await.expect("get");
    user::reconcile(&mu, &c).await.expect("reconcile");
    let mu = users.get("team-a").await.expect("get");
    assert!(
        mu.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER)
    );
    let list = s.json(&["users", "list"]).await;
    assert_eq!(users_named(&list, "team-a"), 1, "{list}");
    let server_id = c
        .admin
        .find_user("team-a")
        .await
        .expect("find")
        .expect("user")
        .id;
    let st = mu.status.clone().expect("status");
    assert_eq!(st.id, Some(server_id));
    let ready = condition(&st.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Created")
    );
    assert_eq!(ready.observed_generation, Some(1));
    // The finalizer patch went to the object, the status to `/status`.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("PATCH /apis/meshscale.dev/v1alpha1/meshusers/team-a?")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("PATCH /apis/meshscale.dev/v1alpha1/meshusers/team-a/status?")),
        "{reqs:?}"
    );

    // Update: a spec change bumps the generation; the reconcile adopts the
    // existing user (no second one) and records the new generation.
    users
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"displayName": "Team A!"}})),
        )
        .await
        .expect("update");
    let mu = users.get("team-a").await.expect("get");
    assert_eq!(mu.metadata.generation, Some(2));
    user::reconcile(&mu, &c).await.expect("reconcile update");
    let mu = users.get("team-a").await.expect("get");
    let st = mu.status.clone().expect("status");
    let ready = condition(&st.conditions, "Ready").expect("Ready");
    // The reason stays what it was at creation; the generation moves on.
    assert_eq!(
        (ready.reason.as_str(), ready.observed_generation),
        ("Created", Some(2))
    );
    assert_eq!(users_named(&s.json(&["users", "list"]).await, "team-a"), 1);

    // PreAuthKey created → key issued into the Secret (owned by the CR), status id.
    let mut p = PreAuthKey::new(
        "inject",
        PreAuthKeySpec {
            user: "team-a".into(),
            reusable: true,
            ephemeral: true,
            expiration: "24h".into(),
            rotate_before: Some("1h".into()),
            tags: vec![Tag("tag:k8s".into())],
            secret_name: "meshscale-authkey".into(),
        },
    );
    p.metadata.namespace = Some("apps".into());
    paks.create(&PostParams::default(), &p)
        .await
        .expect("create pak");
    let p = paks.get("inject").await.expect("get");
    pak::reconcile(&p, &c).await.expect("reconcile pak");
    let p = paks.get("inject").await.expect("get");
    assert!(
        p.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER)
    );
    let id = p.status.as_ref().and_then(|st| st.id).expect("status id");
    let secret = secrets.get("meshscale-authkey").await.expect("secret");
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(pak::SECRET_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .expect("key in the Secret");
    assert!(key.starts_with("mskey-auth-"), "not a pre-auth key");
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get(pak::ANN_KEY_ID), Some(&id.to_string()));
    let owner = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.uid.clone()), p.metadata.uid.clone());
    let keys = c.admin.list_pre_auth_keys(server_id).await.expect("keys");
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![id]);
    // The key is in the Secret only: not in the CR nor in any event.
    let cr = fake.get("meshscale.dev/v1alpha1", "preauthkeys", "apps", "inject");
    assert!(!cr.expect("cr").to_string().contains(&key));
    let events = fake.list("events.k8s.io/v1", "events");
    assert!(
        !serde_json::to_string(&events)
            .unwrap_or_default()
            .contains(&key)
    );
    // Reconciled again: the same key is kept.
    pak::reconcile(&p, &c).await.expect("second reconcile");
    let again = secrets.get("meshscale-authkey").await.expect("secret");
    assert_eq!(again.data, secret.data, "key re-issued");

    // The control server down: the reconcile fails with Unavailable and the
    // status says ControlServerUnreachable (Ready stays: the user is known).
    s.stop().await;
    let mu = users.get("team-a").await.expect("get");
    let r = user::reconcile(&mu, &c).await;
    assert!(
        matches!(r, Err(ReconcileError::Admin(AdminError::Unavailable(_)))),
        "{r:?}"
    );
    let mu = users.get("team-a").await.expect("get");
    let st = mu.status.clone().expect("status");
    let synced = condition(&st.conditions, "Synced").expect("Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "ControlServerUnreachable")
    );
    assert_eq!(
        condition(&st.conditions, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(
        event_reasons(&fake)
            .iter()
            .any(|r| r == "ControlServerUnreachable")
    );
    let p = paks.get("inject").await.expect("get");
    let r = pak::reconcile(&p, &c).await;
    assert!(
        matches!(r, Err(ReconcileError::Admin(AdminError::Unavailable(_)))),
        "{r:?}"
    );

    // Up again: the next reconcile recovers, Synced again, same user.
    s.spawn().await;
    let mut last = None;
    for _ in 0..50 {
        let mu = users.get("team-a").await.expect("get");
        match user::reconcile(&mu, &c).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "no recovery: {last:?}");
    let mu = users.get("team-a").await.expect("get");
    let st = mu.status.clone().expect("status");
    let synced = condition(&st.conditions, "Synced").expect("Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("True", "Synced")
    );
    assert_eq!(st.id, Some(server_id));

    // A deleted injected pod takes its node with it (as the pod watch calls
    // `pod_gone` with the deleted object).
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "apps"},
        "spec": {"initContainers": [{"name": crate::webhook::patch::SIDECAR_NAME}],
                 "containers": [{"name": "app"}]}
    }))
    .expect("pod");
    pods_api
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    s.add_node("team-a", &pods::hostname_of(&pod)).await;
    s.add_node("team-a", "web-2-apps").await;
    let gone = pods_api
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("delete pod")
        .left()
        .expect("deleted pod");
    assert!(pods_api.get_opt("web-1").await.expect("get").is_none());
    assert_eq!(pods::pod_gone(&gone, None, &c).await.expect("pod gone"), 1);
    let nodes = c.admin.list_nodes("team-a").await.expect("nodes");
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["web-2-apps"]
    );

    // PreAuthKey deleted: the finalizer expires the key, then the CR goes.
    paks.delete("inject", &DeleteParams::default())
        .await
        .expect("delete pak");
    let p = paks.get("inject").await.expect("still there: finalizer");
    assert!(p.metadata.deletion_timestamp.is_some());
    pak::reconcile(&p, &c).await.expect("finalize pak");
    assert!(paks.get_opt("inject").await.expect("get").is_none());
    let keys = c.admin.list_pre_auth_keys(server_id).await.expect("keys");
    let exp = keys
        .iter()
        .find(|k| k.id == id)
        .and_then(|k| k.expiration.as_ref())
        .and_then(crate::admin::from_timestamp)
        .expect("expiration");
    assert!(exp <= chrono::Utc::now(), "key not expired: {exp}");

    // MeshUser deleted: deletionTimestamp set, the finalizer deletes the user
    // (and its remaining node) on the server, then the CR is gone.
    users
        .delete("team-a", &DeleteParams::default())
        .await
        .expect("delete");
    let mu = users.get("team-a").await.expect("still there: finalizer");
    assert!(mu.metadata.deletion_timestamp.is_some());
    user::reconcile(&mu, &c).await.expect("finalize user");
    assert!(users.get_opt("team-a").await.expect("get").is_none());
    assert_eq!(users_named(&s.json(&["users", "list"]).await, "team-a"), 0);
    let nodes = s.json(&["nodes", "list"]).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(0), "{nodes}");
    let reasons = event_reasons(&fake);
    for want in ["UserCreated", "KeyIssued", "UserDeleted"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} not in {reasons:?}"
        );
    }
}

/// The fake's own semantics the test above relies on.
#[tokio::test]
async fn fake_apiserver_finalizers_resource_versions_and_status_subresource() {
    let fake = FakeApiServer::default();
    let users: Api<MeshUser> = Api::all(fake.client());
    let mut mu = MeshUser::new(
        "u",
        MeshUserSpec {
            name: None,
            display_name: None,
            email: None,
        },
    );
    mu.metadata.finalizers = Some(vec!["x/y".into()]);
    let created = users
        .create(&PostParams::default(), &mu)
        .await
        .expect("create");
    let rv1 = created.metadata.resource_version.clone().expect("rv");
    let dup = users.create(&PostParams::default(), &mu).await;
    assert!(
        matches!(dup, Err(kube::Error::Api(ref e)) if e.code == 409),
        "{dup:?}"
    );

    // Status through the object is ignored; through /status it lands.
    let p = Patch::Merge(json!({"status": {"id": 7}}));
    let same = users
        .patch("u", &PatchParams::default(), &p)
        .await
        .expect("patch");
    assert!(same.status.is_none());
    assert_eq!(
        same.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let st = users
        .patch_status("u", &PatchParams::default(), &p)
        .await
        .expect("status");
    assert_eq!(st.status.and_then(|s| s.id), Some(7));
    assert_eq!(st.metadata.generation, Some(1));

    // A stale replace conflicts.
    let r = users.replace("u", &PostParams::default(), &created).await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref e)) if e.code == 409),
        "{r:?}"
    );

    // DELETE with a finalizer: kept with deletionTimestamp; no new finalizers;
    // removing the last one deletes it.
    users
        .delete("u", &DeleteParams::default())
        .await
        .expect("delete");
    let d = users.get("u").await.expect("get");
    assert!(d.metadata.deletion_timestamp.is_some());
    let add = Patch::Merge(json!({"metadata": {"finalizers": ["x/y", "z/w"]}}));
    let r = users.patch("u", &PatchParams::default(), &add).await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref e)) if e.code == 422),
        "{r:?}"
    );
    let clear = Patch::Merge(json!({"metadata": {"finalizers": []}}));
    users
        .patch("u", &PatchParams::default(), &clear)
        .await
        .expect("clear");
    assert!(users.get_opt("u").await.expect("get").is_none());
    let r = users.get("u").await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref e)) if e.code == 404),
        "{r:?}"
    );
}
