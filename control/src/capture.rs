//! DEBUG ONLY: records what clients send, to seed the fuzz corpora from real
//! traffic (`fuzz/capture.sh`). Compiled in only with the `debug-capture`
//! cargo feature, which release builds and the chart's images leave off:
//! without it [`tap`] and [`record`] do nothing and the variable is ignored
//! (with a warning). With it, capture is on when `MESHSCALE_DEBUG_CAPTURE_DIR`
//! is set when the server starts; never run such a build where real clients
//! connect: the files hold their (decrypted) requests.
//!
//! Layout: `<dir>/<kind>/<n>`, one file per message or per connection (the
//! first `MAX_STREAM` bytes a client sent on it). Pre-auth and API keys
//! are overwritten with `X`s of the same length before anything is written,
//! so HTTP/2 frame lengths in a capture stay valid. Files are 0600 and each
//! is written to a temporary name and renamed, so none is ever half-written.
//! The writing and redaction are also compiled for unit tests, so plain
//! `cargo test` checks them.

/// The environment variable that turns capture on (a directory).
pub(crate) const ENV: &str = "MESHSCALE_DEBUG_CAPTURE_DIR";

#[cfg(feature = "debug-capture")]
pub(crate) use hooks::{record, tap, warn_if_enabled};

/// Without the feature: nothing is recorded, and a set variable must not
/// make anyone believe otherwise.
#[cfg(not(feature = "debug-capture"))]
pub(crate) fn warn_if_enabled() {
    if std::env::var_os(ENV).is_some_and(|v| !v.is_empty()) {
        tracing::warn!(
            "{ENV} is set but ignored: this build has no debug capture (cargo feature debug-capture)"
        );
    }
}

/// Without the feature: does nothing.
#[cfg(not(feature = "debug-capture"))]
#[inline]
pub(crate) fn record(_kind: &str, _bytes: &[u8]) {}

/// Without the feature: the connection itself, untouched.
#[cfg(not(feature = "debug-capture"))]
#[inline]
pub(crate) fn tap<IO>(io: IO, _kind: &'static str) -> IO {
    io
}

#[cfg(feature = "debug-capture")]
mod hooks {
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{ENV, files::write};

    /// Bytes kept per connection: seeds are small, and a DERP connection relays
    /// a node's traffic for as long as it lives.
    const MAX_STREAM: usize = 64 * 1024;

    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);

    fn dir() -> Option<&'static Path> {
        DIR.get_or_init(|| {
            std::env::var_os(ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .as_deref()
    }

    /// Called once by `serve`: capture must never go unnoticed.
    pub(crate) fn warn_if_enabled() {
        if let Some(dir) = dir() {
            tracing::warn!(
                dir = %dir.display(),
                "{ENV} is set: recording client traffic (debug only, never in production)"
            );
        }
    }

    /// Records one message a client sent (an initiation, a datagram).
    pub(crate) fn record(kind: &str, bytes: &[u8]) {
        if let Some(dir) = dir() {
            write(dir, kind, SEQ.fetch_add(1, Ordering::Relaxed), bytes);
        }
    }

    /// Wraps a connection so that what the client sends on it is recorded as
    /// one file of kind `kind`; without capture it only forwards.
    pub(crate) fn tap<IO>(io: IO, kind: &'static str) -> Tap<IO> {
        let seen = dir().map(|_| (SEQ.fetch_add(1, Ordering::Relaxed), Vec::new()));
        Tap { io, kind, seen }
    }

    /// See [`tap`].
    pub(crate) struct Tap<IO> {
        io: IO,
        kind: &'static str,
        /// The file number and the bytes read so far, when capturing.
        seen: Option<(u64, Vec<u8>)>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Tap<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.io).poll_read(cx, buf);
            let kind = self.kind;
            if let (Poll::Ready(Ok(())), Some((n, seen)), Some(dir)) =
                (&polled, &mut self.seen, dir())
            {
                let new = &buf.filled()[before..];
                let room = MAX_STREAM.saturating_sub(seen.len());
                if !new.is_empty() && room > 0 {
                    seen.extend_from_slice(&new[..new.len().min(room)]);
                    // Rewritten whole each time: the process may be killed
                    // before the connection ends, and MAX_STREAM bounds the cost.
                    write(dir, kind, *n, seen);
                }
            }
            polled
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Tap<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }
    }
}

/// Writing and redaction: what the hooks use, and what the unit tests check.
#[cfg(any(test, feature = "debug-capture"))]
mod files {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use crate::keys::{API_KEY_KIND, PREAUTH_KEY_KIND};

    pub(super) fn write(dir: &Path, kind: &str, n: u64, bytes: &[u8]) {
        let mut data = bytes.to_vec();
        redact(&mut data);
        let sub = dir.join(kind);
        let path = sub.join(format!("{n:06}"));
        let tmp = sub.join(format!(".{n:06}.tmp"));
        let result = std::fs::create_dir_all(&sub).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), error = %e, "debug capture: cannot write");
        }
    }

    /// Overwrites the prefix and secret of every pre-auth or API key in `data`
    /// (`<kind>-<12 hex>-<64 hex>`, see `keys.rs`) with `X`s, keeping the length.
    fn redact(data: &mut [u8]) {
        for kind in [PREAUTH_KEY_KIND, API_KEY_KIND] {
            let marker = format!("{kind}-");
            let mut from = 0;
            while let Some(at) = find(&data[from..], marker.as_bytes()) {
                let start = from + at + marker.len();
                let end = data[start..]
                    .iter()
                    .position(|b| !(b.is_ascii_hexdigit() || *b == b'-'))
                    .map_or(data.len(), |p| start + p);
                for b in &mut data[start..end] {
                    if *b != b'-' {
                        *b = b'X';
                    }
                }
                from = end;
            }
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys_are_redacted_in_place() {
            let key = crate::keys::generate(PREAUTH_KEY_KIND).full;
            let api = crate::keys::generate(API_KEY_KIND).full;
            let text =
                format!("{{\"Auth\":{{\"AuthKey\":\"{key}\"}},\"x\":\"{api}\",\"y\":\"{key}\"}}");
            let mut data = text.clone().into_bytes();
            redact(&mut data);
            let out = String::from_utf8(data).unwrap();
            assert_eq!(out.len(), text.len());
            assert!(!out.contains(&key[PREAUTH_KEY_KIND.len() + 1..]), "{out}");
            assert!(!out.contains(&api[API_KEY_KIND.len() + 1..]), "{out}");
            assert_eq!(out.matches("mskey-auth-XXXXXXXXXXXX-").count(), 2, "{out}");
            assert!(out.ends_with("\"}"), "{out}");
        }

        #[test]
        fn written_files_are_owner_only_and_redacted() {
            let dir = tempfile::tempdir().unwrap();
            let key = crate::keys::generate(PREAUTH_KEY_KIND).full;
            write(dir.path(), "t", 7, key.as_bytes());
            let path = dir.path().join("t").join("000007");
            let got = std::fs::read_to_string(&path).unwrap();
            assert_eq!(got.len(), key.len());
            assert!(!got.contains(&key[PREAUTH_KEY_KIND.len() + 1..]));
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
