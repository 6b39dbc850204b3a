//! The DERP server's private key on disk, in the format Headscale uses for
//! `derp_server_private.key` (Go's `key.NodePrivate` text form):
//! `privkey:` followed by 64 hex digits.
//!
//! The key is the server's identity to every client: replacing it silently
//! would be invisible until clients with a pinned key failed, so a file
//! that exists but does not parse is an error, never regenerated.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::crypto::generate_private_key;

const PREFIX: &str = "privkey:";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("DERP server key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "DERP server key {path} is malformed ({reason}); expected `privkey:` and 64 hex digits. \
         Refusing to replace it: fix or remove the file"
    )]
    Malformed { path: PathBuf, reason: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the key at `path`, or creates it (mode 0600, missing parent
/// directories 0700) if there is no file.
pub fn load_or_create_server_key(path: &Path) -> Result<[u8; 32], KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            parse_key(&text).map_err(|reason| KeyFileError::Malformed {
                path: path.to_path_buf(),
                reason,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason: "not UTF-8 text",
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], &'static str> {
    let hex_part = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or("no `privkey:` prefix")?;
    if hex_part.len() != 64 {
        return Err("wrong number of hex digits");
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut key).map_err(|_| "not hex")?;
    if key == [0u8; 32] {
        return Err("all-zero key");
    }
    Ok(key)
}

fn create(path: &Path) -> Result<[u8; 32], KeyFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let key = generate_private_key();
    // Write a temporary file and hard-link it into place: readers never see
    // a half-written key, and if another process created the key first the
    // link fails instead of overwriting it.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{PREFIX}{}\n", hex::encode(key)).as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new DERP server key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_server_key(path),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "DERP server key is readable by group or others");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/derp_server_private.key");
        let key = load_or_create_server_key(&path).unwrap();
        assert_eq!(load_or_create_server_key(&path).unwrap(), key);

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("privkey:{}\n", hex::encode(key)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let parent = path.parent().unwrap();
        assert_eq!(
            std::fs::metadata(parent).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(parent).unwrap().count(), 1);
    }

    #[test]
    fn reads_headscale_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let hex_key = "a8".repeat(32);
        // Headscale writes no trailing newline; uppercase hex is valid too.
        std::fs::write(&path, format!("privkey:{}", hex_key.to_uppercase())).unwrap();
        assert_eq!(load_or_create_server_key(&path).unwrap(), [0xa8; 32]);
    }

    #[test]
    fn refuses_malformed_without_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for bad in [
            "".to_string(),
            "garbage".to_string(),
            format!("nodekey:{}", "11".repeat(32)),
            format!("privkey:{}", "11".repeat(31)),
            format!("privkey:{}", "zz".repeat(32)),
            format!("privkey:{}", "00".repeat(32)),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let err = load_or_create_server_key(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Malformed { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("Refusing to replace it"));
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                bad,
                "file must be left alone"
            );
        }
    }
}
