//! A test's world: a temp directory for configs, state and logs, and the
//! namespaces of its hosts, switches and routers. Dropping the lab (last, as
//! the first local of a test) prints every log if the test is failing, then
//! deletes the namespaces and the directory.
//!
//! Topology pieces:
//! - a *host* is a namespace with one or more veth interfaces;
//! - a *switch* is a namespace holding a bridge `br0` that hosts plug into,
//!   so that no bridge or veth end ever lives in the host namespace;
//! - a *NAT router* is a namespace forwarding between its `wan0` (plugged
//!   into a switch) and LAN links, masquerading out of `wan0`. IPv4
//!   forwarding is switched on inside that namespace only, and it has no
//!   default route: it reaches our test subnets and nothing else.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::netns::{self, Ns, NsGuard};

/// Lines of each log printed when a test fails (the files keep everything).
const LOG_TAIL_LINES: usize = 400;

/// Debug lines of the server's libraries (HTTP/2 frames, SQL statements):
/// kept in the files, left out of the failure output so the server's own
/// lines fit in it.
const NOISE: &[&str] = &[
    " h2::",
    " sqlx::query:",
    " hyper::",
    " hyper_util::",
    " rustls::",
];

fn is_noise(line: &str) -> bool {
    line.contains(" DEBUG ") && NOISE.iter().any(|n| line.contains(n))
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

pub struct Lab {
    /// `<pid>-<n>`: unique among live labs on this machine.
    id: String,
    dir: Option<tempfile::TempDir>,
    namespaces: RefCell<Vec<NsGuard>>,
    logs: RefCell<Vec<PathBuf>>,
    next_port: Cell<u32>,
}

/// A namespace holding a bridge; hosts [`Lab::plug`] into it.
#[derive(Debug, Clone)]
pub struct Switch {
    pub ns: Ns,
}

impl Lab {
    /// `test` names the temp directory, to find it in a post-mortem.
    pub fn new(test: &str) -> anyhow::Result<Lab> {
        STALE_CLEANUP.call_once(netns::cleanup_stale);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            // The pid lets a later run remove what a killed run left behind.
            .prefix(&format!("{}{}-{test}-", netns::PREFIX, std::process::id()))
            .tempdir()
            .context("cannot create the test's temp dir")?;
        Ok(Lab {
            id,
            dir: Some(dir),
            namespaces: RefCell::new(Vec::new()),
            logs: RefCell::new(Vec::new()),
            next_port: Cell::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        // Only `drop` takes the directory out.
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// A fresh subdirectory of the test's directory.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }

    /// Logs to print if the test fails.
    pub fn register_log(&self, path: &Path) {
        let mut logs = self.logs.borrow_mut();
        if !logs.iter().any(|l| l == path) {
            logs.push(path.to_path_buf());
        }
    }

    /// A new namespace `mse2e-<pid>-<n>-<role>`, with only loopback.
    pub fn namespace(&self, role: &str) -> anyhow::Result<Ns> {
        let guard = NsGuard::create(&format!("{}{}-{role}", netns::PREFIX, self.id))?;
        let ns = guard.ns().clone();
        self.namespaces.borrow_mut().push(guard);
        Ok(ns)
    }

    /// A switch: a namespace with a bridge `br0`.
    pub fn switch(&self, role: &str) -> anyhow::Result<Switch> {
        let ns = self.namespace(role)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Switch { ns })
    }

    /// A host namespace plugged into `switch` as `eth0` with address `cidr`.
    pub fn host(&self, role: &str, switch: &Switch, cidr: &str) -> anyhow::Result<Ns> {
        let ns = self.namespace(role)?;
        self.plug(&ns, "eth0", switch, cidr)?;
        Ok(ns)
    }

    /// Connects `ns` to `switch`: a veth pair created inside the switch's
    /// namespace, one end enslaved to `br0`, the other moved into `ns` as
    /// `ifname` with address `cidr`.
    pub fn plug(&self, ns: &Ns, ifname: &str, switch: &Switch, cidr: &str) -> anyhow::Result<()> {
        let n = self.next_port.get();
        self.next_port.set(n + 1);
        let port = format!("port{n}");
        let sw = &switch.ns;
        sw.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        sw.ip(&["link", "set", &port, "master", "br0"])?;
        sw.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", cidr, "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A point-to-point link: a veth pair created in `a`, its peer moved to `b`.
    pub fn link(
        &self,
        (a, a_if, a_cidr): (&Ns, &str, &str),
        (b, b_if, b_cidr): (&Ns, &str, &str),
    ) -> anyhow::Result<()> {
        a.ip(&[
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ])?;
        a.ip(&["addr", "add", a_cidr, "dev", a_if])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["addr", "add", b_cidr, "dev", b_if])?;
        b.ip(&["link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A NAT router like a home router: `wan0` on `wan` with address
    /// `wan_cidr`, IPv4 forwarding on (in its own namespace), masquerade out
    /// of `wan0`, and unsolicited packets from the WAN to the router itself
    /// dropped.
    ///
    /// That last rule matters for hole punching: without it, a peer's early
    /// probe to our public `ip:port` is accepted as a new local flow, its
    /// conntrack entry then clashes with our own later outbound mapping,
    /// and masquerade picks another source port for it — a port per
    /// destination (symmetric NAT), which no direct path survives. Dropped
    /// before confirmation, the probe leaves no conntrack entry behind.
    ///
    /// Link LAN hosts to it with [`Lab::link`]; add filter rules with
    /// [`Ns::nft`].
    pub fn nat_router(&self, role: &str, wan: &Switch, wan_cidr: &str) -> anyhow::Result<Ns> {
        let ns = self.namespace(role)?;
        self.plug(&ns, "wan0", wan, wan_cidr)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.nft(
            "table ip mse2e_nat {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"wan0\" masquerade\n\
             \t}\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"wan0\" ct state new drop\n\
             \t}\n\
             }\n",
        )?;
        Ok(ns)
    }

    fn dump_logs(&self) {
        eprintln!(
            "\n===== e2e: test failed; lab directory {}",
            self.dir().display()
        );
        for path in self.logs.borrow().iter() {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read: {e})"));
            let lines: Vec<&str> = text.lines().filter(|l| !is_noise(l)).collect();
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "\n===== e2e: {} ({} lines without library debug noise{})",
                path.display(),
                lines.len(),
                if skip > 0 {
                    format!(", last {LOG_TAIL_LINES}")
                } else {
                    String::new()
                }
            );
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
        eprintln!("===== e2e: end of logs\n");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            self.dump_logs();
        }
        // Namespaces first: killing what still runs there releases the files.
        self.namespaces.borrow_mut().clear();
        let keep = std::env::var("MESHSCALE_E2E_KEEP").unwrap_or_default();
        if let Some(dir) = self.dir.take()
            && ((failing && keep == "1") || keep == "always")
        {
            // Renamed without the pid, so no later run takes it for debris.
            let path = dir.keep();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let kept = name
                .as_deref()
                .and_then(|n| n.strip_prefix(&format!("{}{}-", netns::PREFIX, std::process::id())))
                .map(|rest| path.with_file_name(format!("{}kept-{rest}", netns::PREFIX)));
            let shown = match kept {
                Some(k) if std::fs::rename(&path, &k).is_ok() => k,
                _ => path,
            };
            eprintln!("e2e: MESHSCALE_E2E_KEEP={keep}: kept {}", shown.display());
        }
    }
}
