//! Floods from loopback against a real `meshscale serve`: 10,000 stalled
//! TCP connections, slowloris headers, stalled `/derp` and `/ts2021`
//! upgrades, oversized heads and bodies, a Noise handshake flood, and
//! stalled TLS handshakes. Each asserts that the server's memory stays
//! within a stated bound, that an existing map session keeps receiving
//! deltas and a new node can register and get its map during the flood,
//! and that stalled connections are closed by the server after the
//! configured timeout (`timeouts.*`, short here so the tests are quick).
//!
//! SQLite only: nothing here reaches the store beyond the honest clients,
//! and `hostile.rs`/`protocol.rs` cover both backends for those paths.

#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use mesh::{
    DEADLINE, TestNode, TlsServer, preauth_key, rss_kib, server_pid, start_mesh, wait_for_delta,
    write_test_certs,
};
use meshscale_controlclient::dial::Dialer;
use meshscale_controlclient::noise::handshake::Initiator;
use meshscale_controlclient::{MachineKey, ServerUrl};
use meshscale_wire::MachinePublic;
use support::Db;
use support::server::{Server, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// `timeouts.http_header_read` for these tests: long enough that 10,000
/// connections are all open before the first is due, short enough to wait
/// out.
const HEADER_READ: Duration = Duration::from_secs(15);
/// `timeouts.noise_handshake`, `timeouts.derp_handshake`, `timeouts.tls_handshake`.
const HANDSHAKE: Duration = Duration::from_secs(6);
/// Closing happens on the server's timer; allow this much scheduling
/// delay on a loaded 2-core machine before calling a connection leaked.
const CLOSE_SLACK: Duration = Duration::from_secs(20);
/// Connections opened at once while building a flood (the listen backlog is 1024).
const CONNECT_CONCURRENCY: usize = 256;

const STALLED: usize = 10_000;
const SLOWLORIS: usize = 200;
const STALLED_UPGRADES: usize = 200;

/// What one stalled connection may cost the server while it is open: its
/// task, socket registration and allocator overhead. Measured ≈ 11.5 KiB
/// (debug and release builds, docs/reliability.md); twice that is the bound.
const RSS_PER_STALLED_CONN_KIB: u64 = 24;
/// Growth allowed for everything else during a flood test (honest
/// clients, runtime and allocator arenas).
const RSS_BASE_SLACK_KIB: u64 = 32 * 1024;

fn config() -> String {
    let secs = |d: Duration| format!("{}s", d.as_secs());
    format!(
        "timeouts:\n  http_header_read: {}\n  noise_handshake: {}\n  derp_handshake: {}\n  tls_handshake: {}\n",
        secs(HEADER_READ),
        secs(HANDSHAKE),
        secs(HANDSHAKE),
        secs(HANDSHAKE)
    )
}

/// The floods share one machine's sockets and CPU, and one test changes
/// the process-wide open-file limit: they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sets this process's soft open-file limit (`None`: to the hard limit);
/// returns the limit now in force.
fn set_nofile_limit(soft: Option<u64>) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.unwrap_or(lim.rlim_max).min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// Raises this process's soft open-file limit to the hard one: the test
/// holds one socket per flooding connection.
fn raise_nofile_limit() -> u64 {
    set_nofile_limit(None)
}

/// (soft, hard) `Max open files` of a process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/<pid>/limits");
    let mut fields = line.split_whitespace().skip(3).map(|v| v.parse().ok());
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(soft), Some(hard)) => (soft, hard),
        _ => panic!("unexpected limits line {line:?}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What a flooding connection does after connecting.
#[derive(Clone)]
enum Behaviour {
    /// Sends `prefix`, then nothing.
    Stall { prefix: Vec<u8> },
    /// Sends `prefix`, then one byte of `drip` every `every`, forever.
    Dribble {
        prefix: Vec<u8>,
        drip: Vec<u8>,
        every: Duration,
    },
}

/// How a flooding connection ended, from the client's side.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// The server closed it this long after it was opened.
    Closed(Duration),
    /// Still open when the test gave up.
    Open,
    /// Reset by the kernel before the timeout, with no server socket
    /// behind it: the listen queue overflowed and a SYN cookie completed
    /// the handshake on our side only. The server held nothing for it.
    NeverAccepted,
    /// Could not connect.
    Refused,
}

/// Opens one connection (from `source` when given), behaves, and waits for
/// the server to close it, until `give_up`.
async fn flood_conn(
    addr: SocketAddr,
    source: Option<IpAddr>,
    behaviour: Behaviour,
    connect_gate: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    timeout: Duration,
) -> Fate {
    let permit = connect_gate.acquire_owned().await.expect("gate");
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    // Taken before connecting: the server's clock starts at its accept,
    // which is never earlier than this.
    let opened = Instant::now();
    let Ok(Ok(mut tcp)) = tokio::time::timeout(DEADLINE, socket.connect(addr)).await else {
        return Fate::Refused;
    };
    let give_up = tokio::time::Instant::now() + timeout + CLOSE_SLACK;
    drop(permit);
    connected.fetch_add(1, Ordering::Relaxed);
    let ended = |e: Option<std::io::Error>| {
        closed.fetch_add(1, Ordering::Relaxed);
        let after = opened.elapsed();
        let reset = e.is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        if reset && after < timeout {
            Fate::NeverAccepted
        } else {
            Fate::Closed(after)
        }
    };
    let (prefix, drip) = match &behaviour {
        Behaviour::Stall { prefix } => (prefix.clone(), None),
        Behaviour::Dribble {
            prefix,
            drip,
            every,
        } => (prefix.clone(), Some((drip.clone(), *every))),
    };
    if !prefix.is_empty()
        && let Err(e) = tcp.write_all(&prefix).await
    {
        return ended(Some(e));
    }
    let mut buf = vec![0u8; 4096];
    let mut tick = drip
        .as_ref()
        .map(|(_, every)| tokio::time::interval(*every));
    let mut dripped = 0usize;
    loop {
        let next_tick = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(give_up) => {
                // A byte to a socket the server never accepted draws a reset.
                let probe = tcp.write_all(b"\r\n\r\n").await;
                let mut one = [0u8; 1];
                let answer = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut one)).await;
                return match (probe, answer) {
                    (Err(_), _) | (_, Ok(Err(_))) => Fate::NeverAccepted,
                    _ => Fate::Open,
                };
            }
            r = tcp.read(&mut buf) => match r {
                Ok(0) => return ended(None),
                Err(e) => return ended(Some(e)),
                // A 101 and the server's first frames: not a close.
                Ok(_) => {}
            },
            _ = next_tick => {
                if let Some((drip, _)) = &drip {
                    let byte = drip[dripped % drip.len()];
                    dripped += 1;
                    if let Err(e) = tcp.write_all(&[byte]).await {
                        return ended(Some(e));
                    }
                }
            }
        }
    }
}

/// A group of flooding connections running in the background.
struct Flood {
    name: &'static str,
    timeout: Duration,
    tasks: JoinSet<Fate>,
    total: usize,
    connected: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Flood {
    fn start(
        name: &'static str,
        addr: SocketAddr,
        source: Option<IpAddr>,
        count: usize,
        behaviour: Behaviour,
        timeout: Duration,
    ) -> Flood {
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let connected = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            tasks.spawn(flood_conn(
                addr,
                source,
                behaviour.clone(),
                gate.clone(),
                connected.clone(),
                closed.clone(),
                timeout,
            ));
        }
        Flood {
            name,
            timeout,
            tasks,
            total: count,
            connected,
            closed,
        }
    }

    async fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.connected.load(Ordering::Relaxed) < self.total {
            assert!(
                Instant::now() < deadline,
                "{}: only {} of {} connected",
                self.name,
                self.connected.load(Ordering::Relaxed),
                self.total
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn open_now(&self) -> usize {
        self.connected.load(Ordering::Relaxed) - self.closed.load(Ordering::Relaxed)
    }

    /// Waits for every connection to end and checks that the server closed
    /// each no earlier than its timeout (minus a little timer rounding) and
    /// no later than the timeout + [`CLOSE_SLACK`] after it was opened.
    /// Returns how many the kernel never handed to the server.
    async fn assert_closed_on_time(mut self) -> usize {
        let timeout = self.timeout;
        let mut earliest = Duration::MAX;
        let mut latest = Duration::ZERO;
        let mut open = 0;
        let mut refused = 0;
        let mut never_accepted = 0;
        while let Some(fate) = self.tasks.join_next().await {
            match fate.expect("flood task") {
                Fate::Closed(after) => {
                    earliest = earliest.min(after);
                    latest = latest.max(after);
                }
                Fate::Open => open += 1,
                Fate::Refused => refused += 1,
                Fate::NeverAccepted => never_accepted += 1,
            }
        }
        let name = self.name;
        assert_eq!(refused, 0, "{name}: connections refused");
        assert_eq!(
            open, 0,
            "{name}: {open} connections never closed by the server"
        );
        assert!(
            earliest + Duration::from_millis(200) >= timeout,
            "{name}: closed after {earliest:?}, before the {timeout:?} timeout"
        );
        assert!(
            latest <= timeout + CLOSE_SLACK,
            "{name}: closed only after {latest:?} (timeout {timeout:?})"
        );
        eprintln!(
            "{name}: {} closed by the server after {earliest:?}..{latest:?}; {never_accepted} \
             never accepted (listen queue overflow)",
            self.total - never_accepted
        );
        assert!(
            never_accepted * 10 < self.total,
            "{name}: {never_accepted} of {} never reached the server",
            self.total
        );
        never_accepted
    }
}

async fn assert_healthy(s: &Server) {
    let (status, body) = http_get(s.http, "/health").await.expect("/health answers");
    assert_eq!((status, body.trim()), (200, r#"{"status":"pass"}"#));
}

/// A new node registers and gets its map, and `watcher`'s existing session
/// receives the join as a delta.
async fn assert_sessions_served(
    s: &Server,
    key: &str,
    watcher: &mut meshscale_controlclient::MapStream,
    name: &str,
) -> TestNode {
    let n = TestNode::join(s, name, key).await;
    let (_stream, first) = n.stream().await;
    assert!(first.node.expect("self node").machine_authorized, "{name}");
    wait_for_delta(watcher, &format!("{name} joining"), |r| {
        r.peers_changed.iter().any(|p| p.key == n.node.public())
    })
    .await;
    n
}

/// One raw request; the status code of the answer, or 0 if the
/// connection closed without one.
async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before all of it is written.
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Declares a 1 GiB body and streams up to `send` bytes of it; returns the
/// status the server answered with and how much it let us send.
async fn oversized_body(addr: SocketAddr, path: &str, send: usize) -> (u16, usize) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1u64 << 30
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut out)).await;
        out
    });
    let chunk = vec![b'{'; 64 << 10];
    let mut sent = 0;
    while sent < send {
        match tokio::time::timeout(DEADLINE, wr.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    drop(wr);
    let out = reader.await.expect("reader");
    let status = String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_slowloris_and_oversized_connections() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The server inherits a low soft limit, as from a default shell, and
    // must raise it itself.
    const INHERITED_SOFT: u64 = 1024;
    set_nofile_limit(Some(INHERITED_SOFT));
    let s = start_mesh(&Db::Sqlite, &config()).await;
    let nofile = raise_nofile_limit();
    assert!(
        nofile as usize > STALLED + 1000,
        "RLIMIT_NOFILE hard limit {nofile} is too low for {STALLED} connections"
    );
    let pid = server_pid(&s);
    let (server_nofile, server_hard) = nofile_of(pid);
    assert!(
        server_nofile == server_hard && server_nofile > INHERITED_SOFT,
        "the server should have raised its soft RLIMIT_NOFILE to the hard limit {server_hard} \
         (it is {server_nofile})"
    );
    s.ok(&["users", "create", "vpn1"]).await;
    let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
    let watcher = TestNode::join(&s, "watcher", &key).await;
    let (mut watch, _) = watcher.stream().await;
    let rss_before = rss_kib(pid);

    // The floods, all at once.
    let stalled = Flood::start(
        "stalled TCP",
        s.http,
        None,
        STALLED,
        Behaviour::Stall { prefix: vec![] },
        HEADER_READ,
    );
    let slowloris = Flood::start(
        "slowloris",
        s.http,
        None,
        SLOWLORIS,
        Behaviour::Dribble {
            prefix: b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec(),
            drip: b"X-Slow: yyyyyyyyyyyyyyyyyyyy\r\n".to_vec(),
            every: Duration::from_millis(300),
        },
        HEADER_READ,
    );
    let derp_upgrade =
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";
    let stalled_derp = Flood::start(
        "stalled /derp upgrades",
        s.http,
        None,
        STALLED_UPGRADES,
        Behaviour::Stall {
            prefix: derp_upgrade.to_vec(),
        },
        HANDSHAKE,
    );
    stalled.wait_connected().await;
    slowloris.wait_connected().await;
    stalled_derp.wait_connected().await;

    // During: all of it held open, the server still serves.
    let open = stalled.open_now();
    assert_eq!(open, STALLED, "stalled connections closed early");
    assert_healthy(&s).await;
    assert_sessions_served(&s, &key, &mut watch, "during-flood").await;
    let rss_during = rss_kib(pid);
    let open_during = stalled.open_now() + slowloris.open_now() + stalled_derp.open_now();

    // Oversized requests while the flood is on.
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    assert_eq!(
        status_of(s.http, big_header.as_bytes()).await,
        431,
        "100 KiB header"
    );
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(s.http, many.as_bytes()).await, 431, "150 headers");
    let rss_before_bodies = rss_kib(pid);
    for path in ["/health", "/ts2021", "/register/abc"] {
        let (status, sent) = oversized_body(s.http, path, 64 << 20).await;
        assert!(
            (400..500).contains(&status),
            "{path} with a 1 GiB body: HTTP {status}"
        );
        eprintln!("{path}: 1 GiB body declared, HTTP {status} after {sent} bytes were let in");
    }
    let rss_after_bodies = rss_kib(pid);
    assert!(
        rss_after_bodies.saturating_sub(rss_before_bodies) < 16 * 1024,
        "oversized bodies were buffered: RSS {rss_before_bodies} -> {rss_after_bodies} KiB"
    );

    // Every stalled connection is closed by the server on its timer.
    stalled.assert_closed_on_time().await;
    slowloris.assert_closed_on_time().await;
    stalled_derp.assert_closed_on_time().await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "server RSS: {rss_before} KiB before, {rss_during} KiB with {open_during} flooding \
         connections open, {rss_after} KiB after they were closed; RLIMIT_NOFILE soft {server_nofile}"
    );
    let bound = rss_before + RSS_BASE_SLACK_KIB + RSS_PER_STALLED_CONN_KIB * open_during as u64;
    assert!(
        rss_during <= bound,
        "RSS {rss_during} KiB during the flood exceeds {bound} KiB"
    );
    assert!(
        rss_after <= rss_during + 8 * 1024,
        "RSS kept growing after the flood: {rss_during} -> {rss_after} KiB"
    );

    // After: the server is healthy, sessions still flow.
    assert_healthy(&s).await;
    assert_sessions_served(&s, &key, &mut watch, "after-flood").await;
}

/// One valid initiation, built once: the server does the full handshake
/// for every copy, so a flood of it costs the server what real clients
/// would.
fn valid_initiation(server: &MachinePublic) -> String {
    let machine = MachineKey::generate().expect("machine key");
    b64(Initiator::new(&machine, server, 133)
        .expect("initiation")
        .initiation())
}

fn upgrade_request(init: &str) -> Vec<u8> {
    format!(
        "POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\n\
         Connection: upgrade\r\nX-Tailscale-Handshake: {init}\r\n\r\n"
    )
    .into_bytes()
}

/// The status line of the answer to `request` sent from `source`, keeping
/// the connection open afterwards (the caller decides when to drop it).
async fn upgrade_from(
    addr: SocketAddr,
    source: IpAddr,
    request: Vec<u8>,
) -> Option<(u16, TcpStream)> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let mut tcp = tokio::time::timeout(DEADLINE, socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    tcp.write_all(&request).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((status, tcp))
}

/// Pending Noise connections allowed per source address; mirrors
/// `control::noise::admission::MAX_PENDING_HANDSHAKES_PER_IP`.
const PER_IP: usize = meshscale_control::noise::admission::MAX_PENDING_HANDSHAKES_PER_IP;
const HANDSHAKE_FLOOD: usize = 1000;
const INVALID_FLOOD: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_handshake_flood() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile_limit();
    let s = start_mesh(&Db::Sqlite, &config()).await;
    let pid = server_pid(&s);
    s.ok(&["users", "create", "vpn1"]).await;
    let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
    let watcher = TestNode::join(&s, "watcher", &key).await;
    let (mut watch, _) = watcher.stream().await;
    let url: ServerUrl = format!("http://{}", s.http).parse().expect("url");
    let server = Dialer::new(url, None, DEADLINE)
        .expect("dialer")
        .fetch_server_key(133)
        .await
        .expect("/key");
    let valid = valid_initiation(&server);
    let rss_before = rss_kib(pid);

    // Invalid initiations from 127.0.0.3, many at once: each is answered
    // and closed.
    let attacker_b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let invalid = {
        let mut bad = base64::engine::general_purpose::STANDARD
            .decode(&valid)
            .expect("b64");
        bad[40] ^= 0xff; // tampered: does not decrypt
        b64(&bad)
    };
    let invalid_flood = Flood::start(
        "invalid initiations",
        s.http,
        Some(attacker_b),
        INVALID_FLOOD,
        Behaviour::Stall {
            prefix: upgrade_request(&invalid),
        },
        Duration::ZERO,
    );

    // Valid handshakes from 127.0.0.2 that never start HTTP/2: the first
    // PER_IP get their 101 and are held pending; the rest get 503.
    let attacker_a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut held = Vec::new();
    let mut refused = 0;
    let mut set = JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for _ in 0..HANDSHAKE_FLOOD {
        let (gate, req) = (gate.clone(), upgrade_request(&valid));
        let addr = s.http;
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            upgrade_from(addr, attacker_a, req).await
        });
    }
    while let Some(r) = set.join_next().await {
        match r.expect("task") {
            Some((101, tcp)) => held.push(tcp),
            Some((503, _)) => refused += 1,
            other => panic!(
                "valid initiation: unexpected answer {:?}",
                other.map(|o| o.0)
            ),
        }
    }
    eprintln!(
        "{HANDSHAKE_FLOOD} valid stalled handshakes from one address: {} held, {refused} refused \
         with 503",
        held.len()
    );
    assert!(
        held.len() <= PER_IP,
        "{} pending handshakes admitted from one address (limit {PER_IP})",
        held.len()
    );
    assert!(held.len() >= PER_IP / 2, "only {} admitted", held.len());
    assert_eq!(held.len() + refused, HANDSHAKE_FLOOD);
    let counted = {
        let (status, text) = http_get(s.metrics, "/metrics").await.expect("/metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"meshscale_noise_upgrades_refused_total{reason="pending_per_address"}"#,
                )
            })
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    assert!(
        counted >= refused,
        "{refused} refused, {counted} counted in meshscale_noise_upgrades_refused_total"
    );

    // During: honest clients from 127.0.0.1 are not affected.
    invalid_flood.wait_connected().await;
    assert_healthy(&s).await;
    assert_sessions_served(&s, &key, &mut watch, "during-handshake-flood").await;
    let rss_during = rss_kib(pid);

    // The held ones are closed after timeouts.noise_handshake; the slots
    // free up and the same address is admitted again.
    let opened = Instant::now();
    let mut set = JoinSet::new();
    for mut tcp in held.drain(..) {
        set.spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(HANDSHAKE + CLOSE_SLACK, tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue, // handshake response, early payload
                    Err(_) => return false,
                }
            }
        });
    }
    let mut closed = 0;
    while let Some(r) = set.join_next().await {
        assert!(
            r.expect("task"),
            "a stalled noise connection was not closed"
        );
        closed += 1;
    }
    let waited = opened.elapsed();
    eprintln!("{closed} stalled noise connections closed by the server within {waited:?}");
    invalid_flood.assert_closed_on_time().await;
    match upgrade_from(s.http, attacker_a, upgrade_request(&valid)).await {
        Some((101, _)) => {}
        other => panic!("after the flood: {:?}", other.map(|o| o.0)),
    }
    let rss_after = rss_kib(pid);
    eprintln!(
        "server RSS: {rss_before} KiB before, {rss_during} KiB during the handshake flood, \
         {rss_after} KiB after"
    );
    let bound = rss_before
        + RSS_BASE_SLACK_KIB
        + RSS_PER_STALLED_CONN_KIB * 4 * (PER_IP + INVALID_FLOOD) as u64;
    assert!(
        rss_during <= bound,
        "RSS {rss_during} KiB during the handshake flood exceeds {bound} KiB"
    );
    assert_healthy(&s).await;
    assert_sessions_served(&s, &key, &mut watch, "after-handshake-flood").await;
}

const TLS_STALLED: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile_limit();
    // Without the DERP relay: its STUN port would be taken twice.
    let mut s = support::server::start(&Db::Sqlite, &config()).await;
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key_path) = write_test_certs(certs.path());
    let ca_pem = std::fs::read(&ca).expect("ca");
    let tls = TlsServer::start(&mut s, &cert, &key_path, &ca_pem).await;
    s.ok(&["users", "create", "vpn1"]).await;
    let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
    let opts = || meshscale_controlclient::ConnectOptions {
        extra_ca_pem: Some(ca_pem.clone()),
        ..Default::default()
    };

    // Nothing at all, and half a ClientHello.
    let silent = Flood::start(
        "silent TLS",
        s.http,
        None,
        TLS_STALLED,
        Behaviour::Stall { prefix: vec![] },
        HANDSHAKE,
    );
    let partial = Flood::start(
        "partial ClientHello",
        s.http,
        None,
        TLS_STALLED,
        Behaviour::Stall {
            prefix: vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
        },
        HANDSHAKE,
    );
    silent.wait_connected().await;
    partial.wait_connected().await;

    // An honest TLS client registers and maps meanwhile.
    let machine = MachineKey::generate().expect("machine key");
    let client = meshscale_controlclient::ControlClient::connect(&tls.url, &machine, opts())
        .await
        .expect("TLS connect during the flood");
    let node = meshscale_controlclient::NodeKey::generate().expect("node key");
    let r = client
        .register(meshscale_controlclient::requests::register_with_auth_key(
            node.public(),
            &key,
            meshscale_controlclient::requests::hostinfo("tls-honest"),
        ))
        .await
        .expect("register");
    assert!(mesh::authorized(&r), "{r:?}");

    silent.assert_closed_on_time().await;
    partial.assert_closed_on_time().await;
}
