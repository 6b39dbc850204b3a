//! A fake of the Kubernetes API server, for tests that drive the REAL
//! `kubeops::KubeClient`, the REAL kube-runtime controllers and the REAL
//! `meshscale-operator` binary without a cluster. Two ways in: `client()`, an
//! in-process `tower::service_fn` (no socket), and `serve_tls()`, an HTTPS
//! listener on loopback with its own CA and a bearer token, reached through a
//! kubeconfig exactly as a cluster is.
//!
//! Supported, for any resource path (`/api/v1/...`, `/apis/<group>/<version>/...`,
//! namespaced or cluster-scoped, `/status` subresource):
//! - GET one / LIST (a namespaced list or across namespaces), with equality
//!   label selectors (`a=b,c=d`); the list carries the store's resourceVersion;
//! - WATCH (`?watch=true` or `1`) from `resourceVersion=N`: every change after
//!   N (ADDED/MODIFIED/DELETED, each object with its own monotonic
//!   resourceVersion), then live changes; `resourceVersion` 0 or unset starts
//!   with synthetic ADDED events for what exists; BOOKMARK events every
//!   `bookmark_interval` with `allowWatchBookmarks=true`; a resourceVersion
//!   older than the kept history (see `compact`) gets an ERROR event with a
//!   410 Gone Status, as the API server's watch cache does, so the client
//!   relists; the stream ends after `timeoutSeconds` or on `close_watches`;
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
//! `fail_writes` makes writes to one resource fail (500), to test error paths.
//! Not modelled: owner-reference garbage collection, admission, schema
//! validation, field selectors, dry runs, discovery.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Where an object lives: `api` is `v1` or `<group>/<version>`, `ns` is empty
/// for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub api: String,
    pub resource: String,
    pub ns: String,
    pub name: String,
}

/// One change, as a watch replays it.
struct Change {
    rv: u64,
    kind: &'static str,
    key: Key,
    obj: Value,
}

/// Changes kept for watches to resume from; older ones are compacted away.
const HISTORY: usize = 10_000;

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    /// `METHOD path?query`, one per request.
    log: Vec<String>,
    changes: VecDeque<Change>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    floor: u64,
    /// `api/resource` → kind, learnt from stored objects (bookmarks name it).
    kinds: BTreeMap<String, String>,
    /// Resources (`api/resource`) whose writes fail with 500.
    failing: Vec<String>,
}

impl Store {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn record(&mut self, kind: &'static str, key: Key, obj: Value) {
        if let Some(k) = obj["kind"].as_str() {
            self.kinds
                .insert(format!("{}/{}", key.api, key.resource), k.to_string());
        }
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.rv);
        self.changes.push_back(Change { rv, kind, key, obj });
        while self.changes.len() > HISTORY {
            if let Some(c) = self.changes.pop_front() {
                self.floor = c.rv;
            }
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    /// The store's resourceVersion after each write: wakes the watches.
    changed: watch::Sender<u64>,
    /// Bumped by `close_watches`: every open watch ends.
    epoch: watch::Sender<u64>,
    bookmark_interval: Mutex<Duration>,
    /// The bearer token `serve_tls` requires; the in-process client sends none.
    token: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Shared>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self {
            inner: Arc::new(Shared {
                store: Mutex::default(),
                changed: watch::channel(0).0,
                epoch: watch::channel(0).0,
                bookmark_interval: Mutex::new(Duration::from_secs(1)),
                token: Mutex::new(None),
            }),
        }
    }
}

struct Target {
    api: String,
    resource: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

type Body = BoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

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
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: impl Display) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.to_string(),
        "reason": reason, "code": code,
    })
}

fn error(code: u16, reason: &str, message: impl Display) -> Resp {
    reply(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
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

/// The decoded query parameters.
fn query_params(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// An equality label selector (`a=b,c==d`); anything else matches nothing,
/// so a test using a selector the fake cannot evaluate fails loudly.
fn selects(selector: Option<&String>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) else {
            return false;
        };
        obj["metadata"]["labels"][k.trim()].as_str() == Some(v.trim())
    })
}

fn in_scope(t: &Target, k: &Key) -> bool {
    k.api == t.api && k.resource == t.resource && t.ns.as_ref().is_none_or(|ns| &k.ns == ns)
}

fn line(v: &Value) -> Frame<Bytes> {
    let mut s = v.to_string();
    s.push('\n');
    Frame::data(Bytes::from(s))
}

/// A running `serve_tls` listener; dropping it stops accepting.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub token: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server, as `kubectl` would use it.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: fake\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n",
            url = self.url(),
            token = self.token,
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
    }

    /// A kube client that reaches this server over TLS through its kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
        let kc: kube::config::Kubeconfig = serde_yaml::from_str(&self.kubeconfig("default"))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// A kube client whose every request is answered by this fake, in process.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Ok::<_, Infallible>(error(400, "BadRequest", e)),
                };
                Ok::<_, Infallible>(me.handle(Request::from_parts(parts, body)).await)
            }
        });
        kube::Client::new(svc, "default")
    }

    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub fn set_bookmark_interval(&self, d: Duration) {
        if let Ok(mut b) = self.inner.bookmark_interval.lock() {
            *b = d;
        }
    }

    /// Serves the API over HTTPS on loopback (a fresh CA, a certificate for
    /// 127.0.0.1 and localhost) and requires a bearer token, as a cluster does.
    pub async fn serve_tls(&self) -> std::io::Result<TlsServer> {
        use tokio_rustls::rustls;
        let io = |e: &dyn Display| std::io::Error::other(e.to_string());
        let ca_key = rcgen::KeyPair::generate().map_err(|e| io(&e))?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| io(&e))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).map_err(|e| io(&e))?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| io(&e))?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| io(&e))?
            .signed_by(&leaf_key, &issuer)
            .map_err(|e| io(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io(&e))?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .map_err(|e| io(&e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let token = format!("fake-token-{}", std::process::id());
        if let Ok(mut t) = self.inner.token.lock() {
            *t = Some(token.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.handle_remote(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        Ok(TlsServer {
            addr,
            ca_pem: ca.pem(),
            token,
            task,
        })
    }

    async fn handle_remote(&self, req: Request<Incoming>) -> Resp {
        let want = self.inner.token.lock().ok().and_then(|t| t.clone());
        let got = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        if want.is_some() && got != want {
            return error(401, "Unauthorized", "Unauthorized");
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(400, "BadRequest", e),
        };
        self.handle(Request::from_parts(parts, body)).await
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A test that panicked while holding the lock already failed; keep serving.
        self.inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, api: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = Key {
            api: api.into(),
            resource: resource.into(),
            ns: ns.into(),
            name: name.into(),
        };
        self.store().objects.get(&key).cloned()
    }

    /// All objects of a resource, in every namespace.
    pub fn list(&self, api: &str, resource: &str) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|(k, _)| k.api == api && k.resource == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.store().log.clone()
    }

    /// Drops the change history: a watch resuming from any resourceVersion
    /// handed out so far gets 410 Gone (the version moves on by one, so a
    /// fresh list's version is the first valid one).
    pub fn compact(&self) {
        let mut st = self.store();
        st.rv += 1;
        st.floor = st.rv;
        st.changes.clear();
    }

    /// Ends every open watch (as an API server restart does).
    pub fn close_watches(&self) {
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// Writes to `api/resource` (e.g. `v1/secrets`) fail with 500 while `on`.
    pub fn fail_writes(&self, api: &str, resource: &str, on: bool) {
        let r = format!("{api}/{resource}");
        let mut st = self.store();
        st.failing.retain(|x| x != &r);
        if on {
            st.failing.push(r);
        }
    }

    /// Stores an object as a controller or a user elsewhere would, bypassing
    /// the HTTP layer (a Namespace, a Pod): watches see it.
    pub fn put(&self, api: &str, resource: &str, ns: &str, obj: Value) {
        let t = Target {
            api: api.into(),
            resource: resource.into(),
            ns: (!ns.is_empty()).then(|| ns.to_string()),
            name: None,
            sub: None,
        };
        let mut st = self.store();
        let _ = Self::create(&mut st, &t, obj);
        let rv = st.rv;
        drop(st);
        self.inner.changed.send_replace(rv);
    }

    async fn handle(&self, req: Request<Bytes>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let params = query_params(&query);
        let ctype = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body();
        let Some(t) = parse(&path) else {
            self.store().log.push(format!("{method} {path}?{query}"));
            return error(404, "NotFound", format!("no such path {path}"));
        };
        if method == Method::GET
            && t.name.is_none()
            && params.get("watch").is_some_and(|w| w == "true" || w == "1")
        {
            self.store().log.push(format!("{method} {path}?{query}"));
            return self.watch(t, &params);
        }
        let mut st = self.store();
        st.log.push(format!("{method} {path}?{query}"));
        if method != Method::GET
            && st
                .failing
                .iter()
                .any(|r| r == &format!("{}/{}", t.api, t.resource))
        {
            return error(500, "InternalError", "injected write failure");
        }
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
        let before = st.rv;
        // A dry run goes through every check against a scratch copy.
        let dry = params.get("dryRun").is_some_and(|d| d == "All");
        let mut scratch = Store {
            objects: if dry {
                st.objects.clone()
            } else {
                BTreeMap::new()
            },
            rv: st.rv,
            ..Store::default()
        };
        let w: &mut Store = if dry { &mut scratch } else { &mut st };
        let resp = match (&method, t.name.as_deref(), t.sub.as_deref()) {
            (&Method::GET, None, _) => Self::list_in(w, &t, params.get("labelSelector")),
            (&Method::GET, Some(name), _) => match w.objects.get(&key(name)) {
                Some(v) => reply(StatusCode::OK, v),
                None => not_found(&t, name),
            },
            (&Method::POST, None, None) => match parse_body() {
                Ok(v) => Self::create(w, &t, v),
                Err(e) => error(400, "BadRequest", e),
            },
            (&Method::PATCH, Some(name), sub) => {
                let patch = match parse_body() {
                    Ok(v) => v,
                    Err(e) => return error(400, "BadRequest", e),
                };
                let k = key(name);
                let Some(old) = w.objects.get(&k).cloned() else {
                    if ctype.starts_with("application/apply-patch") && sub.is_none() {
                        let r = Self::create(w, &t, patch);
                        return self.notify(st, before, r);
                    }
                    return not_found(&t, name);
                };
                let mut new = old.clone();
                if ctype.starts_with("application/json-patch") {
                    let ops: json_patch::Patch = match serde_json::from_value(patch.clone()) {
                        Ok(p) => p,
                        Err(e) => return error(400, "BadRequest", e),
                    };
                    // The API server's JSON patch treats a missing member as
                    // null in a `test` (kube-runtime's finalizer patch relies
                    // on it); json_patch calls that an invalid pointer.
                    let ops = json_patch::Patch(
                        ops.0
                            .into_iter()
                            .filter(|op| match op {
                                json_patch::PatchOperation::Test(t) => {
                                    !(t.value.is_null() && new.pointer(t.path.as_str()).is_none())
                                }
                                _ => true,
                            })
                            .collect(),
                    );
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
                Self::update(w, &t, k, old, new, pre, sub)
            }
            (&Method::PUT, Some(name), sub) => {
                let new = match parse_body() {
                    Ok(v) => v,
                    Err(e) => return error(400, "BadRequest", e),
                };
                let k = key(name);
                let Some(old) = w.objects.get(&k).cloned() else {
                    return not_found(&t, name);
                };
                let pre = new["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                Self::update(w, &t, k, old, new, pre, sub)
            }
            (&Method::DELETE, Some(name), None) => {
                let k = key(name);
                let Some(mut obj) = w.objects.get(&k).cloned() else {
                    return not_found(&t, name);
                };
                if finalizers(&obj).is_empty() {
                    w.objects.remove(&k);
                    obj["metadata"]["resourceVersion"] = json!(w.bump());
                    w.record("DELETED", k, obj.clone());
                } else if !deleting(&obj) {
                    obj["metadata"]["deletionTimestamp"] = json!(now());
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    obj["metadata"]["resourceVersion"] = json!(w.bump());
                    w.objects.insert(k.clone(), obj.clone());
                    w.record("MODIFIED", k, obj.clone());
                }
                reply(StatusCode::OK, &obj)
            }
            _ => error(405, "MethodNotAllowed", format!("{method} {path}")),
        };
        self.notify(st, before, resp)
    }

    /// Wakes the watches when the request changed the store.
    fn notify(&self, st: std::sync::MutexGuard<'_, Store>, before: u64, resp: Resp) -> Resp {
        let rv = st.rv;
        drop(st);
        if rv != before {
            self.inner.changed.send_replace(rv);
        }
        resp
    }

    fn watch(&self, t: Target, params: &BTreeMap<String, String>) -> Resp {
        let selector = params.get("labelSelector").cloned();
        let bookmarks = params
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true" || v == "1");
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let from = params
            .get("resourceVersion")
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<u64>());
        let interval = self
            .inner
            .bookmark_interval
            .lock()
            .map(|d| *d)
            .unwrap_or(Duration::from_secs(1));
        let (tx, mut rx) = mpsc::channel::<Frame<Bytes>>(64);
        let me = self.clone();
        tokio::spawn(async move {
            let mut changed = me.inner.changed.subscribe();
            let mut epoch = me.inner.epoch.subscribe();
            epoch.borrow_and_update();
            let end = tokio::time::Instant::now() + timeout;
            // The last resourceVersion sent; `None` until the start is known.
            let mut last: u64 = match from {
                Some(Ok(0)) | None => {
                    // "Any": the current state as synthetic ADDED events.
                    let (rv, objs) = {
                        let st = me.store();
                        let objs: Vec<Value> = st
                            .objects
                            .iter()
                            .filter(|(k, v)| in_scope(&t, k) && selects(selector.as_ref(), v))
                            .map(|(_, v)| v.clone())
                            .collect();
                        (st.rv, objs)
                    };
                    for o in objs {
                        if tx
                            .send(line(&json!({"type": "ADDED", "object": o})))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    rv
                }
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    let s = status(400, "BadRequest", "resourceVersion is not a number");
                    let _ = tx.send(line(&json!({"type": "ERROR", "object": s}))).await;
                    return;
                }
            };
            let mut next_bookmark = tokio::time::Instant::now() + interval;
            loop {
                let (events, gone, rv, kind) = {
                    let st = me.store();
                    let gone = last < st.floor;
                    let events: Vec<Value> = st
                        .changes
                        .iter()
                        .filter(|c| c.rv > last && in_scope(&t, &c.key))
                        .filter(|c| selects(selector.as_ref(), &c.obj))
                        .map(|c| json!({"type": c.kind, "object": c.obj}))
                        .collect();
                    let kind = st
                        .kinds
                        .get(&format!("{}/{}", t.api, t.resource))
                        .cloned()
                        .unwrap_or_default();
                    (events, gone, st.rv, kind)
                };
                if gone {
                    let s = status(
                        410,
                        "Expired",
                        format!("too old resource version: {last} ({rv})"),
                    );
                    let _ = tx.send(line(&json!({"type": "ERROR", "object": s}))).await;
                    return;
                }
                for e in events {
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                last = rv;
                if bookmarks && tokio::time::Instant::now() >= next_bookmark {
                    next_bookmark = tokio::time::Instant::now() + interval;
                    let bm = json!({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": t.api,
                        "metadata": {"resourceVersion": rv.to_string()},
                    }});
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                }
                let wake = if bookmarks {
                    next_bookmark.min(end)
                } else {
                    end
                };
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = epoch.changed() => return,
                    _ = tokio::time::sleep_until(wake) => {
                        if tokio::time::Instant::now() >= end {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|f| f.map(Ok::<_, Infallible>))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }

    fn list_in(st: &Store, t: &Target, selector: Option<&String>) -> Resp {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|(k, v)| in_scope(t, k) && selects(selector, v))
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
        st.objects.insert(key.clone(), obj.clone());
        st.record("ADDED", key, obj.clone());
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
            st.record("DELETED", key, new.clone());
        } else {
            st.objects.insert(key.clone(), new.clone());
            st.record("MODIFIED", key, new.clone());
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
