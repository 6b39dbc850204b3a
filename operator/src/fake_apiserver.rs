//! An in-process fake of the Kubernetes API server, for tests that drive the
//! REAL `kubeops::KubeClient` (kube's `Api`, `Recorder`, its error mapping)
//! without a cluster. It is a `tower::service_fn` handed to
//! `kube::Client::new`: no socket, no TLS.
//!
//! Supported, for any resource path (`/api/v1/...`, `/apis/<group>/<version>/...`,
//! namespaced or cluster-scoped, `/status` subresource):
//! - GET one / LIST (a namespaced list or across namespaces), no label
//!   selectors, no watch (`?watch=true` answers 405);
//! - POST (create; `generateName`; 409 AlreadyExists);
//! - PATCH: merge patch, JSON patch, strategic merge (treated as a merge
//!   patch) and server-side apply (create-or-merge of the applied object: no
//!   field-manager bookkeeping, so a field dropped from the applied config is
//!   not removed);
//! - PUT (replace, with the resourceVersion precondition: 409 Conflict);
//! - DELETE: with finalizers it sets `deletionTimestamp` and keeps the object;
//!   a write that empties the finalizers of a deleting object removes it;
//!   a deleting object gets no new finalizers (422).
//!
//! Every write that changes the object bumps a global `resourceVersion`; a
//! change outside `metadata`/`status` bumps `generation`. For the
//! `meshscale.dev` CRDs and Pods the status is a subresource: writes to the
//! object keep the old status, writes to `/status` change only the status.
//! Not modelled: watches, owner-reference garbage collection, admission,
//! schema validation, label/field selectors, dry runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// Where an object lives: `api` is `v1` or `<group>/<version>`, `ns` is empty
/// for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub api: String,
    pub resource: String,
    pub ns: String,
    pub name: String,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    /// `METHOD path?query`, one per request.
    log: Vec<String>,
}

impl Store {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }
}

#[derive(Clone, Default)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Store>>,
}

struct Target {
    api: String,
    resource: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

type Resp = Response<Full<Bytes>>;

fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, rest) = rest.split_first()?;
    if rest.len() > 2 {
        return None;
    }
    Some(Target {
        api,
        resource: resource.to_string(),
        ns,
        name: rest.first().map(|s| s.to_string()),
        sub: rest.get(1).map(|s| s.to_string()),
    })
}

fn reply(code: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("response")
}

fn error(code: u16, reason: &str, message: impl Display) -> Resp {
    reply(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message.to_string(),
            "reason": reason, "code": code,
        }),
    )
}

/// The status is a subresource (writes to the object keep it).
fn has_status_subresource(api: &str, resource: &str) -> bool {
    api.starts_with("meshscale.dev/") || (api == "v1" && resource == "pods")
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn finalizers(v: &Value) -> Vec<String> {
    v["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// Everything but `metadata` and `status`: what `generation` counts.
fn body_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

impl FakeApiServer {
    /// A kube client whose every request is answered by this fake.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    pub fn get(&self, api: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = Key {
            api: api.into(),
            resource: resource.into(),
            ns: ns.into(),
            name: name.into(),
        };
        self.inner.lock().expect("lock").objects.get(&key).cloned()
    }

    /// All objects of a resource, in every namespace.
    pub fn list(&self, api: &str, resource: &str) -> Vec<Value> {
        let st = self.inner.lock().expect("lock");
        st.objects
            .iter()
            .filter(|(k, _)| k.api == api && k.resource == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().expect("lock").log.clone()
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let ctype = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(400, "BadRequest", e),
        };
        let mut st = self.inner.lock().expect("lock");
        st.log.push(format!("{method} {path}?{query}"));
        let Some(t) = parse(&path) else {
            return error(404, "NotFound", format!("no such path {path}"));
        };
        let key = |name: &str| Key {
            api: t.api.clone(),
            resource: t.resource.clone(),
            ns: t.ns.clone().unwrap_or_default(),
            name: name.to_string(),
        };
        let parse_body = || -> Result<Value, String> {
            serde_json::from_slice(&body)
                .or_else(|_| serde_yaml::from_slice(&body))
                .map_err(|e| e.to_string())
        };
        match (&method, t.name.as_deref(), t.sub.as_deref()) {
            (&Method::GET, None, _) if query.split('&').any(|q| q == "watch=true") => error(
                405,
                "MethodNotAllowed",
                "the fake API server has no watches",
            ),
            (&Method::GET, None, _) => Self::list_in(&st, &t),
            (&Method::GET, Some(name), _) => match st.objects.get(&key(name)) {
                Some(v) => reply(StatusCode::OK, v),
                None => not_found(&t, name),
            },
            (&Method::POST, None, None) => match parse_body() {
                Ok(v) => Self::create(&mut st, &t, v),
                Err(e) => error(400, "BadRequest", e),
            },
            (&Method::PATCH, Some(name), sub) => {
                let patch = match parse_body() {
                    Ok(v) => v,
                    Err(e) => return error(400, "BadRequest", e),
                };
                let k = key(name);
                let Some(old) = st.objects.get(&k).cloned() else {
                    if ctype.starts_with("application/apply-patch") && sub.is_none() {
                        return Self::create(&mut st, &t, patch);
                    }
                    return not_found(&t, name);
                };
                let mut new = old.clone();
                if ctype.starts_with("application/json-patch") {
                    let ops: json_patch::Patch = match serde_json::from_value(patch.clone()) {
                        Ok(p) => p,
                        Err(e) => return error(400, "BadRequest", e),
                    };
                    if let Err(e) = json_patch::patch(&mut new, &ops) {
                        return error(422, "Invalid", e);
                    }
                } else if ctype.starts_with("application/merge-patch")
                    || ctype.starts_with("application/strategic-merge-patch")
                    || ctype.starts_with("application/apply-patch")
                {
                    json_patch::merge(&mut new, &patch);
                } else {
                    return error(415, "UnsupportedMediaType", ctype);
                }
                let pre = patch["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                Self::update(&mut st, &t, k, old, new, pre, sub)
            }
            (&Method::PUT, Some(name), sub) => {
                let new = match parse_body() {
                    Ok(v) => v,
                    Err(e) => return error(400, "BadRequest", e),
                };
                let k = key(name);
                let Some(old) = st.objects.get(&k).cloned() else {
                    return not_found(&t, name);
                };
                let pre = new["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                Self::update(&mut st, &t, k, old, new, pre, sub)
            }
            (&Method::DELETE, Some(name), None) => {
                let k = key(name);
                let Some(mut obj) = st.objects.get(&k).cloned() else {
                    return not_found(&t, name);
                };
                if finalizers(&obj).is_empty() {
                    st.objects.remove(&k);
                } else if !deleting(&obj) {
                    obj["metadata"]["deletionTimestamp"] = json!(now());
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    obj["metadata"]["resourceVersion"] = json!(st.bump());
                    st.objects.insert(k, obj.clone());
                }
                reply(StatusCode::OK, &obj)
            }
            _ => error(405, "MethodNotAllowed", format!("{method} {path}")),
        }
    }

    fn list_in(st: &Store, t: &Target) -> Resp {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|(k, _)| {
                k.api == t.api
                    && k.resource == t.resource
                    && t.ns.as_ref().is_none_or(|ns| &k.ns == ns)
            })
            .map(|(_, v)| v.clone())
            .collect();
        let kind = items
            .first()
            .and_then(|v| v["kind"].as_str())
            .map(|k| format!("{k}List"))
            .unwrap_or_else(|| "List".into());
        reply(
            StatusCode::OK,
            &json!({
                "apiVersion": t.api, "kind": kind,
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn create(st: &mut Store, t: &Target, mut obj: Value) -> Resp {
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let name = match obj["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match obj["metadata"]["generateName"].as_str() {
                Some(p) => format!("{p}{:05}", st.rv + 1),
                None => return error(422, "Invalid", "metadata.name: Required value"),
            },
        };
        if let Some(ns) = &t.ns {
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if n != ns => {
                    return error(
                        400,
                        "BadRequest",
                        "the namespace of the object does not match",
                    );
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        }
        let key = Key {
            api: t.api.clone(),
            resource: t.resource.clone(),
            ns: t.ns.clone().unwrap_or_default(),
            name: name.clone(),
        };
        if st.objects.contains_key(&key) {
            return error(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.resource),
            );
        }
        if has_status_subresource(&t.api, &t.resource)
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let rv = st.bump();
        let m = &mut obj["metadata"];
        m["name"] = json!(name);
        m["uid"] = json!(format!("uid-{rv}"));
        m["resourceVersion"] = json!(rv);
        m["generation"] = json!(1);
        m["creationTimestamp"] = json!(now());
        if let Some(o) = m.as_object_mut() {
            o.remove("deletionTimestamp");
        }
        st.objects.insert(key, obj.clone());
        reply(StatusCode::CREATED, &obj)
    }

    fn update(
        st: &mut Store,
        t: &Target,
        key: Key,
        old: Value,
        mut new: Value,
        precondition: Option<String>,
        sub: Option<&str>,
    ) -> Resp {
        let old_rv = old["metadata"]["resourceVersion"].clone();
        if let Some(rv) = precondition
            && !rv.is_empty()
            && Some(rv.as_str()) != old_rv.as_str()
        {
            return error(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified",
                    t.resource, key.name
                ),
            );
        }
        match sub {
            Some("status") => {
                let status = new["status"].clone();
                new = old.clone();
                new["status"] = status;
            }
            Some(other) => return error(404, "NotFound", format!("no subresource {other}")),
            None => {
                if has_status_subresource(&t.api, &t.resource) {
                    new["status"] = old["status"].clone();
                    if new["status"].is_null()
                        && let Some(o) = new.as_object_mut()
                    {
                        o.remove("status");
                    }
                }
                // What the server owns.
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match old["metadata"].get(f) {
                        Some(v) => new["metadata"][f] = v.clone(),
                        None => {
                            if let Some(o) = new["metadata"].as_object_mut() {
                                o.remove(f);
                            }
                        }
                    }
                }
                if deleting(&old) {
                    let had = finalizers(&old);
                    if let Some(f) = finalizers(&new).into_iter().find(|f| !had.contains(f)) {
                        return error(
                            422,
                            "Invalid",
                            format!(
                                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{f}\"]"
                            ),
                        );
                    }
                }
                if body_of(&new) != body_of(&old) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    new["metadata"]["generation"] = json!(g);
                }
            }
        }
        new["metadata"]["resourceVersion"] = old_rv;
        if new == old {
            // A no-op write changes nothing, not even the resourceVersion.
            return reply(StatusCode::OK, &old);
        }
        new["metadata"]["resourceVersion"] = json!(st.bump());
        if deleting(&new) && finalizers(&new).is_empty() {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, new.clone());
        }
        reply(StatusCode::OK, &new)
    }
}

fn not_found(t: &Target, name: &str) -> Resp {
    error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.resource),
    )
}
