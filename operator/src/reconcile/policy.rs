//! Keeps the control server's policy (database mode) equal to the merge of
//! every `ClusterMeshPolicy` and `MeshPolicy` plus the operator's tag
//! ownership, and tells each object whether it is in force.
//!
//! One pass looks at everything: the merge is global, so a change to any
//! object (or a new namespace, whose tag needs an owner) can change every
//! object's outcome. A refused merge or a policy the server refuses sets
//! nothing: the last accepted policy stays in force.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};

use crate::admin::{Admin, AdminError};
use crate::conditions;
use crate::crd::MeshPolicyStatus;
use crate::injectkey::{KeyDefaults, namespace_tag};
use crate::kubeops::{Kube, Note};
use crate::policy::{OperatorTags, Source, merge};

use super::{Ctx, ReconcileError, emit};

pub const ACCEPTED: &str = "Accepted";

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// The server's policy was replaced.
    pub set: bool,
    pub accepted: usize,
    pub refused: usize,
}

/// The tags the operator hands out, owned by the injection user.
pub fn operator_tags(keys: &KeyDefaults, namespaces: &[String]) -> OperatorTags {
    let mut tags = keys.tags.clone();
    if !keys.namespace_tag_prefix.is_empty() {
        tags.extend(
            namespaces
                .iter()
                .map(|ns| namespace_tag(&keys.namespace_tag_prefix, ns)),
        );
    }
    tags.sort();
    tags.dedup();
    OperatorTags {
        owners: vec![format!("{}@", keys.user)],
        tags,
    }
}

struct Verdict {
    ok: bool,
    reason: &'static str,
    message: String,
}

/// One pass: merge, set when changed, write every object's condition.
pub async fn sync<A: Admin, K: Kube>(
    ctx: &Ctx<A, K>,
    keys: &KeyDefaults,
) -> Result<PolicyReport, ReconcileError> {
    let cluster = ctx.kube.list_cluster_mesh_policies().await?;
    let namespaced = ctx.kube.list_mesh_policies().await?;
    let namespaces = ctx.kube.list_namespaces().await?;
    let mut sources = Vec::new();
    for p in &cluster {
        sources.push(Source {
            id: format!("ClusterMeshPolicy/{}", p.name_any()),
            confined_to: None,
            namespace: None,
            body: &p.spec.policy,
        });
    }
    for p in &namespaced {
        let ns = p.namespace().unwrap_or_default();
        let tag = if keys.namespace_tag_prefix.is_empty() {
            // No namespace tags: nothing a namespaced policy could open.
            String::new()
        } else {
            namespace_tag(&keys.namespace_tag_prefix, &ns)
        };
        sources.push(Source {
            id: format!("MeshPolicy/{ns}/{}", p.name_any()),
            confined_to: Some(tag),
            namespace: Some(ns),
            body: &p.spec.policy,
        });
    }
    let mut verdicts: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut report = PolicyReport::default();
    match merge(&sources, &operator_tags(keys, &namespaces)) {
        Err(e) => {
            for s in &sources {
                verdicts.insert(
                    s.id.clone(),
                    Verdict {
                        ok: false,
                        reason: "Conflict",
                        message: format!(
                            "merge refused, the last accepted policy stays in force: {e}"
                        ),
                    },
                );
            }
        }
        Ok(merged) => {
            for (id, why) in &merged.refused {
                verdicts.insert(
                    id.clone(),
                    Verdict {
                        ok: false,
                        reason: "Refused",
                        message: why.clone(),
                    },
                );
            }
            let current = match ctx.admin.get_policy().await {
                Ok(text) => Some(text),
                Err(AdminError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let outcome = if current.as_deref() == Some(merged.text.as_str()) {
                Ok(())
            } else {
                match ctx.admin.set_policy(&merged.text).await {
                    Ok(()) => {
                        report.set = true;
                        Ok(())
                    }
                    Err(AdminError::Rejected(why)) => Err(why),
                    // Down or slow: nobody's status changes, the pass is retried.
                    Err(e) => return Err(e.into()),
                }
            };
            for id in &merged.accepted {
                let v = match &outcome {
                    Ok(()) => Verdict {
                        ok: true,
                        reason: "Accepted",
                        message: "in force on the control server".into(),
                    },
                    Err(why) => Verdict {
                        ok: false,
                        reason: "ServerRefused",
                        message: format!(
                            "the control server refused the merged policy, the last accepted policy stays in force: {why}"
                        ),
                    },
                };
                verdicts.insert(id.clone(), v);
            }
        }
    }
    for p in &cluster {
        let id = format!("ClusterMeshPolicy/{}", p.name_any());
        if let Some(v) = verdicts.get(&id)
            && let Some(s) = status_for(p.status.as_ref(), p.meta().generation, v)
        {
            ctx.kube
                .cluster_mesh_policy_status(&p.name_any(), &s)
                .await?;
            emit(ctx, p, note(v)).await;
        }
    }
    for p in &namespaced {
        let ns = p.namespace().unwrap_or_default();
        let id = format!("MeshPolicy/{ns}/{}", p.name_any());
        if let Some(v) = verdicts.get(&id)
            && let Some(s) = status_for(p.status.as_ref(), p.meta().generation, v)
        {
            ctx.kube.mesh_policy_status(&ns, &p.name_any(), &s).await?;
            emit(ctx, p, note(v)).await;
        }
    }
    report.accepted = verdicts.values().filter(|v| v.ok).count();
    report.refused = verdicts.len() - report.accepted;
    Ok(report)
}

/// The new status, or `None` when it already says this (no write, no event).
fn status_for(
    have: Option<&MeshPolicyStatus>,
    generation: Option<i64>,
    v: &Verdict,
) -> Option<MeshPolicyStatus> {
    let have = have.cloned().unwrap_or_default();
    let unchanged = have.observed_generation == generation
        && have.conditions.iter().any(|c| {
            c.type_ == ACCEPTED
                && c.status == if v.ok { "True" } else { "False" }
                && c.reason == v.reason
                && c.message == v.message
        });
    if unchanged {
        return None;
    }
    let mut s = have;
    conditions::set(
        &mut s.conditions,
        ACCEPTED,
        v.ok,
        v.reason,
        v.message.clone(),
        generation,
    );
    s.observed_generation = generation;
    Some(s)
}

fn note(v: &Verdict) -> Note {
    Note {
        warning: !v.ok,
        reason: if v.ok {
            "PolicyAccepted"
        } else {
            "PolicyRefused"
        },
        action: "SetPolicy",
        message: v.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::{ClusterMeshPolicy, MeshPolicy};
    use crate::fake::{FakeAdmin, FakeKube};

    fn keys() -> KeyDefaults {
        KeyDefaults {
            secret_prefix: "meshscale-authkey".into(),
            user: "k8s".into(),
            tags: vec!["tag:k8s".into()],
            namespace_tag_prefix: "tag:k8s-ns-".into(),
            expiration: "30d".into(),
            rotate_before: "7d".into(),
        }
    }

    fn cluster(name: &str, spec: serde_json::Value) -> ClusterMeshPolicy {
        serde_json::from_value(json!({
            "apiVersion": "meshscale.dev/v1alpha1", "kind": "ClusterMeshPolicy",
            "metadata": {"name": name, "generation": 1}, "spec": spec,
        }))
        .unwrap()
    }

    fn namespaced(ns: &str, name: &str, spec: serde_json::Value) -> MeshPolicy {
        serde_json::from_value(json!({
            "apiVersion": "meshscale.dev/v1alpha1", "kind": "MeshPolicy",
            "metadata": {"name": name, "namespace": ns, "generation": 3}, "spec": spec,
        }))
        .unwrap()
    }

    fn accepted(s: &Option<MeshPolicyStatus>) -> (String, String, String, Option<i64>) {
        let s = s.as_ref().expect("status written");
        let c = s.conditions.iter().find(|c| c.type_ == ACCEPTED).unwrap();
        (
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            s.observed_generation,
        )
    }

    fn server_policy(c: &Ctx<FakeAdmin, FakeKube>) -> serde_json::Value {
        let text = c.admin.state.lock().unwrap().policy.clone().unwrap();
        serde_json::from_str(&meshscale_policy::hujson_to_json(&text).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn cluster_and_namespaced_policies_merge_into_the_server_policy() {
        let c = Ctx::new(FakeAdmin::default(), FakeKube::default());
        {
            let mut s = c.kube.state.lock().unwrap();
            s.namespaces = vec!["web".into(), "db".into(), "kube-system".into()];
            s.cluster_policies.insert(
                "base".into(),
                cluster(
                    "base",
                    json!({"groups": {"group:ops": ["alice@"]},
                    "acls": [{"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}]}),
                ),
            );
            s.mesh_policies.insert(
                "db/db".into(),
                namespaced(
                    "db",
                    "db",
                    json!({"acls": [{"action": "accept",
                    "src": ["tag:k8s-ns-web"], "dst": ["tag:k8s-ns-db:5432"]}]}),
                ),
            );
            s.mesh_policies.insert(
                "web/web".into(),
                namespaced("web", "web", json!({"hujson": "{\"grants\": [{\"src\": [\"*\"], \"dst\": [\"tag:k8s-ns-web\"], \"ip\": [\"tcp:80\"]},],}"})),
            );
        }
        let r = sync(&c, &keys()).await.unwrap();
        assert_eq!(
            r,
            PolicyReport {
                set: true,
                accepted: 3,
                refused: 0
            }
        );
        let p = server_policy(&c);
        assert_eq!(p["acls"].as_array().unwrap().len(), 2);
        assert_eq!(p["acls"][1]["dst"][0], "tag:k8s-ns-db:5432");
        assert_eq!(p["grants"][0]["dst"][0], "tag:k8s-ns-web");
        assert_eq!(p["groups"]["group:ops"][0], "alice@");
        for t in [
            "tag:k8s",
            "tag:k8s-ns-web",
            "tag:k8s-ns-db",
            "tag:k8s-ns-kube-system",
        ] {
            assert_eq!(p["tagOwners"][t], json!(["k8s@"]), "{t}");
        }
        {
            let s = c.kube.state.lock().unwrap();
            let (st, reason, _, generation) = accepted(&s.mesh_policies["db/db"].status);
            assert_eq!(
                (st.as_str(), reason.as_str(), generation),
                ("True", "Accepted", Some(3))
            );
            let (st, _, _, generation) = accepted(&s.cluster_policies["base"].status);
            assert_eq!((st.as_str(), generation), ("True", Some(1)));
        }
        assert!(c.kube.reasons().iter().all(|r| *r == "PolicyAccepted"));
        // Nothing changed: no SetPolicy, no status write, no event.
        let events = c.kube.state.lock().unwrap().events.len();
        let r = sync(&c, &keys()).await.unwrap();
        assert!(!r.set);
        assert_eq!(c.admin.state.lock().unwrap().set_policy_calls, 1);
        assert_eq!(c.kube.state.lock().unwrap().events.len(), events);
    }

    #[tokio::test]
    async fn a_namespaced_policy_opening_another_namespace_is_refused_alone() {
        let c = Ctx::new(FakeAdmin::default(), FakeKube::default());
        {
            let mut s = c.kube.state.lock().unwrap();
            s.namespaces = vec!["web".into(), "db".into()];
            s.mesh_policies.insert(
                "web/grab".into(),
                namespaced(
                    "web",
                    "grab",
                    json!({"acls": [{"action": "accept",
                    "src": ["tag:k8s-ns-web"], "dst": ["tag:k8s-ns-db:5432"]}]}),
                ),
            );
            s.mesh_policies.insert(
                "db/db".into(),
                namespaced(
                    "db",
                    "db",
                    json!({"acls": [{"action": "accept",
                    "src": ["tag:k8s-ns-web"], "dst": ["tag:k8s-ns-db:5432"]}]}),
                ),
            );
        }
        let r = sync(&c, &keys()).await.unwrap();
        assert_eq!((r.accepted, r.refused), (1, 1));
        let s = c.kube.state.lock().unwrap();
        let (st, reason, msg, _) = accepted(&s.mesh_policies["web/grab"].status);
        assert_eq!((st.as_str(), reason.as_str()), ("False", "Refused"));
        assert!(
            msg.contains("\"tag:k8s-ns-db:5432\" is outside the namespace"),
            "{msg}"
        );
        assert!(msg.contains("tag:k8s-ns-web"), "{msg}");
        assert_eq!(accepted(&s.mesh_policies["db/db"].status).0, "True");
        assert!(s.events.iter().any(|(who, n)| who == "MeshPolicy/web/grab"
            && n.warning
            && n.reason == "PolicyRefused"));
        drop(s);
        // Only the db policy's rule is in force.
        assert_eq!(server_policy(&c)["acls"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn refusals_keep_the_last_accepted_policy_in_force() {
        let c = Ctx::new(FakeAdmin::default(), FakeKube::default());
        {
            let mut s = c.kube.state.lock().unwrap();
            s.namespaces = vec!["web".into()];
            s.cluster_policies.insert(
                "a".into(),
                cluster("a", json!({"groups": {"group:ops": ["alice@"]}})),
            );
        }
        sync(&c, &keys()).await.unwrap();
        let good = c.admin.state.lock().unwrap().policy.clone();

        // A conflict: both objects say so, naming each other; nothing is set.
        c.kube.state.lock().unwrap().cluster_policies.insert(
            "b".into(),
            cluster("b", json!({"groups": {"group:ops": ["mallory@"]}})),
        );
        sync(&c, &keys()).await.unwrap();
        assert_eq!(c.admin.state.lock().unwrap().policy, good);
        {
            let s = c.kube.state.lock().unwrap();
            for name in ["a", "b"] {
                let (st, reason, msg, _) = accepted(&s.cluster_policies[name].status);
                assert_eq!((st.as_str(), reason.as_str()), ("False", "Conflict"));
                assert!(
                    msg.contains("ClusterMeshPolicy/a") && msg.contains("ClusterMeshPolicy/b"),
                    "{msg}"
                );
            }
        }

        // A policy the server refuses (an undefined tag): the server's reason, nothing set.
        {
            let mut s = c.kube.state.lock().unwrap();
            s.cluster_policies.remove("b");
            s.cluster_policies.insert(
                "c".into(),
                cluster(
                    "c",
                    json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:nobody:80"]}]}),
                ),
            );
        }
        sync(&c, &keys()).await.unwrap();
        assert_eq!(c.admin.state.lock().unwrap().policy, good);
        let before = {
            let s = c.kube.state.lock().unwrap();
            let (st, reason, msg, _) = accepted(&s.cluster_policies["c"].status);
            assert_eq!((st.as_str(), reason.as_str()), ("False", "ServerRefused"));
            assert!(msg.contains("tag:nobody"), "{msg}");
            (s.cluster_policies["c"].status.clone(), s.events.len())
        };

        // The server down: an error to retry, statuses and events untouched.
        c.admin.set_down(true);
        assert!(sync(&c, &keys()).await.is_err());
        let s = c.kube.state.lock().unwrap();
        assert_eq!(
            (s.cluster_policies["c"].status.clone(), s.events.len()),
            before
        );
    }
}
