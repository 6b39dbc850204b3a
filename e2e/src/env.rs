//! Prerequisites. A machine that cannot run the scenarios must make them fail
//! loudly — a silently passing end-to-end suite is worse than none — unless
//! the caller opted out with `MESHSCALE_E2E_SKIP=1`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Everything a scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub meshscale: PathBuf,
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
}

/// System commands the harness shells out to.
const SYSTEM_COMMANDS: &[&str] = &["ip", "nft", "sysctl", "ping", "curl"];

impl Tools {
    /// `Ok(None)` when the scenarios are to be skipped (`MESHSCALE_E2E_SKIP=1`);
    /// an error that says what is missing and how to get it otherwise.
    pub fn detect() -> anyhow::Result<Option<Tools>> {
        if std::env::var("MESHSCALE_E2E_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("MESHSCALE_E2E_SKIP=1: end-to-end scenario skipped");
            return Ok(None);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the end-to-end scenarios need root (network namespaces, TUN devices); \
                 run them as root or set MESHSCALE_E2E_SKIP=1 to skip them"
            );
        }
        let meshscale = meshscale_bin()?;
        let tools_dir = std::env::var_os("MESHSCALE_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/meshscale-tools"));
        let tailscale = executable(&tools_dir.join("bin/tailscale"), "run e2e/setup.sh")?;
        let tailscaled = executable(&tools_dir.join("bin/tailscaled"), "run e2e/setup.sh")?;
        for c in SYSTEM_COMMANDS {
            on_path(c).with_context(|| format!("`{c}` is not on PATH; run e2e/setup.sh"))?;
        }
        // The namespaces share the host's /etc. Our tailscaled never manages
        // DNS (`--accept-dns=false`), but on start-up it restores this backup
        // over /etc/resolv.conf if one exists (left by a tailscaled that
        // managed DNS and died): refuse to run rather than touch the host.
        let backup = Path::new("/etc/resolv.pre-tailscale-backup.conf");
        if backup.exists() {
            bail!(
                "{} exists (a tailscaled that managed DNS on this machine did not clean up); \
                 tailscaled would restore it over /etc/resolv.conf. Check and remove it first",
                backup.display()
            );
        }
        Ok(Some(Tools {
            meshscale,
            tailscale,
            tailscaled,
        }))
    }
}

/// `MESHSCALE_BIN`, else `$CARGO_TARGET_DIR/debug/meshscale`, else the
/// workspace's `target/debug/meshscale`.
fn meshscale_bin() -> anyhow::Result<PathBuf> {
    let hint = "build it first (`cargo build --workspace --bins`) or set MESHSCALE_BIN";
    if let Some(p) = std::env::var_os("MESHSCALE_BIN") {
        return executable(Path::new(&p), "MESHSCALE_BIN names it");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the e2e crate has no parent directory")?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => workspace.join(t), // an absolute path replaces the base
        None => workspace.join("target"),
    };
    executable(&target.join("debug/meshscale"), hint)
}

fn executable(path: &Path, hint: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path.to_path_buf()),
        Ok(_) => bail!("{} is not an executable file ({hint})", path.display()),
        Err(e) => bail!("{}: {e} ({hint})", path.display()),
    }
}

fn on_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found"))
}
