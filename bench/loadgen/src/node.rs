//! One simulated node: the real client stack from `meshscale-controlclient`
//! (Noise IK over the `/ts2021` upgrade, early payload, HTTP/2), with the
//! `/machine/*` requests sent directly so the map stream's body can be read
//! frame by frame instead of decoded in full.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use meshscale_controlclient::dial::Dialer;
use meshscale_controlclient::http2::Http2Conn;
use meshscale_controlclient::noise::EarlyPayloadReader;
use meshscale_controlclient::noise::early::MAX_EARLY_PAYLOAD;
use meshscale_controlclient::{DiscoKey, MachineKey, NodeKey, requests};
use meshscale_wire::tailcfg::{EndpointType, MapRequest, RegisterResponse};
use meshscale_wire::{MachinePublic, NodePublic};

use crate::frames::{FrameError, FrameReader};
use crate::probe::{Shared, decode};

/// Protocol version sent in the Noise header and requests.
const VERSION: u16 = 133;
/// Bytes of a register or update response read at most.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("dial: {0}")]
    Dial(#[from] meshscale_controlclient::dial::DialError),
    #[error("HTTP/2: {0}")]
    Http2(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(String),
    #[error("{path}: HTTP {status}")]
    Status { path: &'static str, status: u16 },
    #[error("register refused: {0}")]
    Refused(String),
    #[error("map stream: {0}")]
    Frame(#[from] FrameError),
}

/// Keys made before the clock starts: real nodes make theirs long before
/// they register, so key generation is not charged to registration.
pub struct Keys {
    pub machine: MachineKey,
    pub node: NodeKey,
    pub disco: DiscoKey,
}

impl Keys {
    pub fn generate() -> Result<Keys, meshscale_controlclient::KeyError> {
        Ok(Keys {
            machine: MachineKey::generate()?,
            node: NodeKey::generate()?,
            disco: DiscoKey::generate()?,
        })
    }
}

pub struct Node {
    pub name: String,
    pub node: NodePublic,
    disco: meshscale_wire::DiscoPublic,
    conn: Http2Conn,
    authority: String,
}

impl Node {
    pub async fn connect(
        dialer: &Dialer,
        server_key: &MachinePublic,
        keys: &Keys,
        name: String,
    ) -> Result<Node, NodeError> {
        let stream = dialer.handshake(&keys.machine, server_key, VERSION).await?;
        let (reader, _early) = EarlyPayloadReader::new(stream, MAX_EARLY_PAYLOAD);
        let conn = Http2Conn::handshake(reader).await?;
        Ok(Node {
            name,
            node: keys.node.public(),
            disco: keys.disco.public(),
            conn,
            authority: dialer.url().host_header(),
        })
    }

    async fn post(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, NodeError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{}{path}", self.authority))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Ts-Lb", self.node.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| NodeError::Request(e.to_string()))?;
        let mut sender = self.conn.sender();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(NodeError::Status {
                path,
                status: resp.status().as_u16(),
            });
        }
        Ok(resp)
    }

    async fn read_body(resp: Response<Incoming>) -> Result<Bytes, NodeError> {
        Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| NodeError::Request(e.to_string()))
    }

    fn hostinfo(&self) -> meshscale_wire::tailcfg::Hostinfo {
        requests::hostinfo(&self.name)
    }

    pub async fn register(&self, auth_key: &str) -> Result<(), NodeError> {
        let mut req = requests::register_with_auth_key(self.node, auth_key, self.hostinfo());
        req.version = i64::from(VERSION);
        let body = serde_json::to_vec(&req).map_err(|e| NodeError::Request(e.to_string()))?;
        let resp = Self::read_body(self.post("/machine/register", body).await?).await?;
        let r: RegisterResponse =
            serde_json::from_slice(&resp).map_err(|e| NodeError::Request(e.to_string()))?;
        if !r.machine_authorized || !r.error.is_empty() {
            return Err(NodeError::Refused(r.error));
        }
        Ok(())
    }

    fn map_request(&self, endpoints: &[String]) -> MapRequest {
        let eps: Vec<(String, EndpointType)> = endpoints
            .iter()
            .map(|e| (e.clone(), EndpointType::LOCAL))
            .collect();
        let mut req = requests::endpoint_update(self.node, self.disco, &eps, self.hostinfo());
        req.version = i64::from(VERSION);
        req
    }

    /// Opens the long poll; the body is read by [`Session::run`].
    pub async fn open_stream(&self, endpoints: &[String]) -> Result<Incoming, NodeError> {
        let mut req = self.map_request(endpoints);
        req.stream = true;
        req.omit_peers = false;
        let body = serde_json::to_vec(&req).map_err(|e| NodeError::Request(e.to_string()))?;
        Ok(self.post("/machine/map", body).await?.into_body())
    }

    /// The "lite" endpoint update official clients send beside the long poll.
    pub async fn update_endpoints(&self, endpoints: &[String]) -> Result<(), NodeError> {
        let body = serde_json::to_vec(&self.map_request(endpoints))
            .map_err(|e| NodeError::Request(e.to_string()))?;
        Self::read_body(self.post("/machine/map", body).await?).await?;
        Ok(())
    }

    pub fn conn(&self) -> Http2Conn {
        self.conn.clone()
    }
}

/// What a session found out about its own first message, when asked to look.
#[derive(Debug, Default, Clone)]
pub struct FirstMap {
    pub self_id: Option<i64>,
    pub peers: usize,
    pub complete: bool,
}

/// Reads one map stream until it ends. The first frame (the full map) is
/// decoded only when `inspect` is set; deltas only while a probe is open.
pub async fn run_session(
    mut body: Incoming,
    conn: Http2Conn,
    shared: Arc<Shared>,
    inspect: Option<tokio::sync::oneshot::Sender<FirstMap>>,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    shared.alive.fetch_add(1, Ordering::AcqRel);
    let mut reader = FrameReader::default();
    let mut done = Vec::new();
    let mut inspect = inspect;
    let mut last_probe = 0u64;
    let result: Result<(), NodeError> = async {
        let mut stop = stop;
        loop {
            let next = match &mut stop {
                Some(rx) => tokio::select! {
                    f = body.frame() => f,
                    _ = rx => None,
                },
                None => body.frame().await,
            };
            let Some(frame) = next else { break };
            let frame = frame?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let want_first = inspect.is_some();
            let probing = shared.probing();
            reader.feed(
                &data,
                &mut |i, _| if i == 0 { want_first } else { probing },
                &mut done,
            )?;
            for f in done.drain(..) {
                shared.frames.fetch_add(1, Ordering::Relaxed);
                shared
                    .frame_bytes
                    .fetch_add(f.len as u64 + 4, Ordering::Relaxed);
                if f.index == 0 {
                    if let (Some(tx), Some(b)) = (inspect.take(), &f.body) {
                        let _ = tx.send(first_map(b));
                    }
                    shared.mapped.fetch_add(1, Ordering::AcqRel);
                } else if let Some(b) = &f.body {
                    shared.check(b, &mut last_probe);
                }
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        shared.stream_errors.fetch_add(1, Ordering::Relaxed);
    }
    // Closing the connection is how a node leaves.
    drop(body);
    drop(conn);
    shared.alive.fetch_sub(1, Ordering::AcqRel);
}

fn first_map(body: &[u8]) -> FirstMap {
    match decode(body) {
        Some(m) => FirstMap {
            self_id: m.node.as_ref().map(|n| n.id),
            peers: m.peers.len(),
            complete: m.node.is_some() && m.derp_map.is_some() && !m.packet_filters.is_empty(),
        },
        None => FirstMap::default(),
    }
}
