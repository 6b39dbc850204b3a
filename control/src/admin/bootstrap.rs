//! The bootstrap admin API key: one key kept in a file (in Kubernetes, a
//! mounted Secret the operator generates), accepted by the remote admin API
//! next to the keys in the database. It lets an installer hand the operator a
//! credential without a `meshscale apikeys create` step.
//!
//! Only a SHA-256 of the key is held in memory and compared, in constant
//! time; the key is never logged. The file is read again whenever it changes
//! (the kubelet swaps a Secret volume's files in place), so replacing the
//! Secret rotates the key without a restart. An unreadable, oversized or
//! too-short file accepts nothing.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A key file larger than this is refused: a key is a line of text.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Shorter keys are refused: the file must hold a generated secret.
pub(crate) const MIN_KEY_LEN: usize = 32;

/// `admin:` in the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// A file holding a bootstrap admin API key (`MESHSCALE_ADMIN_BOOTSTRAP_API_KEY_PATH`).
    pub bootstrap_api_key_path: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BootstrapKeyError {
    #[error("cannot read the bootstrap API key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the bootstrap API key file {0} is larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge(String),
    #[error("the bootstrap API key in {0} is shorter than {MIN_KEY_LEN} characters")]
    TooShort(String),
}

/// What identifies one version of the file: a change to any re-reads it.
type Stamp = (u64, u64, i64, i64);

pub(crate) struct BootstrapKey {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, [u8; 32])>>,
}

impl BootstrapKey {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        BootstrapKey {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The hash of the file's current key.
    fn current(&self) -> Result<[u8; 32], BootstrapKeyError> {
        let display = || self.path.display().to_string();
        let read_err = |source| BootstrapKeyError::Read {
            path: display(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, hash)) = cached.as_ref()
            && *s == stamp
        {
            return Ok(*hash);
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(BootstrapKeyError::TooLarge(display()));
        }
        let raw = std::fs::read(&self.path).map_err(read_err)?;
        if raw.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(BootstrapKeyError::TooLarge(display()));
        }
        let key = String::from_utf8_lossy(&raw);
        let key = key.trim();
        if key.len() < MIN_KEY_LEN {
            return Err(BootstrapKeyError::TooShort(display()));
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        *cached = Some((stamp, hash));
        Ok(hash)
    }

    /// Whether `presented` is the bootstrap key. A file that cannot be used
    /// is logged (never its contents) and accepts nothing.
    pub(crate) fn verify(&self, presented: &str) -> bool {
        match self.current() {
            Ok(hash) => {
                let p: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
                bool::from(p.ct_eq(&hash))
            }
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap API key unusable");
                false
            }
        }
    }

    /// Checked at start, so a wrong path fails loudly instead of refusing every call.
    pub(crate) fn check(&self) -> Result<(), BootstrapKeyError> {
        self.current().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "msboot-0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_only_the_files_key_and_follows_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikey");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let b = BootstrapKey::new(&path);
        b.check().unwrap();
        assert!(b.verify(KEY));
        assert!(!b.verify("msboot-0123456789abcdef0123456789abcdeX"));
        assert!(!b.verify(""));
        // Rotation as the kubelet does it: a new file renamed over the old.
        let next = "msboot-fedcba9876543210fedcba9876543210";
        let tmp = dir.path().join("apikey.new");
        std::fs::write(&tmp, next).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(b.verify(next));
        assert!(!b.verify(KEY));
    }

    #[test]
    fn a_missing_short_or_huge_file_accepts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikey");
        let b = BootstrapKey::new(&path);
        assert!(b.check().is_err());
        assert!(!b.verify(KEY));
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(b.check(), Err(BootstrapKeyError::TooShort(_))));
        assert!(!b.verify("short"));
        std::fs::write(&path, "k".repeat(5000)).unwrap();
        assert!(matches!(b.check(), Err(BootstrapKeyError::TooLarge(_))));
        assert!(!b.verify(&"k".repeat(5000)));
    }
}
