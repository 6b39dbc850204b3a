//! One named network namespace (`ip netns add`), deleted on drop after every
//! process still inside it is killed. Names are `mse2e-<pid>-<n>-<role>`: the
//! pid and a per-process counter keep parallel tests and concurrent runs
//! apart, and the pid lets a later run recognise namespaces left behind by a
//! run that died ([`cleanup_stale`]).

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::cmd::{SHORT, in_ns, run, run_ok, run_with_input};

/// Every namespace this harness creates starts with this.
pub const PREFIX: &str = "mse2e-";

/// A handle on a namespace: cheap to clone, owns nothing. The [`NsGuard`]
/// made with it (held by the [`crate::Lab`]) deletes the namespace.
#[derive(Debug, Clone)]
pub struct Ns {
    name: String,
}

impl Ns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`: configuration scoped to this namespace only.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(
            Command::new("ip").args(["-n", &self.name]).args(args),
            SHORT,
        )
    }

    /// `ip netns exec <ns> <program>`, for the caller to add arguments to.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_ns(&self.name, program)
    }

    /// A sysctl of this namespace (`net.*` keys are per namespace, so this
    /// never changes the host's).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run_ok(
            self.command("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")]),
            SHORT,
        )?;
        Ok(())
    }

    /// Loads an nftables ruleset into this namespace's own netfilter.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        let mut cmd = self.command("nft");
        cmd.args(["-f", "-"]);
        let out = run_with_input(&mut cmd, Some(ruleset), SHORT)?;
        anyhow::ensure!(
            out.success(),
            "nft in {} refused the ruleset:\n{ruleset}\n{}",
            self.name,
            out.combined()
        );
        Ok(())
    }

    /// `ip route add default via <gateway>`; only ever toward one of our routers.
    pub fn default_route(&self, gateway: &str) -> anyhow::Result<()> {
        self.ip(&["route", "add", "default", "via", gateway])?;
        Ok(())
    }
}

/// Owns a namespace: deletes it on drop, after killing whatever still runs in it.
#[derive(Debug)]
pub struct NsGuard {
    ns: Ns,
}

impl NsGuard {
    /// Creates the namespace and brings its loopback up (the server's metrics
    /// listener and tailscaled's local services use it).
    pub fn create(name: &str) -> anyhow::Result<NsGuard> {
        run_ok(Command::new("ip").args(["netns", "add", name]), SHORT)
            .with_context(|| format!("cannot create network namespace {name}"))?;
        let guard = NsGuard {
            ns: Ns {
                name: name.to_string(),
            },
        };
        guard.ns.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    pub fn ns(&self) -> &Ns {
        &self.ns
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        kill_all_in(&self.ns.name);
        let _ = run(
            Command::new("ip").args(["netns", "del", &self.ns.name]),
            SHORT,
        );
    }
}

/// SIGKILLs every process inside namespace `name`. Used on our own namespaces
/// only: whatever runs there was started by this harness.
fn kill_all_in(name: &str) {
    let Ok(pids) = run_ok(
        Command::new("ip").args(["netns", "pids", name]),
        Duration::from_secs(5),
    ) else {
        return;
    };
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

/// The pid in `mse2e-<pid>-...`, if `name` is one of ours and that process
/// is gone.
fn dead_owner(name: &str) -> Option<u32> {
    let pid = name
        .strip_prefix(PREFIX)?
        .split('-')
        .next()?
        .parse::<u32>()
        .ok()?;
    let alive = pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists();
    (!alive).then_some(pid)
}

/// Removes what runs that were killed before their guards could drop left
/// behind: namespaces with our prefix (and whatever still runs in them), and
/// test directories in the temp dir.
pub fn cleanup_stale() {
    cleanup_stale_namespaces();
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = dead_owner(&name) {
            eprintln!(
                "e2e: removing stale {} (its run, pid {pid}, is gone)",
                tmp.join(&name).display()
            );
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn cleanup_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = dead_owner(&name) else {
            continue;
        };
        eprintln!("e2e: removing stale namespace {name} (its run, pid {pid}, is gone)");
        kill_all_in(&name);
        let _ = run(Command::new("ip").args(["netns", "del", &name]), SHORT);
    }
}
