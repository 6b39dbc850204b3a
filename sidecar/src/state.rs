//! The state directory: the machine key (device identity) and the node key
//! (WireGuard key), kept across restarts so that a restart is the same node
//! and never a duplicate. Files are `privkey:<hex>` (Go's text form), mode
//! 0600 in a 0700 directory; anything looser or unparsable is refused rather
//! than silently replaced, because replacing a key makes a new node.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use meshscale_controlclient::{MachineKey, NodeKey};
use meshscale_wire::{MachinePrivate, NodePrivate};

pub const MACHINE_KEY_FILE: &str = "machine.key";
pub const NODE_KEY_FILE: &str = "node.key";
/// Longest key file accepted (`privkey:` + 64 hex + newline, with slack).
const MAX_KEY_FILE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: mode {mode:o} lets others read it; want 0600 (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a private key file (want `privkey:<64 hex>`)")]
    Corrupt { path: PathBuf },
    #[error("key generation: {0}")]
    Key(#[from] meshscale_controlclient::KeyError),
}

/// The keys that make this node itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub machine: MachineKey,
    pub node: NodeKey,
    /// Whether the keys were just created (a first start).
    pub fresh: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the keys from `dir`, creating the directory and the keys on first
/// use.
pub fn load_or_create(dir: &Path) -> Result<Identity, StateError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Tighten only a directory we may have just made; refusing an existing
    // loose directory would be stricter than tailscaled.
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    let mpath = dir.join(MACHINE_KEY_FILE);
    let npath = dir.join(NODE_KEY_FILE);
    let mut fresh = false;
    let machine = match read_key(&mpath)? {
        Some(text) => {
            let p: MachinePrivate = text.parse().map_err(|_| StateError::Corrupt {
                path: mpath.clone(),
            })?;
            MachineKey::from_private(p)?
        }
        None => {
            let k = MachineKey::generate()?;
            write_key(&mpath, &k.private().to_string())?;
            fresh = true;
            k
        }
    };
    let node = match read_key(&npath)? {
        Some(text) => {
            let p: NodePrivate = text.parse().map_err(|_| StateError::Corrupt {
                path: npath.clone(),
            })?;
            NodeKey::from_private(p)?
        }
        None => {
            let k = NodeKey::generate()?;
            write_key(&npath, &k.private().to_string())?;
            fresh = true;
            k
        }
    };
    Ok(Identity {
        machine,
        node,
        fresh,
    })
}

fn read_key(path: &Path) -> Result<Option<String>, StateError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
        });
    }
    let text = fs::read_to_string(path).map_err(|_| StateError::Corrupt {
        path: path.to_path_buf(),
    })?;
    Ok(Some(text.trim().to_string()))
}

/// Writes through a 0600 temp file and a rename, so a crash never leaves a
/// half-written key that the next start would refuse.
fn write_key(path: &Path, text: &str) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_create(&state).unwrap();
        assert!(a.fresh);
        for f in [MACHINE_KEY_FILE, NODE_KEY_FILE] {
            let mode = fs::metadata(state.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let dmode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let b = load_or_create(&state).unwrap();
        assert!(!b.fresh);
        assert_eq!(a.machine.public(), b.machine.public());
        assert_eq!(a.node.public(), b.node.public());
    }

    #[test]
    fn loose_permissions_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let m = dir.path().join(MACHINE_KEY_FILE);
        fs::set_permissions(&m, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Permissions { .. }), "{e}");
        fs::set_permissions(&m, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&m, "garbage").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        // The refusal must not have replaced the key.
        assert_eq!(fs::read_to_string(&m).unwrap(), "garbage");
    }
}
