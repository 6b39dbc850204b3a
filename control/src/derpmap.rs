//! The DERP map nodes receive, assembled as Headscale does: the maps of
//! `derp.urls` (fetched over HTTPS, tailcfg.DERPMap JSON), then those of
//! `derp.paths` (files, YAML or JSON), then the embedded relay's region (999
//! by default, like Headscale's). A later region replaces an earlier one with
//! the same id; a `null` region removes it (Headscale's example disables
//! Tailscale's region 1 so). Field names are matched without regard to case,
//! as Go's decoders do (Headscale's YAML files spell them `regionid`,
//! `hostname`, ...). With `derp.auto_update_enabled` the sources are re-read
//! every `derp.update_frequency` ([`spawn_refresh`]) and a changed map goes
//! out to every connected node.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use meshscale_wire::tailcfg::{DerpMap, DerpNode, DerpRegion};
use serde::Deserialize;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::config::{Config, ConfigError};
use crate::mapper::Hub;

/// Files and answers larger than this are not DERP maps (Tailscale's whole
/// default map is about 20 KiB).
pub const MAX_DERP_MAP_BYTES: usize = 4 * 1024 * 1024;

/// A fetch that takes longer, connection to last byte, has failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// First retry after a failed refresh; doubled up to the update frequency.
const FIRST_RETRY: Duration = Duration::from_secs(30);

/// Why a DERP map could not be fetched from a URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {MAX_DERP_MAP_BYTES} bytes")]
    TooLarge,
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("not a DERP map: {0}")]
    NotAMap(String),
    #[error("TLS setup: {0}")]
    TlsSetup(String),
}

/// Why the DERP map could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DerpMapError {
    #[error("config key `derp.urls`: {url}: {problem}")]
    Fetch { url: String, problem: FetchError },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One source's regions; `None` marks a region the source removes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SourceMap {
    #[serde(rename = "Regions")]
    regions: Option<BTreeMap<i64, Option<DerpRegion>>>,
}

/// The JSON field names of tailcfg.DERPMap, DERPRegion, DERPNode and
/// DERPHomeParams as `meshscale_wire` spells them.
const FIELD_NAMES: &[&str] = &[
    "Regions",
    "HomeParams",
    "RegionScore",
    "omitDefaultRegions",
    "RegionID",
    "RegionCode",
    "RegionName",
    "Latitude",
    "Longitude",
    "Avoid",
    "NoMeasureNoHome",
    "Nodes",
    "Name",
    "HostName",
    "CertName",
    "IPv4",
    "IPv6",
    "STUNPort",
    "STUNOnly",
    "DERPPort",
    "InsecureForTests",
    "STUNTestIP",
    "CanPort80",
];

/// Renames every object key that matches a field name but for case.
fn canonical_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut child) in old {
                canonical_keys(&mut child);
                let k = FIELD_NAMES
                    .iter()
                    .find(|f| f.eq_ignore_ascii_case(&k))
                    .map_or(k, |f| (*f).to_string());
                map.insert(k, child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonical_keys),
        _ => {}
    }
}

impl SourceMap {
    /// Parses a DERP map in JSON (or, with `yaml`, YAML: a superset).
    pub fn parse(bytes: &[u8], yaml: bool) -> Result<SourceMap, String> {
        let mut json: serde_json::Value = if yaml {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
            serde_json::to_value(value).map_err(|e| e.to_string())?
        } else {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())?
        };
        canonical_keys(&mut json);
        serde_json::from_value(json).map_err(|e| e.to_string())
    }
}

/// Fetches DERP maps over HTTPS (HTTP/1.1, no redirects, bounded size and time).
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<ClientConfig>,
    timeout: Duration,
}

impl Fetcher {
    /// Trusting the system's CA certificates.
    pub fn new() -> Result<Fetcher, FetchError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping unreadable system CA certificates");
        }
        roots.add_parsable_certificates(native.certs);
        Self::with_roots(roots)
    }

    /// Trusting exactly `roots`.
    pub fn with_roots(roots: RootCertStore) -> Result<Fetcher, FetchError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::TlsSetup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher {
            tls: Arc::new(tls),
            timeout: FETCH_TIMEOUT,
        })
    }

    pub async fn fetch(&self, url: &str) -> Result<SourceMap, FetchError> {
        let target = parse_https_url(url).map_err(FetchError::BadUrl)?;
        let body = tokio::time::timeout(self.timeout, self.get(&target))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        SourceMap::parse(&body, false).map_err(FetchError::NotAMap)
    }

    async fn get(&self, target: &HttpsUrl) -> Result<Bytes, FetchError> {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(FetchError::Connect)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| FetchError::BadUrl(format!("host {}: {e}", target.host)))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(FetchError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(FetchError::Http)?;
        // Drives the connection; it ends with the request (no keep-alive use).
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "DERP map fetch: connection ended");
            }
        });
        let request = hyper::Request::get(target.path_and_query.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(hyper::header::USER_AGENT, "meshscale")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::BadUrl(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(FetchError::Http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        // Limited refuses a body past the bound as it arrives, whatever
        // Content-Length claims.
        let collected = Limited::new(response.into_body(), MAX_DERP_MAP_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => FetchError::Http(*e),
                Err(_) => FetchError::TooLarge,
            })?;
        Ok(collected.to_bytes())
    }
}

/// An `https://` URL, split for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpsUrl {
    /// Without brackets for IPv6 literals.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as it goes in the Host header.
    pub authority: String,
    pub path_and_query: String,
}

/// Checks a `derp.urls` entry: `https://` only (a map fetched in clear
/// could point every node at an attacker's relays), with a host.
pub fn parse_https_url(url: &str) -> Result<HttpsUrl, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must start with https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(HttpsUrl {
        host,
        port: authority.port_u16().unwrap_or(443),
        authority: authority.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// Fetches every `derp.urls` map (in order; any failure fails the whole),
/// then assembles the map with the files and the embedded region.
pub async fn load(config: &Config, fetcher: &Fetcher) -> Result<DerpMap, DerpMapError> {
    let mut fetched = Vec::with_capacity(config.derp.urls.len());
    for url in &config.derp.urls {
        let map = fetcher
            .fetch(url)
            .await
            .map_err(|problem| DerpMapError::Fetch {
                url: url.clone(),
                problem,
            })?;
        fetched.push(map);
    }
    Ok(assemble(config, fetched)?)
}

/// Re-reads the sources every `every` and hands a changed map to the hub
/// (which sends it to every live session). A failed refresh keeps the map
/// in force and is retried sooner, backing off up to `every`.
pub fn spawn_refresh(
    config: Config,
    hub: Arc<Hub>,
    fetcher: Fetcher,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = every;
        let mut retry = FIRST_RETRY.min(every);
        loop {
            tokio::time::sleep(wait).await;
            match load(&config, &fetcher).await {
                Ok(map) => {
                    wait = every;
                    retry = FIRST_RETRY.min(every);
                    let regions = map.regions.as_ref().map_or(0, BTreeMap::len);
                    if hub.set_derp_map(map) {
                        tracing::info!(regions, "DERP map changed; sent to connected nodes");
                    } else {
                        tracing::debug!(regions, "DERP map refreshed, unchanged");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "DERP map refresh failed; keeping the current map");
                    wait = retry;
                    retry = retry.saturating_mul(2).min(every);
                }
            }
        }
    })
}

/// Host and port clients use to reach this server, from `server_url`.
pub fn server_host_port(server_url: &str) -> (String, u16, bool) {
    let https = server_url.starts_with("https://");
    let rest = server_url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or_default();
    let default_port = if https { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_string(), port, https);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default_port), https),
        None => (authority.to_string(), default_port, https),
    }
}

/// The map from `derp.paths` and the embedded region only (no fetching):
/// what a config without `derp.urls` gives.
pub fn build(config: &Config) -> Result<DerpMap, ConfigError> {
    assemble(config, Vec::new())
}

/// Merges `fetched` (the `derp.urls` maps, in order), the `derp.paths`
/// files and the embedded region, later sources winning.
pub fn assemble(config: &Config, fetched: Vec<SourceMap>) -> Result<DerpMap, ConfigError> {
    let mut sources = fetched;
    for path in &config.derp.paths {
        sources.push(load_file(Path::new(path))?);
    }
    let mut regions: BTreeMap<i64, DerpRegion> = BTreeMap::new();
    for source in sources {
        for (id, region) in source.regions.unwrap_or_default() {
            match region {
                Some(r) => regions.insert(id, r),
                None => regions.remove(&id),
            };
        }
    }
    let d = &config.derp.server;
    if d.enabled && d.automatically_add_embedded_derp_region {
        let (host, port, _) = server_host_port(&config.server_url);
        let stun_port = d
            .stun_listen_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| i64::from(a.port()))
            .map_err(|_| ConfigError::Key {
                key: "derp.server.stun_listen_addr".into(),
                problem: "not an address".into(),
            })?;
        let region_id = i64::from(d.region_id);
        // The embedded region wins over a file's region with the same id, as in Headscale.
        regions.insert(
            region_id,
            DerpRegion {
                region_id,
                region_code: d.region_code.clone(),
                region_name: d.region_name.clone(),
                nodes: vec![DerpNode {
                    name: region_id.to_string(),
                    region_id,
                    host_name: host,
                    ipv4: d.ipv4.clone(),
                    ipv6: d.ipv6.clone(),
                    stun_port,
                    derp_port: i64::from(port),
                    ..DerpNode::default()
                }],
                ..DerpRegion::default()
            },
        );
    }
    Ok(DerpMap {
        regions: Some(regions),
        ..DerpMap::default()
    })
}

fn load_file(path: &Path) -> Result<SourceMap, ConfigError> {
    let problem = |p: String| ConfigError::Key {
        key: "derp.paths".to_string(),
        problem: format!("{}: {p}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|e| problem(e.to_string()))?;
    let mut bytes = Vec::new();
    // Bounded read, not the size on disk: a FIFO or a growing file has none.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_DERP_MAP_BYTES as u64 + 1),
        &mut bytes,
    )
    .map_err(|e| problem(e.to_string()))?;
    if bytes.len() > MAX_DERP_MAP_BYTES {
        return Err(problem(format!("larger than {MAX_DERP_MAP_BYTES} bytes")));
    }
    // YAML is a superset of JSON: Headscale's DERP map files come in either.
    SourceMap::parse(&bytes, true).map_err(|e| problem(format!("not a DERP map: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_from_server_url() {
        assert_eq!(
            server_host_port("https://mesh.example.com"),
            ("mesh.example.com".into(), 443, true)
        );
        assert_eq!(
            server_host_port("http://10.0.0.1:8080/"),
            ("10.0.0.1".into(), 8080, false)
        );
        assert_eq!(
            server_host_port("https://[fd00::1]:8443"),
            ("fd00::1".into(), 8443, true)
        );
    }

    #[test]
    fn embedded_region_is_announced() {
        let mut c = Config {
            server_url: "https://10.0.0.1:8443".into(),
            ..Config::default()
        };
        c.derp.server.stun_listen_addr = "0.0.0.0:3479".into();
        let m = build(&c).unwrap();
        let r = &m.regions.as_ref().unwrap()[&999];
        assert_eq!(r.region_code, "meshscale");
        assert_eq!(
            (
                r.nodes[0].host_name.as_str(),
                r.nodes[0].derp_port,
                r.nodes[0].stun_port
            ),
            ("10.0.0.1", 8443, 3479)
        );
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""Regions":{"999":"#), "{json}");
    }

    #[test]
    fn extra_regions_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("derp.json");
        std::fs::write(&f, r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"x","RegionName":"X","Nodes":[{"Name":"900a","RegionID":900,"HostName":"derp.example"}]}}}"#).unwrap();
        let mut c = Config::default();
        c.derp.paths.push(f.display().to_string());
        let m = build(&c).unwrap();
        assert_eq!(m.regions.unwrap().len(), 2);
        std::fs::write(&f, "nope: [").unwrap();
        assert!(build(&c).is_err());
        std::fs::write(&f, vec![b' '; MAX_DERP_MAP_BYTES + 1]).unwrap();
        let err = build(&c).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    /// Headscale's derp-example.yaml, as its docs tell admins to write one:
    /// lower-case field names (Go's YAML decoder) and a `null` region that
    /// removes Tailscale's region 1 brought in by an earlier source.
    #[test]
    fn headscale_yaml_file_with_a_removed_region() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("derp.yaml");
        std::fs::write(
            &f,
            "regions:\n  1: null\n  900:\n    regionid: 900\n    regioncode: custom\n    regionname: My Region\n    nodes:\n      - name: 900a\n        regionid: 900\n        hostname: myderp.example.com\n        ipv4: 198.51.100.1\n        stunport: 0\n        stunonly: false\n        derpport: 0\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.derp.paths.push(f.display().to_string());
        let from_url = SourceMap::parse(
            br#"{"Regions":{"1":{"RegionID":1,"RegionCode":"nyc","Nodes":[{"Name":"1a","RegionID":1,"HostName":"derp1.example"}]},"2":{"RegionID":2,"RegionCode":"sfo","Nodes":[]}}}"#,
            false,
        )
        .unwrap();
        let m = assemble(&c, vec![from_url]).unwrap();
        let regions = m.regions.unwrap();
        assert_eq!(regions.keys().copied().collect::<Vec<_>>(), [2, 900, 999]);
        let r = &regions[&900];
        assert_eq!(
            (r.region_code.as_str(), r.region_name.as_str()),
            ("custom", "My Region")
        );
        assert_eq!(r.nodes[0].host_name, "myderp.example.com");
        assert_eq!(r.nodes[0].ipv4, "198.51.100.1");
    }

    #[test]
    fn embedded_region_can_be_left_to_a_file() {
        let mut c = Config::default();
        c.derp.server.automatically_add_embedded_derp_region = false;
        assert!(build(&c).unwrap().regions.unwrap().is_empty());
    }

    #[test]
    fn only_https_urls_with_a_host() {
        let u = parse_https_url("https://derp.example:8443/map?x=1").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path_and_query.as_str()
            ),
            ("derp.example", 8443, "derp.example:8443", "/map?x=1")
        );
        assert_eq!(parse_https_url("https://[::1]/").unwrap().host, "::1");
        assert_eq!(
            parse_https_url("https://h.example").unwrap().path_and_query,
            "/"
        );
        for bad in [
            "http://derp.example/map",
            "derp.example/map",
            "https://",
            "https://u:p@h/",
        ] {
            assert!(parse_https_url(bad).is_err(), "{bad}");
        }
    }

    /// A DERP map server on loopback with its own CA; what it answers can
    /// be changed while it runs.
    struct MapServer {
        url: String,
        roots: RootCertStore,
        answer: Arc<std::sync::Mutex<(u16, Vec<u8>)>>,
        /// Requests answered so far.
        hits: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn map_server() -> MapServer {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(std::sync::Mutex::new((200u16, Vec::new())));
        let served = answer.clone();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let served = served.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let (status, body) = served.lock().unwrap().clone();
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            let mut resp =
                                hyper::Response::new(http_body_util::Full::new(Bytes::from(body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        MapServer {
            url: format!("https://localhost:{port}/derpmap/default"),
            roots,
            answer,
            hits,
        }
    }

    fn region_json(id: i64, host: &str) -> String {
        format!(
            r#"{{"Regions":{{"{id}":{{"RegionID":{id},"RegionCode":"r{id}","Nodes":[{{"Name":"{id}a","RegionID":{id},"HostName":"{host}"}}]}}}}}}"#
        )
    }

    #[tokio::test]
    async fn maps_are_fetched_over_https_and_merged() {
        let server = map_server().await;
        *server.answer.lock().unwrap() = (200, region_json(1, "derp1.example").into_bytes());
        let mut c = Config::default();
        c.derp.urls.push(server.url.clone());
        let fetcher = Fetcher::with_roots(server.roots.clone()).unwrap();
        let m = load(&c, &fetcher).await.unwrap();
        let regions = m.regions.unwrap();
        assert_eq!(regions.keys().copied().collect::<Vec<_>>(), [1, 999]);
        assert_eq!(regions[&1].nodes[0].host_name, "derp1.example");

        // A server whose certificate the system roots do not vouch for is refused.
        let untrusting = Fetcher::with_roots(RootCertStore::empty()).unwrap();
        let err = load(&c, &untrusting).await.unwrap_err().to_string();
        assert!(err.contains("derp.urls") && err.contains("TLS"), "{err}");

        *server.answer.lock().unwrap() = (404, Vec::new());
        let err = load(&c, &fetcher).await.unwrap_err().to_string();
        assert!(err.contains("HTTP 404"), "{err}");

        *server.answer.lock().unwrap() = (200, b"<html>".to_vec());
        let err = load(&c, &fetcher).await.unwrap_err().to_string();
        assert!(err.contains("not a DERP map"), "{err}");

        *server.answer.lock().unwrap() = (200, vec![b' '; MAX_DERP_MAP_BYTES + 1]);
        let err = load(&c, &fetcher).await.unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn refresh_hands_a_changed_map_to_the_hub() {
        let server = map_server().await;
        *server.answer.lock().unwrap() = (200, region_json(1, "old.example").into_bytes());
        let mut c = Config::default();
        c.derp.urls.push(server.url.clone());
        let fetcher = Fetcher::with_roots(server.roots.clone()).unwrap();
        let first = load(&c, &fetcher).await.unwrap();
        let hub = Arc::new(Hub::new(crate::mapper::Tailnet {
            domain: "mesh".into(),
            base_domain: None,
            derp_map: first,
            dns: Default::default(),
        }));
        let host = |hub: &Hub| {
            hub.derp_map().regions.as_ref().unwrap()[&1].nodes[0]
                .host_name
                .clone()
        };
        assert_eq!(host(&hub), "old.example");

        // A failing source keeps the map in force; the next good answer replaces it.
        *server.answer.lock().unwrap() = (503, Vec::new());
        let before = server.hits.load(std::sync::atomic::Ordering::SeqCst);
        let task = spawn_refresh(c, hub.clone(), fetcher, Duration::from_millis(20));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Two requests: the first failed refresh is over.
        while server.hits.load(std::sync::atomic::Ordering::SeqCst) < before + 2 {
            assert!(tokio::time::Instant::now() < deadline, "no refresh attempt");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(host(&hub), "old.example");
        *server.answer.lock().unwrap() = (200, region_json(1, "new.example").into_bytes());
        while host(&hub) != "new.example" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the refreshed map never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hub.derp_map().regions.as_ref().unwrap().contains_key(&999));
        task.abort();
    }
}
