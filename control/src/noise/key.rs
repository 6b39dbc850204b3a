//! The server's machine key: the Noise static key clients learn from `GET /key`.
//!
//! Stored like Headscale's `noise_private.key`: the text `privkey:<64 hex>`
//! (Tailscale's `key.MachinePrivate` text form), no trailing newline, mode
//! 0600. Rotating it makes every client re-fetch `/key`, so a file that is
//! there but unreadable or malformed is an error, never silently replaced.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use super::error::{KeyError, NoiseError};

const PRIVATE_PREFIX: &str = "privkey:";
const PUBLIC_PREFIX: &str = "mkey:";
const KEY_LEN: usize = 32;

/// `mkey:<64 lowercase hex>`, the text form of a machine public key.
pub fn machine_key_text(key: &[u8; KEY_LEN]) -> String {
    format!("{PUBLIC_PREFIX}{}", hex::encode(key))
}

/// The server's Curve25519 static key pair.
pub struct ServerKey {
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl ServerKey {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, NoiseError> {
        let pair = snow::Builder::new(super::handshake::noise_params())
            .generate_keypair()
            .map_err(KeyError::Generate)?;
        let private: [u8; KEY_LEN] = pair.private.as_slice().try_into().map_err(|_| {
            KeyError::Generate(snow::Error::Input) // a 25519 private key is always 32 bytes
        })?;
        Ok(Self::from_private(private))
    }

    /// The key pair for a given private key (clamped by X25519 when used, as
    /// in Go, so any 32 bytes are a valid key).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = x25519_public(&private);
        Self { private, public }
    }

    /// Loads the key at `path`, or creates it (and missing parent directories,
    /// 0700) if there is no file.
    pub fn load_or_create(path: &Path) -> Result<Self, NoiseError> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse_file(path, &text)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(path),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(KeyError::Malformed {
                path: path.to_owned(),
                reason: "not UTF-8 text",
            }
            .into()),
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }
            .into()),
        }
    }

    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// `mkey:<hex>`, as served by `/key`.
    pub fn public_text(&self) -> String {
        machine_key_text(&self.public)
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    fn parse_file(path: &Path, text: &str) -> Result<Self, KeyError> {
        let malformed = |reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        // Headscale trims surrounding whitespace, so hand-edited files work.
        let hex_part = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| malformed("missing `privkey:` prefix"))?;
        if hex_part.len() != 2 * KEY_LEN {
            return Err(malformed("wrong key length"));
        }
        let mut private = [0u8; KEY_LEN];
        hex::decode_to_slice(hex_part, &mut private).map_err(|_| malformed("not hex"))?;
        warn_if_readable_by_others(path);
        Ok(Self::from_private(private))
    }

    fn create(path: &Path) -> Result<Self, NoiseError> {
        let key = Self::generate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|source| KeyError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        match write_new_file(path, key.file_text().as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %path.display(), public_key = %key.public_text(), "generated a new noise key");
                Ok(key)
            }
            // Another process (a second replica starting at the same time)
            // won the race: use its key rather than ours.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(Self::parse_file(path, &text)?)
            }
            Err(source) => Err(KeyError::Write {
                path: path.to_owned(),
                source,
            }
            .into()),
        }
    }

    fn file_text(&self) -> String {
        format!("{PRIVATE_PREFIX}{}", hex::encode(self.private))
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("public", &self.public_text())
            .finish_non_exhaustive()
    }
}

impl Drop for ServerKey {
    fn drop(&mut self) {
        // Best effort: no zeroize crate here, and the key also lives in the
        // file, so this only shortens how long a copy sits in freed memory.
        // black_box keeps the compiler from dropping the dead store.
        self.private = [0; KEY_LEN];
        std::hint::black_box(&self.private);
    }
}

/// X25519(private, basepoint), with the same clamping as Go's
/// `curve25519.X25519`.
pub(crate) fn x25519_public(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
        dh.set(private);
        out.copy_from_slice(&dh.pubkey()[..KEY_LEN]);
    }
    out
}

/// Writes `content` to a new file at `path` (mode 0600) without ever exposing
/// a half-written key there: the data goes to a temporary file that is then
/// hard-linked into place, which fails if `path` appeared meanwhile.
fn write_new_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
fn private_file_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    options
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "noise key file is accessible to other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/noise_private.key");
        let first = ServerKey::load_or_create(&path).unwrap();
        let second = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(first.public(), second.public());
        assert_eq!(first.private(), second.private());

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("privkey:"));
        assert_eq!(text.len(), 8 + 64);
        assert!(
            text[8..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn file_is_0600_and_new_dirs_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/noise_private.key");
        ServerKey::load_or_create(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn reads_headscale_format_with_whitespace_and_upper_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let hex = "0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F20";
        fs::write(&path, format!("  privkey:{hex}\n")).unwrap();
        let key = ServerKey::load_or_create(&path).unwrap();
        // Public key computed independently (testdata/gen_kat.py).
        assert_eq!(
            key.public_text(),
            "mkey:07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
        );
    }

    #[test]
    fn malformed_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for bad in [
            "",
            "nodekey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
            "privkey:0102",
            "privkey:zz02030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        ] {
            fs::write(&path, bad).unwrap();
            let err = ServerKey::load_or_create(&path).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, NoiseError::Key(KeyError::Malformed { .. })),
                "{msg}"
            );
            assert!(msg.contains("malformed"), "{msg}");
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                bad,
                "file must not be replaced"
            );
        }
        fs::write(&path, [0xffu8, 0xfe]).unwrap();
        assert!(matches!(
            ServerKey::load_or_create(&path),
            Err(NoiseError::Key(KeyError::Malformed { .. }))
        ));
    }

    #[test]
    fn debug_and_errors_do_not_leak_the_private_key() {
        let key = ServerKey::generate().unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.public_text()));
        assert!(!debug.contains(&hex::encode(key.private())));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let secretish = format!("privkey:{}00", hex::encode(key.private()));
        fs::write(&path, &secretish).unwrap();
        let err = ServerKey::load_or_create(&path).unwrap_err();
        assert!(!err.to_string().contains(&hex::encode(key.private())));
    }

    #[test]
    fn public_text_format() {
        let key = ServerKey::from_private([7; 32]);
        let text = key.public_text();
        assert!(text.starts_with("mkey:"));
        assert_eq!(text.len(), 5 + 64);
        assert_eq!(text, machine_key_text(key.public()));
    }
}
