//! AdmissionReview in, AdmissionReview out. Whatever the body, the answer is
//! a well-formed review: an error response for garbage, never a panic.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tracing::{info, warn};

use super::patch::{InjectConfig, Verdict, patch, verdict};
use super::podsecurity;

/// Larger bodies are refused before parsing (the API server sends at most ~3 MiB pods).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Answers one review body with the serialized response review.
pub fn answer(body: &[u8], namespace_opted_in: bool, cfg: &InjectConfig) -> Vec<u8> {
    let review = respond(body, namespace_opted_in, cfg);
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    // kube-core writes the patch as an array of numbers; the API's `[]byte`
    // field is canonically base64, which every API server version reads.
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array().map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    {
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec())
}

fn respond(
    body: &[u8],
    namespace_opted_in: bool,
    cfg: &InjectConfig,
) -> AdmissionReview<DynamicObject> {
    if body.len() > MAX_BODY {
        return AdmissionResponse::invalid("request too large").into_review();
    }
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed AdmissionReview");
            return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"))
                .into_review();
        }
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return AdmissionResponse::invalid("AdmissionReview without a request").into_review();
        }
    };
    let resp = AdmissionResponse::from(&req);
    let Some(pod) = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)
    else {
        return resp.into_review();
    };
    let ns = req.namespace.as_deref().unwrap_or_default();
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("admission", pod = %format!("{ns}/{pod_name}"));
    let _g = span.enter();
    match verdict(pod, ns, namespace_opted_in, cfg) {
        Verdict::Skip(why) => {
            tracing::debug!(why, "not injecting");
            resp.into_review()
        }
        Verdict::Inject
            if cfg
                .pod_security
                .level(ns)
                .is_some_and(|l| podsecurity::rejects_sidecar(&l)) =>
        {
            // The pod would be rejected with the sidecar: admit it as it is and say why.
            let level = cfg.pod_security.level(ns).unwrap_or_default();
            warn!(
                level,
                "not injecting: the namespace's Pod Security level rejects the sidecar"
            );
            cfg.pod_security.report(podsecurity::Skipped {
                namespace: ns.to_string(),
                pod: pod_name.clone(),
                level: level.clone(),
            });
            let mut r = resp;
            r.warnings = Some(vec![podsecurity::warning(&level)]);
            r.into_review()
        }
        Verdict::Inject => match patch(pod, ns, cfg) {
            // The pod asked for the mesh with annotations we cannot honour:
            // refusing says why, where admitting it silently would not.
            Err(e) => {
                warn!(error = %e, "refusing a pod with bad meshscale annotations");
                resp.deny(e.to_string()).into_review()
            }
            Ok(p) => match resp.clone().with_patch(p) {
                Ok(r) => {
                    info!("injecting the sidecar");
                    r.into_review()
                }
                // Cannot happen for our own JSON, but the pod still gets admitted.
                Err(_) => resp.into_review(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::patch::tests::cfg;
    use base64::Engine;
    use serde_json::{Value, json};

    fn decode(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn review(pod: Value, ns: &str, op: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns,
                "operation": op,
                "userInfo": {"username": "test"},
                "object": pod,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn annotated() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "annotations": {"meshscale.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        })
    }

    #[test]
    fn create_of_annotated_pod_returns_an_applicable_json_patch() {
        let out: Value = serde_json::from_slice(&answer(
            &review(annotated(), "apps", "CREATE"),
            false,
            &cfg(),
        ))
        .unwrap();
        let r = &out["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: json_patch::Patch =
            serde_json::from_slice(&decode(r["patch"].as_str().unwrap())).unwrap();
        let mut doc = annotated();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["initContainers"][0]["restartPolicy"], "Always");
    }

    #[test]
    fn other_namespaces_and_operations_are_allowed_unchanged() {
        for (ns, op) in [
            ("kube-system", "CREATE"),
            ("apps", "UPDATE"),
            ("apps", "DELETE"),
        ] {
            let out: Value =
                serde_json::from_slice(&answer(&review(annotated(), ns, op), false, &cfg()))
                    .unwrap();
            assert_eq!(out["response"]["allowed"], true, "{ns} {op}");
            assert!(out["response"]["patch"].is_null(), "{ns} {op}");
        }
    }

    #[test]
    fn malformed_reviews_get_an_error_response_never_a_panic() {
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"not json".to_vec(),
            b"{}".to_vec(),
            b"[]".to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#
                .to_vec(),
            vec![0xff; 64],
            vec![b'['; 100_000],
            vec![b' '; MAX_BODY + 1],
        ];
        for body in bad {
            let out: Value = serde_json::from_slice(&answer(&body, false, &cfg())).unwrap();
            assert_eq!(out["kind"], "AdmissionReview");
            assert_eq!(out["response"]["allowed"], false);
        }
    }

    #[tokio::test]
    async fn a_namespace_enforcing_baseline_or_restricted_gets_the_pod_unmodified_with_a_warning() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut c = cfg();
        c.pod_security = podsecurity::PodSecurity::with_reports(tx);
        c.pod_security.set("locked", Some("restricted"));
        c.pod_security.set("open", Some("privileged"));
        let out: Value =
            serde_json::from_slice(&answer(&review(annotated(), "locked", "CREATE"), false, &c))
                .unwrap();
        let r = &out["response"];
        assert_eq!(r["allowed"], true);
        assert!(r["patch"].is_null(), "{r}");
        let w = r["warnings"][0].as_str().unwrap();
        assert!(
            w.contains("restricted") && w.contains("not injected"),
            "{w}"
        );
        let s = rx.try_recv().unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.level.as_str()),
            ("locked", "restricted")
        );
        // A privileged namespace is injected as before.
        let out: Value =
            serde_json::from_slice(&answer(&review(annotated(), "open", "CREATE"), false, &c))
                .unwrap();
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert!(out["response"]["warnings"].is_null());
    }

    #[test]
    fn bad_user_annotation_is_denied_with_the_reason() {
        let mut pod = annotated();
        pod["metadata"]["annotations"]["meshscale.dev/user"] = json!("UPPER");
        let out: Value =
            serde_json::from_slice(&answer(&review(pod, "apps", "CREATE"), false, &cfg())).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].to_string();
        assert!(msg.contains("meshscale.dev/user"), "{msg}");
    }
}
