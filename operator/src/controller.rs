//! Wires the reconcilers into kube-runtime controllers and watchers. Runs only
//! on the replica that holds the lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::crd::{ClusterMeshPolicy, MeshNode, MeshPolicy, MeshUser, PreAuthKey};
use crate::injectkey::{KeyDefaults, key_for};
use crate::kubeops::Kube;
use crate::reconcile::pods::LivePod;
use crate::reconcile::{Ctx, ReconcileError, nodes, pak, pods, policy, user};

/// Hostname (`<pod>-<namespace>`) → the injected pods currently alive.
pub type PodIndex = Arc<Mutex<HashMap<String, LivePod>>>;

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
    .replace("//", "/")
}

fn error_policy<K, A, C>(obj: Arc<K>, err: &ReconcileError, ctx: Arc<Ctx<A, C>>) -> Action
where
    K: Resource<DynamicType = ()>,
    A: Admin,
    C: Kube,
{
    let delay = ctx.backoff.fail(&key(obj.as_ref()));
    warn!(object = %key(obj.as_ref()), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs every controller until one of them ends (which it does only when the
/// watch streams do).
pub async fn run<A: Admin, C: Kube>(
    client: Client,
    ctx: Arc<Ctx<A, C>>,
    node_sync: Duration,
    inject_keys: Arc<KeyDefaults>,
    manage_policy: bool,
) {
    let users = Controller::new(
        Api::<MeshUser>::all(client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        |mu, ctx: Arc<Ctx<A, C>>| async move {
            let r = user::reconcile(&mu, &ctx).await;
            ctx.metrics.reconciled("MeshUser", r.is_ok());
            if r.is_ok() {
                ctx.backoff.reset(&key(mu.as_ref()));
            }
            r
        },
        error_policy,
        Arc::clone(&ctx),
    )
    .for_each(|_| async {});
    // Owning the Secrets: a deleted or edited key Secret is rewritten at once,
    // not at the next hourly check.
    let keys = Controller::new(
        Api::<PreAuthKey>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=meshscale-operator"),
    )
    .shutdown_on_signal()
    .run(
        |p, ctx: Arc<Ctx<A, C>>| async move {
            let r = pak::reconcile(&p, &ctx).await;
            ctx.metrics.reconciled("PreAuthKey", r.is_ok());
            r
        },
        error_policy,
        Arc::clone(&ctx),
    )
    .for_each(|_| async {});
    let mesh_nodes = Controller::new(
        Api::<MeshNode>::all(client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        |n, ctx: Arc<Ctx<A, C>>| async move {
            let r = nodes::reconcile(&n, &ctx).await;
            ctx.metrics.reconciled("MeshNode", r.is_ok());
            r
        },
        error_policy,
        Arc::clone(&ctx),
    )
    .for_each(|_| async {});
    let (policy_client, policy_ctx, policy_keys) =
        (client.clone(), Arc::clone(&ctx), Arc::clone(&inject_keys));
    let policies = async move {
        if manage_policy {
            policy_loop(policy_client, policy_ctx, policy_keys).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let index: PodIndex = Arc::default();
    let pod_watch = watch_pods(client, Arc::clone(&ctx), Arc::clone(&index), inject_keys);
    let sync = sync_loop(Arc::clone(&ctx), index, node_sync);
    tokio::select! {
        _ = users => info!("MeshUser controller ended"),
        _ = keys => info!("PreAuthKey controller ended"),
        _ = mesh_nodes => info!("MeshNode controller ended"),
        _ = pod_watch => info!("pod watch ended"),
        _ = sync => info!("node sync ended"),
        _ = policies => info!("policy sync ended"),
    }
}

/// Runs a policy pass whenever a ClusterMeshPolicy, MeshPolicy or Namespace
/// changes, and every `RESYNC` anyway (to put back a policy someone replaced
/// on the server). A pass that fails is retried with back-off.
async fn policy_loop<A: Admin, C: Kube>(
    client: Client,
    ctx: Arc<Ctx<A, C>>,
    keys: Arc<KeyDefaults>,
) {
    let changed = Arc::new(Notify::new());
    let cfg = watcher::Config::default;
    let events = futures_util::stream::select(
        futures_util::stream::select(
            watcher(Api::<ClusterMeshPolicy>::all(client.clone()), cfg())
                .default_backoff()
                .map(|_| ()),
            watcher(Api::<MeshPolicy>::all(client.clone()), cfg())
                .default_backoff()
                .map(|_| ()),
        ),
        watcher(Api::<Namespace>::all(client), cfg())
            .default_backoff()
            .map(|_| ()),
    );
    let n = Arc::clone(&changed);
    let watch = events.for_each(move |()| {
        n.notify_one();
        async {}
    });
    let passes = async {
        loop {
            let wait = match policy::sync(&ctx, &keys).await {
                Ok(r) => {
                    ctx.backoff.reset("policy");
                    ctx.metrics.reconciled("MeshPolicy", true);
                    if r.set {
                        info!(
                            accepted = r.accepted,
                            refused = r.refused,
                            "policy set on the control server"
                        );
                    }
                    crate::reconcile::RESYNC
                }
                Err(e) => {
                    ctx.metrics.reconciled("MeshPolicy", false);
                    let d = ctx.backoff.fail("policy");
                    warn!(error = %e, retry_in = ?d, "policy sync failed");
                    d
                }
            };
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    };
    tokio::select! {
        _ = watch => info!("policy watches ended"),
        _ = passes => {}
    }
}

async fn sync_loop<A: Admin, C: Kube>(ctx: Arc<Ctx<A, C>>, index: PodIndex, every: Duration) {
    loop {
        let pods: HashMap<String, String> = index
            .lock()
            .map(|m| m.iter().map(|(h, p)| (h.clone(), p.pod.clone())).collect())
            .unwrap_or_default();
        let wait = match nodes::sync(&ctx, &pods).await {
            Ok(r) => {
                ctx.backoff.reset("nodesync");
                if r.created + r.updated + r.deleted > 0 {
                    info!(
                        created = r.created,
                        updated = r.updated,
                        deleted = r.deleted,
                        "MeshNodes synced"
                    );
                }
                every
            }
            Err(e) => {
                let d = ctx.backoff.fail("nodesync");
                warn!(error = %e, retry_in = ?d, "MeshNode sync failed");
                d
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// How long an ensured injection key is trusted to still exist before the
/// next pod event of its namespace checks again (a deleted PreAuthKey comes back).
const KEY_RECHECK: Duration = Duration::from_secs(600);

async fn watch_pods<A: Admin, C: Kube>(
    client: Client,
    ctx: Arc<Ctx<A, C>>,
    index: PodIndex,
    keys: Arc<KeyDefaults>,
) {
    let ensured: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // default_backoff: a watch error (API server restart) retries instead of ending the stream.
    let stream = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
    stream
        .for_each(|event| {
            let ctx = Arc::clone(&ctx);
            let index = Arc::clone(&index);
            let keys = Arc::clone(&keys);
            let ensured = Arc::clone(&ensured);
            async move {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => return warn!(error = %e, "pod watch error"),
                };
                let (pod, gone) = match event {
                    watcher::Event::Init => {
                        if let Ok(mut m) = index.lock() {
                            m.clear();
                        }
                        return;
                    }
                    watcher::Event::InitDone => {
                        // Every live pod is now in the index: catch up on the
                        // pods that went while no operator was leading.
                        let live = index.lock().map(|m| m.clone()).unwrap_or_default();
                        match pods::resync(&live, &ctx).await {
                            Ok(n) => {
                                ctx.metrics.pod_nodes_deleted(n);
                                info!(deleted = n, "pod resync done");
                            }
                            Err(e) => warn!(error = %e, "pod resync failed; node sync continues"),
                        }
                        return;
                    }
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let finished = pods::is_finished(&p);
                        (p, finished)
                    }
                    watcher::Event::Delete(p) => (p, true),
                };
                if !pods::is_injected(&pod) {
                    return;
                }
                let name = pod.name_any();
                let hostname = pods::hostname_of(&pod);
                if let Ok(mut m) = index.lock() {
                    if gone {
                        m.remove(&hostname);
                    } else {
                        m.insert(hostname, pods::live_pod(&pod));
                    }
                }
                if gone {
                    match pods::pod_gone(&pod, None, &ctx).await {
                        Ok(n) => ctx.metrics.pod_nodes_deleted(n),
                        // The next node sync and pod event retry; a pod watch must not stop.
                        Err(e) => {
                            warn!(pod = %name, error = %e, "could not delete the node of a gone pod")
                        }
                    }
                    return;
                }
                let ns = pod.namespace().unwrap_or_default();
                let cache_key = match key_for(&pod, &ns, &keys) {
                    Ok(k) => format!("{ns}/{}", k.name),
                    Err(_) => return,
                };
                let fresh = ensured
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&cache_key).copied())
                    .is_some_and(|t| t.elapsed() < KEY_RECHECK);
                if fresh {
                    return;
                }
                match pods::ensure_injection_key(&pod, &keys, &ctx).await {
                    Ok(_) => {
                        if let Ok(mut m) = ensured.lock() {
                            m.insert(cache_key, Instant::now());
                        }
                    }
                    Err(e) => warn!(pod = %name, error = %e, "could not ensure the injection key"),
                }
            }
        })
        .await;
}
