//! A small network-namespace lab for this crate's interop test: the real
//! `meshscale serve`, one official `tailscaled` and one tailscale-rs peer,
//! each in its own namespace, plugged into a bridge that lives in a namespace
//! too. Nothing here touches the host namespace's interfaces, routes,
//! sysctls or firewall, and no namespace has a route off the machine (only
//! the connected test subnet exists).
//!
//! Self-contained on purpose: `meshscale-e2e` (the other e2e harness) is
//! being written in parallel and its API may move.

#![allow(dead_code)] // Each helper is used by some scenario, not necessarily all.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Every namespace of this lab starts with this, then `<pid>-`.
pub const PREFIX: &str = "mstsrs-";
/// Default timeout of short commands (`ip`, the admin CLI, `tailscale status`).
pub const SHORT: Duration = Duration::from_secs(20);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 300;
/// How long a process gets between SIGTERM and SIGKILL on teardown.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The external programs the scenario needs.
pub struct Tools {
    pub meshscale: PathBuf,
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
    pub tsrs_peer: PathBuf,
}

impl Tools {
    /// `None` when `MESHSCALE_E2E_SKIP=1`; panics with what is missing
    /// otherwise, so a CI machine without the tools fails loudly instead of
    /// passing an empty test.
    pub fn find() -> Option<Tools> {
        if std::env::var("MESHSCALE_E2E_SKIP").as_deref() == Ok("1") {
            eprintln!("MESHSCALE_E2E_SKIP=1: skipping the tailscale-rs interop scenario");
            return None;
        }
        let mut missing = Vec::new();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            missing.push("root (network namespaces, tailscaled's TUN)".to_string());
        }
        let tsrs_peer = PathBuf::from(env!("CARGO_BIN_EXE_meshscale-tsrs-peer"));
        let meshscale = match std::env::var_os("MESHSCALE_BIN") {
            Some(p) => PathBuf::from(p),
            None => match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) => PathBuf::from(dir).join("debug/meshscale"),
                // Same target directory as this crate's own binary.
                None => tsrs_peer.with_file_name("meshscale"),
            },
        };
        if !meshscale.is_file() {
            missing.push(format!(
                "the meshscale binary at {} (build it with `cargo build --workspace --bins`, or set MESHSCALE_BIN)",
                meshscale.display()
            ));
        }
        let tools_dir = std::env::var_os("MESHSCALE_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/meshscale-tools"));
        let tailscale = tools_dir.join("bin/tailscale");
        let tailscaled = tools_dir.join("bin/tailscaled");
        for p in [&tailscale, &tailscaled] {
            if !p.is_file() {
                missing.push(format!("{} (run e2e/setup.sh)", p.display()));
            }
        }
        for tool in ["ip", "curl", "nft"] {
            if which(tool).is_none() {
                missing.push(format!("`{tool}` on PATH"));
            }
        }
        assert!(
            missing.is_empty(),
            "the tailscale-rs interop test cannot run; missing: {}. Set MESHSCALE_E2E_SKIP=1 to skip it.",
            missing.join("; ")
        );
        Some(Tools {
            meshscale,
            tailscale,
            tailscaled,
            tsrs_peer,
        })
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// The output of a finished command.
pub struct Output {
    pub ok: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion (killed after `timeout`), capturing its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    // Drain both pipes in threads so a chatty command cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        ok: status.success(),
        status: status.to_string(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `run` that fails on a non-zero exit; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(cmd);
    let out = run(cmd, timeout)?;
    if !out.ok {
        bail!(
            "`{line}` failed ({}):\n{}",
            out.status,
            out.combined().trim_end()
        );
    }
    Ok(out.stdout)
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Retries `f` until it succeeds or `timeout` passes; the error names `what`
/// and carries the last failure.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("gave up after {timeout:?} waiting for {what}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// A handle on one of the lab's namespaces.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// `ip -n <ns> <args>`: configuration scoped to this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(
            Command::new("ip").args(["-n", &self.name]).args(args),
            SHORT,
        )
    }

    /// `ip netns exec <ns> <program>`, for the caller to add arguments to.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Loads an nftables ruleset into this namespace's own netfilter.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset).with_context(|| format!("write {}", path.display()))?;
        let result = run_ok(self.command("nft").arg("-f").arg(&path), SHORT);
        let _ = std::fs::remove_file(&path);
        result.map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace (a network
    /// namespace switch applies to the calling thread only, so the test's
    /// other threads stay in the host namespace). Sockets made there belong
    /// to this namespace for their whole life.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; it only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            Ok(f())
        }))
    }
}

/// A process started by the lab; its output is appended to a log file.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log` (stdin closed).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let line = describe(&cmd);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        writeln!(file, "===== starting {name}: {line}")?;
        let err = file.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{line}`"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// If the test process dies (a CI timeout's SIGKILL), its children get
/// SIGKILL too instead of living on in their namespaces.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A process driven through stdin/stdout lines (the tailscale-rs peer): each
/// stdout line is logged and queued for [`LineProc::expect`].
pub struct LineProc {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl LineProc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<LineProc> {
        let line = describe(&cmd);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        writeln!(file, "===== starting {name}: {line}")?;
        let err = file.try_clone()?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{line}`"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(file));
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "[stdout] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LineProc {
            proc: Proc {
                name: name.to_string(),
                child,
            },
            stdin,
            lines: rx,
            reader: Some(reader),
        })
    }

    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        let written = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        if let Err(e) = written {
            let exited = self.proc.exited();
            bail!(
                "cannot write to {} (exited: {exited:?}): {e}",
                self.proc.name
            );
        }
        Ok(())
    }

    /// The next stdout line starting with one of `prefixes` (other lines are
    /// skipped); fails on timeout or when the process is gone.
    pub fn expect(&mut self, prefixes: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if prefixes.iter().any(|p| line.starts_with(p)) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} printed no line starting with {prefixes:?} within {timeout:?}",
                    self.proc.name
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let exited = self.proc.exited().unwrap_or_else(|| "still running".into());
                    bail!(
                        "{} closed its stdout ({exited}) before printing a line starting with {prefixes:?}",
                        self.proc.name
                    )
                }
            }
        }
    }

    /// Closes stdin (the peer's signal to shut down) and waits for it.
    pub fn finish(&mut self) {
        self.stdin.take();
        self.proc.stop();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A TCP echo server on a thread inside a namespace; stopped on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    /// Outer result: entering the namespace; inner: the accept loop.
    thread: Option<JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl EchoServer {
    pub fn start(ns: &Ns, addr: SocketAddr) -> anyhow::Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = ns.spawn_in(move || -> anyhow::Result<()> {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                    bail!("bind {addr}: {e}");
                }
            };
            // Polled, so that drop can stop it.
            listener.set_nonblocking(true)?;
            let _ = ready_tx.send(Ok(()));
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || echo_conn(conn));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => bail!("accept: {e}"),
                }
            }
            Ok(())
        })?;
        let ready = ready_rx
            .recv_timeout(SHORT)
            .context("the echo server thread did not start")?;
        ready.map_err(|e| anyhow::anyhow!(e))?;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

fn echo_conn(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From inside `ns`: connect to `addr`, send `n` patterned bytes and check
/// they come back. The peer may never half-close, so this reads exactly `n`.
pub fn tcp_echo_check(ns: &Ns, addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let handle = ns.spawn_in(move || -> anyhow::Result<()> {
        let timeout = Duration::from_secs(10);
        let mut conn = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut writer = conn.try_clone()?;
        let sent = payload.clone();
        let w = std::thread::spawn(move || writer.write_all(&sent));
        let mut back = vec![0u8; n];
        conn.read_exact(&mut back)
            .with_context(|| format!("read the echo from {addr}"))?;
        w.join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .with_context(|| format!("send to {addr}"))?;
        anyhow::ensure!(
            back == payload,
            "the echo from {addr} differs from what was sent"
        );
        Ok(())
    })?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("echo check thread panicked"))??
}

/// A test's world: a temp directory (configs, state, logs) and namespaces.
/// Dropping it stops what runs in its namespaces, deletes them and the
/// directory, and prints every registered log first if the test is failing.
pub struct Lab {
    id: String,
    dir: Option<tempfile::TempDir>,
    namespaces: Vec<Ns>,
    logs: Vec<PathBuf>,
}

impl Lab {
    pub fn new(test: &str) -> anyhow::Result<Lab> {
        cleanup_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{test}-"))
            .tempdir()
            .context("cannot create the test's temp dir")?;
        // `<pid>-<n>`: the pid keeps concurrent runs apart (and lets a later
        // run spot leftovers), the counter this run's parallel tests.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(Lab {
            id: format!("{}-{n}", std::process::id()),
            dir: Some(dir),
            namespaces: Vec::new(),
            logs: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }

    pub fn register_log(&mut self, path: &Path) {
        self.logs.push(path.to_path_buf());
    }

    /// `mstsrs-<pid>-<n>-<role>` with loopback up.
    pub fn namespace(&mut self, role: &str) -> anyhow::Result<Ns> {
        let name = format!("{PREFIX}{}-{role}", self.id);
        run_ok(Command::new("ip").args(["netns", "add", &name]), SHORT)
            .with_context(|| format!("cannot create network namespace {name}"))?;
        let ns = Ns { name };
        // Registered before anything else can fail, so drop deletes it.
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace holding a bridge `br0`, so no bridge or veth end is ever
    /// in the host namespace.
    pub fn switch(&mut self, role: &str) -> anyhow::Result<Ns> {
        let ns = self.namespace(role)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(ns)
    }

    /// A host namespace plugged into `switch` as `eth0` with `cidr`; its only
    /// route is that subnet's.
    pub fn host(&mut self, role: &str, switch: &Ns, cidr: &str) -> anyhow::Result<Ns> {
        let ns = self.namespace(role)?;
        let port = format!("p-{role}");
        switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        switch.ip(&["link", "set", &port, "master", "br0"])?;
        switch.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    fn dump_logs(&self) {
        eprintln!(
            "\n===== test failed; lab directory {}",
            self.dir().display()
        );
        for path in &self.logs {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read: {e})"));
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "\n===== {} ({} lines, showing the last {})",
                path.display(),
                lines.len(),
                lines.len() - skip
            );
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
        eprintln!("===== end of logs\n");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            self.dump_logs();
        }
        for ns in self.namespaces.iter().rev() {
            delete_namespace(&ns.name);
        }
        if failing
            && std::env::var("MESHSCALE_E2E_KEEP").as_deref() == Ok("1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("MESHSCALE_E2E_KEEP=1: keeping {}", dir.keep().display());
        }
    }
}

/// Kills what still runs in namespace `name` (only ever one of ours), then
/// deletes it.
fn delete_namespace(name: &str) {
    if let Ok(pids) = run_ok(
        Command::new("ip").args(["netns", "pids", name]),
        Duration::from_secs(5),
    ) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run(
        Command::new("ip").args(["netns", "del", name]),
        Duration::from_secs(5),
    );
}

/// Deletes namespaces of ours left by a run that died before its drop ran
/// (their pid is gone).
fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing stale namespace {name} (its run, pid {pid}, is gone)");
        delete_namespace(&name);
    }
}

/// A throwaway CA and a server certificate whose only SAN is `ip`; returns
/// (ca.pem, server.pem, server.key).
pub fn write_certs(dir: &Path, ip: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().context("CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshscale tsrs-peer test CA");
    let ca = ca_params.self_signed(&ca_key).context("CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().context("server key")?;
    let cert = CertificateParams::new(vec![ip.to_string()])
        .context("server certificate params")?
        .signed_by(&key, &issuer)
        .context("server certificate")?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    for (path, pem) in [
        (&paths.0, ca.pem()),
        (&paths.1, cert.pem()),
        (&paths.2, key.serialize_pem()),
    ] {
        std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(paths)
}
