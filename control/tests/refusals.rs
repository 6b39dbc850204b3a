//! Refusals: a recorded registration replayed byte for byte, the node key
//! of an expired and of a deleted node (register, map, DERP), and DERP
//! clients sending to peers they have no business with — the relay
//! admits only registered, unexpired node keys, cuts a node off once it is
//! deleted or expired, relays only to connected, admitted nodes, and counts
//! what it refuses (`meshscale_derp_refused_*`).

#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mesh::{
    DEADLINE, TestNode, authorized, node_by_key, nodes, poll_until, preauth_key, start_mesh,
    wait_for_delta,
};
use meshscale_control::derp::crypto;
use meshscale_control::derp::frame::{self, Frame, FrameDecoder, FrameType, ServerMessage};
use meshscale_controlclient::{ClientError, ConnectOptions, ControlClient, MachineKey, requests};
use support::backends;
use support::server::{Server, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `timeouts.derp_verify_interval` here: short, so a deleted node's relay
/// connection is cut within the test's patience.
const VERIFY_INTERVAL: &str = "1s";

fn config() -> String {
    format!("timeouts:\n  derp_verify_interval: {VERIFY_INTERVAL}\n")
}

/// What one proxied connection carried.
#[derive(Default)]
struct Recorded {
    client_to_server: Vec<u8>,
    server_to_client: Vec<u8>,
    done: bool,
}

/// A loopback TCP proxy in front of the server that records every byte of
/// every connection, both ways.
async fn recording_proxy(server: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let conns = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(server).await else {
                continue;
            };
            let index = {
                let mut all = conns.lock().expect("log");
                all.push(Recorded::default());
                all.len() - 1
            };
            let conns = conns.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up_log = conns.clone();
                let up = async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        up_log.lock().expect("log")[index]
                            .client_to_server
                            .extend_from_slice(&buf[..n]);
                    }
                    let _ = uw.shutdown().await;
                };
                let down_log = conns.clone();
                let down = async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = ur.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        down_log.lock().expect("log")[index]
                            .server_to_client
                            .extend_from_slice(&buf[..n]);
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
                conns.lock().expect("log")[index].done = true;
            });
        }
    });
    (addr, log)
}

/// Index of the first `\r\n\r\n`-terminated HTTP head's end in `bytes`.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Sends `bytes` as one client would and returns everything the server
/// sent back until it closed the connection (it must, within [`DEADLINE`]).
async fn replay(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server).await.expect("connect");
    // The server may hang up before it has read everything.
    let _ = tcp.write_all(bytes).await;
    let mut back = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return back,
            Ok(Ok(n)) => back.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a replayed session open"),
        }
    }
}

/// The fields of a listed node that a replayed registration could change.
fn identity(n: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": n["id"], "machine_key": n["machine_key"], "node_key": n["node_key"],
        "user": n["user"], "expiry": n["expiry"], "given_name": n["given_name"],
        "ip_addresses": n["ip_addresses"], "register_method": n["register_method"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_registration_is_refused() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        // Reusable: the key itself would let a second registration in, so
        // only the transport can stop the replay.
        let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
        let (proxy, log) = recording_proxy(s.http).await;

        let machine = MachineKey::generate().expect("machine key");
        let node = meshscale_controlclient::NodeKey::generate().expect("node key");
        let client = ControlClient::connect(
            &format!("http://{proxy}"),
            &machine,
            ConnectOptions::default(),
        )
        .await
        .expect("connect through the proxy");
        let r = client
            .register(requests::register_with_auth_key(
                node.public(),
                &key,
                requests::hostinfo("recorded"),
            ))
            .await
            .expect("register");
        assert!(authorized(&r), "{ctx}: {r:?}");
        drop(client);
        let recorded = poll_until("the recorded session to end", || {
            let log = log.clone();
            async move {
                let all = log.lock().expect("log");
                all.iter()
                    .find(|c| c.client_to_server.starts_with(b"POST /ts2021"))
                    .filter(|c| c.done)
                    .map(|c| (c.client_to_server.clone(), c.server_to_client.clone()))
            }
        })
        .await;
        let (sent, answered) = recorded;
        let before: Vec<_> = nodes(&s).await.iter().map(identity).collect();
        assert_eq!(before.len(), 1, "{ctx}: {before:?}");

        // Byte for byte again, while the node exists.
        let back = replay(s.http, &sent).await;
        let (Some(rec_head), Some(new_head)) = (head_end(&answered), head_end(&back)) else {
            panic!("{ctx}: no 101 in the answers");
        };
        assert!(
            back.starts_with(b"HTTP/1.1 101"),
            "{ctx}: replay not upgraded"
        );
        // The server answers the same initiation with a fresh ephemeral
        // key: the handshake response differs, so the recorded records no
        // longer decrypt and the server hangs up on the first one.
        let response_len = 3 + 48;
        assert!(
            back.len() >= new_head + response_len,
            "{ctx}: no handshake response"
        );
        assert_ne!(
            &back[new_head..new_head + response_len],
            &answered[rec_head..rec_head + response_len],
            "{ctx}: the server repeated its handshake response"
        );
        let after: Vec<_> = nodes(&s).await.iter().map(identity).collect();
        assert_eq!(after, before, "{ctx}: a replay changed the node list");

        // And after the node is deleted: the replay does not bring it back.
        let id = before[0]["id"].to_string();
        s.ok(&["nodes", "delete", "-i", &id, "--force"]).await;
        replay(s.http, &sent).await;
        assert!(
            nodes(&s).await.is_empty(),
            "{ctx}: a replayed registration re-created a deleted node"
        );
        assert_eq!(
            s.log_text()
                .matches("node registered with a pre-auth key")
                .count(),
            1,
            "{ctx}: the server registered more than once"
        );
    }
}

/// A minimal DERP client over the main listener's `/derp` upgrade, on the
/// relay's own framing and crypto helpers.
struct DerpClient {
    tcp: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    public: [u8; 32],
}

impl DerpClient {
    /// Upgrades, reads ServerKey, sends ClientInfo sealed with `private`.
    /// Returns the client once ServerInfo arrived, or why not.
    async fn connect(server: SocketAddr, private: [u8; 32]) -> Result<DerpClient, String> {
        let mut tcp = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(
            b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut c = DerpClient {
            tcp,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
            public: crypto::public_key(&private),
        };
        loop {
            if let Some(end) = head_end(&c.buf) {
                if !c.buf.starts_with(b"HTTP/1.1 101") {
                    return Err(format!("no upgrade: {}", String::from_utf8_lossy(&c.buf)));
                }
                let _ = c.buf.split_to(end);
                break;
            }
            c.fill().await?;
        }
        let server_key = frame::parse_server_key(&c.frame().await?).map_err(|e| e.to_string())?;
        let secret = crypto_box::SecretKey::from_bytes(private);
        let sealed = crypto::seal(&secret, &server_key, br#"{"version":2,"CanAckPings":true}"#);
        let mut out = BytesMut::new();
        frame::client_info_frame(&mut out, &c.public, &sealed).map_err(|e| e.to_string())?;
        c.tcp.write_all(&out).await.map_err(|e| e.to_string())?;
        let info = c.frame().await?;
        if info.frame_type != FrameType::SERVER_INFO {
            return Err(format!("expected ServerInfo, got {}", info.frame_type));
        }
        Ok(c)
    }

    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(16 << 10);
        match tokio::time::timeout(DEADLINE, self.tcp.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Err("closed by the server".into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("closed by the server: {e}")),
            Err(_) => Err("no frame in time".into()),
        }
    }

    async fn frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| e.to_string())?
            {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    async fn send(&mut self, to: &[u8; 32], packet: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::send_packet_frame(&mut out, to, packet).map_err(std::io::Error::other)?;
        self.tcp.write_all(&out).await
    }

    /// The next packet relayed to us, skipping keep-alives and pings.
    async fn recv_packet(&mut self) -> Result<([u8; 32], Vec<u8>), String> {
        loop {
            match ServerMessage::parse(&self.frame().await?) {
                ServerMessage::RecvPacket { from, packet } => return Ok((from, packet.to_vec())),
                ServerMessage::KeepAlive | ServerMessage::Ping(_) => continue,
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    /// Whether the server closes this connection within [`DEADLINE`].
    async fn closed_by_server(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            match self.frame().await {
                Ok(_) => continue,
                Err(e) => return e.starts_with("closed"),
            }
        }
        false
    }
}

fn derp_private(n: &TestNode) -> [u8; 32] {
    *n.node.private().as_bytes()
}

/// The value of one metric line (`name{labels}`), 0 if absent.
async fn metric(s: &Server, line: &str) -> u64 {
    let (status, text) = http_get(s.metrics, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const NO_SUCH_PEER: &str = r#"meshscale_derp_refused_frames_total{reason="no_such_peer"}"#;
const NOT_A_NODE: &str = r#"meshscale_derp_refused_connections_total{reason="not_a_node"}"#;
const REVOKED: &str = r#"meshscale_derp_refused_connections_total{reason="revoked"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_deleted_node_keys_are_refused() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
        let watcher = TestNode::join(&s, "watcher", &key).await;
        let (mut watch, _) = watcher.stream().await;
        let expiring = TestNode::join(&s, "expiring", &key).await;
        let deleted = TestNode::join(&s, "deleted", &key).await;
        let id_of = |v: serde_json::Value| v["id"].to_string();
        let expiring_id = id_of(node_by_key(&s, &expiring.node).await.expect("listed"));
        let deleted_id = id_of(node_by_key(&s, &deleted.node).await.expect("listed"));

        // All three are on the relay; packets flow between registered nodes.
        let mut w = DerpClient::connect(s.http, derp_private(&watcher))
            .await
            .expect("watcher on DERP");
        let mut e = DerpClient::connect(s.http, derp_private(&expiring))
            .await
            .expect("expiring on DERP");
        let mut d = DerpClient::connect(s.http, derp_private(&deleted))
            .await
            .expect("deleted on DERP");
        d.send(&w.public, b"hello").await.expect("send");
        assert_eq!(
            w.recv_packet().await.expect("relayed"),
            (d.public, b"hello".to_vec()),
            "{ctx}"
        );

        // A key that is no node at all: refused at the handshake.
        let stranger = crypto::generate_private_key();
        let refused_before = metric(&s, NOT_A_NODE).await;
        let err = DerpClient::connect(s.http, stranger).await.err();
        assert!(
            err.is_some_and(|e| e.starts_with("closed")),
            "{ctx}: stranger admitted"
        );
        // Sending to it (or to any key that is no connected node): not relayed, counted.
        let dropped_before = metric(&s, NO_SUCH_PEER).await;
        w.send(&crypto::public_key(&stranger), b"to nobody")
            .await
            .expect("send");
        poll_until("the stranger packet to be counted", || async {
            (metric(&s, NO_SUCH_PEER).await > dropped_before).then_some(())
        })
        .await;
        assert!(metric(&s, NOT_A_NODE).await > refused_before, "{ctx}");

        // Expired: register demands re-auth, the map says so, the relay
        // cuts it off and refuses it again.
        s.ok(&["nodes", "expire", "-i", &expiring_id]).await;
        let r = expiring
            .client
            .register(requests::register_plain(
                expiring.node.public(),
                expiring.hostinfo(),
            ))
            .await
            .expect("register");
        assert!(
            r.node_key_expired && !r.machine_authorized,
            "{ctx}: an expired node must log in again: {r:?}"
        );
        let m = expiring
            .client
            .map_once(expiring.map_request())
            .await
            .expect("map of an expired node");
        let me = m.response.node.expect("self node");
        assert!(me.expired && !me.machine_authorized, "{ctx}: {me:?}");
        assert!(
            e.closed_by_server().await,
            "{ctx}: expired node kept its relay"
        );
        poll_until("the expired node's cut to be counted", || async {
            (metric(&s, REVOKED).await >= 1).then_some(())
        })
        .await;
        let err = DerpClient::connect(s.http, derp_private(&expiring))
            .await
            .err();
        assert!(
            err.is_some_and(|e| e.starts_with("closed")),
            "{ctx}: expired node readmitted"
        );

        // Deleted: the relay cuts it off; others' packets to it go nowhere;
        // register is an interactive login; map is 404.
        let revoked_before = metric(&s, REVOKED).await;
        s.ok(&["nodes", "delete", "-i", &deleted_id, "--force"])
            .await;
        wait_for_delta(&mut watch, "the deleted node removed", |r| {
            !r.peers_removed.is_empty()
        })
        .await;
        assert!(
            d.closed_by_server().await,
            "{ctx}: deleted node kept its relay"
        );
        // The watcher, who heard from it, is told it is gone.
        loop {
            match ServerMessage::parse(&w.frame().await.expect("watcher still connected")) {
                ServerMessage::PeerGone { peer, .. } if peer == d.public => break,
                ServerMessage::KeepAlive | ServerMessage::Ping(_) => continue,
                other => panic!("{ctx}: watcher got {other:?} instead of PeerGone"),
            }
        }
        poll_until("the deleted node's cut to be counted", || async {
            (metric(&s, REVOKED).await > revoked_before).then_some(())
        })
        .await;
        let dropped_before = metric(&s, NO_SUCH_PEER).await;
        w.send(&d.public, b"to the deleted").await.expect("send");
        poll_until("the packet to the deleted node to be counted", || async {
            (metric(&s, NO_SUCH_PEER).await > dropped_before).then_some(())
        })
        .await;
        let err = DerpClient::connect(s.http, derp_private(&deleted))
            .await
            .err();
        assert!(
            err.is_some_and(|e| e.starts_with("closed")),
            "{ctx}: deleted node readmitted"
        );

        let r = deleted
            .client
            .register(requests::register_plain(
                deleted.node.public(),
                deleted.hostinfo(),
            ))
            .await
            .expect("register");
        assert!(
            !authorized(&r) && !r.auth_url.is_empty(),
            "{ctx}: a deleted node must log in again: {r:?}"
        );
        match deleted.client.map_stream(deleted.map_request()).await {
            Err(ClientError::Status { status: 404, .. }) => {}
            Err(other) => panic!("{ctx}: map of a deleted node: {other}"),
            Ok(_) => panic!("{ctx}: a deleted node got a map stream"),
        }
        assert!(
            node_by_key(&s, &deleted.node).await.is_none(),
            "{ctx}: the deleted node came back"
        );

        // The watcher was never disturbed: still on the relay, still mapped.
        let me = w.public;
        w.send(&me, b"self").await.expect("send");
        assert_eq!(
            w.recv_packet().await.expect("own packet back"),
            (w.public, b"self".to_vec()),
            "{ctx}"
        );
        let late = TestNode::join(&s, "late", &key).await;
        wait_for_delta(&mut watch, "a later join", |r| {
            r.peers_changed.iter().any(|p| p.key == late.node.public())
        })
        .await;
    }
}
