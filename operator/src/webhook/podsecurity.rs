//! Pod Security admission: a namespace labelled
//! `pod-security.kubernetes.io/enforce: baseline` (or `restricted`) rejects
//! the injected sidecar (it needs `NET_ADMIN` and a hostPath `/dev/net/tun`).
//! Injecting there would only move the failure to pod creation, with a less
//! clear error, so the webhook leaves such pods unmodified and says why: a
//! warning in the AdmissionReview (shown by kubectl) and an Event on the
//! Namespace. Every replica keeps the namespaces' levels from a watch.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::warn;

use crate::injectkey::ANN_TAGS;
use crate::kubeops::{Kube, Note};

pub const LABEL_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Whether a namespace enforcing `level` rejects the sidecar.
pub fn rejects_sidecar(level: &str) -> bool {
    matches!(level.trim(), "baseline" | "restricted")
}

/// A pod left without its sidecar because of its namespace's level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub namespace: String,
    pub pod: String,
    pub level: String,
}

/// Namespace → enforced level, and where skipped pods are reported.
#[derive(Debug, Clone, Default)]
pub struct PodSecurity {
    levels: Arc<RwLock<HashMap<String, String>>>,
    /// Namespace → its `meshscale.dev/tags` annotation, given to every pod
    /// injected there (kept here because the same watch sees it).
    tags: Arc<RwLock<HashMap<String, String>>>,
    report: Option<mpsc::Sender<Skipped>>,
}

impl PodSecurity {
    pub fn with_reports(report: mpsc::Sender<Skipped>) -> Self {
        Self {
            levels: Arc::default(),
            tags: Arc::default(),
            report: Some(report),
        }
    }

    pub fn level(&self, namespace: &str) -> Option<String> {
        self.levels.read().ok()?.get(namespace).cloned()
    }

    pub fn set(&self, namespace: &str, level: Option<&str>) {
        if let Ok(mut m) = self.levels.write() {
            match level {
                Some(l) => m.insert(namespace.to_string(), l.to_string()),
                None => m.remove(namespace),
            };
        }
    }

    pub fn namespace_tags(&self, namespace: &str) -> Option<String> {
        self.tags.read().ok()?.get(namespace).cloned()
    }

    pub fn set_tags(&self, namespace: &str, tags: Option<&str>) {
        if let Ok(mut m) = self.tags.write() {
            match tags.map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) => m.insert(namespace.to_string(), t.to_string()),
                None => m.remove(namespace),
            };
        }
    }

    fn clear(&self) {
        if let Ok(mut m) = self.levels.write() {
            m.clear();
        }
        if let Ok(mut m) = self.tags.write() {
            m.clear();
        }
    }

    /// Queues the event; never blocks an admission (a full queue drops it).
    pub fn report(&self, s: Skipped) {
        if let Some(tx) = &self.report {
            let _ = tx.try_send(s);
        }
    }
}

/// Keeps `ps` in step with the namespaces' enforce labels until the watch ends.
pub async fn watch_namespaces(client: Client, ps: PodSecurity) {
    let stream =
        watcher(Api::<Namespace>::all(client), watcher::Config::default()).default_backoff();
    stream
        .for_each(|ev| {
            let ps = ps.clone();
            async move {
                let set = |ns: &Namespace| {
                    ps.set(
                        &ns.name_any(),
                        ns.labels().get(LABEL_ENFORCE).map(String::as_str),
                    );
                    ps.set_tags(
                        &ns.name_any(),
                        ns.annotations().get(ANN_TAGS).map(String::as_str),
                    );
                };
                match ev {
                    Ok(watcher::Event::Init) => ps.clear(),
                    Ok(watcher::Event::InitApply(ns) | watcher::Event::Apply(ns)) => set(&ns),
                    Ok(watcher::Event::Delete(ns)) => {
                        ps.set(&ns.name_any(), None);
                        ps.set_tags(&ns.name_any(), None);
                    }
                    Ok(watcher::Event::InitDone) => {}
                    Err(e) => warn!(error = %e, "namespace watch error"),
                }
            }
        })
        .await;
}

/// Publishes each skipped pod as a Warning event on its Namespace.
pub async fn publish_skips<K: Kube>(kube: Arc<K>, mut rx: mpsc::Receiver<Skipped>) {
    while let Some(s) = rx.recv().await {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(s.namespace.clone()),
            ..Default::default()
        };
        let note = Note {
            warning: true,
            reason: "InjectionSkipped",
            action: "Inject",
            message: message(&s.namespace, &s.pod, &s.level),
        };
        if let Err(e) = kube.event(regarding, note).await {
            warn!(error = %e, "could not publish an event");
        }
    }
}

/// What the warning and the event say.
pub fn message(namespace: &str, pod: &str, level: &str) -> String {
    format!(
        "meshscale sidecar not injected into {namespace}/{pod}: the namespace enforces Pod Security \"{level}\", which rejects its NET_ADMIN capability and /dev/net/tun hostPath"
    )
}

/// The short form for the AdmissionReview warning (kubectl prints it).
pub fn warning(level: &str) -> String {
    format!(
        "meshscale: sidecar not injected: namespace enforces Pod Security \"{level}\" (sidecar needs NET_ADMIN and /dev/net/tun)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::FakeApiServer;
    use serde_json::json;
    use std::time::{Duration, Instant};

    #[test]
    fn only_baseline_and_restricted_reject_the_sidecar() {
        assert!(rejects_sidecar("baseline"));
        assert!(rejects_sidecar("restricted"));
        assert!(!rejects_sidecar("privileged"));
        assert!(!rejects_sidecar(""));
    }

    #[tokio::test]
    async fn a_skipped_pod_becomes_a_warning_event_on_its_namespace() {
        let kube = Arc::new(crate::fake::FakeKube::default());
        let (tx, rx) = mpsc::channel(4);
        let ps = PodSecurity::with_reports(tx);
        ps.report(Skipped {
            namespace: "locked".into(),
            pod: "web-1".into(),
            level: "restricted".into(),
        });
        drop(ps);
        publish_skips(Arc::clone(&kube), rx).await;
        let events = kube.state.lock().unwrap().events.clone();
        assert_eq!(events.len(), 1);
        let (who, note) = &events[0];
        assert_eq!(who, "Namespace//locked");
        assert!(note.warning && note.reason == "InjectionSkipped");
        assert!(note.message.contains("locked/web-1") && note.message.contains("restricted"));
    }

    #[tokio::test]
    async fn the_namespace_watch_follows_enforce_labels() {
        let fake = FakeApiServer::default();
        let ns = |name: &str, level: Option<&str>| {
            let labels = match level {
                Some(l) => json!({ LABEL_ENFORCE: l }),
                None => json!({}),
            };
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        };
        fake.put("v1", "namespaces", "", ns("locked", Some("restricted")));
        fake.put("v1", "namespaces", "", ns("open", None));
        let ps = PodSecurity::default();
        let task = tokio::spawn(watch_namespaces(fake.client(), ps.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ps.level("locked").is_none() {
            assert!(Instant::now() < deadline, "never saw the namespace");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ps.level("locked").as_deref(), Some("restricted"));
        assert_eq!(ps.level("open"), None);
        // A namespace labelled later is seen through the watch.
        fake.put("v1", "namespaces", "", ns("later", Some("baseline")));
        while ps.level("later").is_none() {
            assert!(Instant::now() < deadline, "never saw the new namespace");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
    }
}
