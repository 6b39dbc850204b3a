//! Bounds on Noise connections that have not yet become sessions: how many
//! may be pending at once (in total and per source address), and how long
//! one may take from the `/ts2021` upgrade to the client's HTTP/2 preface.
//!
//! A Tailscale client sends its preface in the same flight as it reads the
//! handshake response, so an honest connection is pending for about one
//! round trip. Without these bounds a client that completes the handshake
//! and then stalls would hold its socket, task and Noise buffers forever
//! (hyper's HTTP/2 server has no deadline for the preface).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Pending Noise connections (upgrade seen, HTTP/2 preface not yet
/// received) across all clients. Beyond this, `/ts2021` answers 503.
pub const MAX_PENDING_HANDSHAKES: usize = 2048;
/// Pending Noise connections from one source address. Many honest nodes
/// behind one NAT reconnecting at once stay well below this, since each is
/// pending for a round trip only.
pub const MAX_PENDING_HANDSHAKES_PER_IP: usize = 256;
/// Length of the HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const H2_PREFACE_LEN: usize = 24;

/// Counts pending Noise connections; [`PendingLimiter::admit`] hands out a
/// slot that frees itself when dropped.
#[derive(Debug)]
pub struct PendingLimiter {
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a pending slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingFull {
    #[error("too many pending noise handshakes")]
    Total,
    #[error("too many pending noise handshakes from this address")]
    PerIp,
}

impl PendingFull {
    /// The `reason` label of `meshscale_noise_upgrades_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            PendingFull::Total => "pending",
            PendingFull::PerIp => "pending_per_address",
        }
    }
}

impl PendingLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(PendingLimiter {
            max_total,
            max_per_ip,
            inner: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts are updated in single statements; a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip` (`None`: address unknown, counted
    /// in the total only).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<PendingSlot, PendingFull> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(PendingFull::Total);
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(PendingFull::PerIp);
            }
            *n += 1;
        }
        c.total += 1;
        Ok(PendingSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Pending connections now.
    pub fn pending(&self) -> usize {
        self.lock().total
    }
}

/// One pending connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct PendingSlot {
    limiter: Arc<PendingLimiter>,
    ip: Option<IpAddr>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

/// What a Noise connection still owes before it is a session: the preface,
/// by a deadline, while holding a pending slot.
#[derive(Debug)]
pub struct Admission {
    pub(crate) slot: Option<PendingSlot>,
    pub(crate) deadline: Instant,
}

impl Admission {
    pub fn new(slot: Option<PendingSlot>, deadline: Instant) -> Self {
        Admission { slot, deadline }
    }

    /// No slot, and a deadline far enough away not to matter (tests).
    pub fn unlimited() -> Self {
        Admission {
            slot: None,
            deadline: Instant::now() + Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Wraps a stream so that reads fail with `TimedOut` if the first
/// [`H2_PREFACE_LEN`] bytes have not arrived by the admission's deadline.
/// Once they have, the pending slot is released and the wrapper only
/// forwards.
pub struct PrefaceDeadline<S> {
    inner: S,
    still_owed: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    slot: Option<PendingSlot>,
}

impl<S> PrefaceDeadline<S> {
    pub fn new(inner: S, admission: Admission) -> Self {
        PrefaceDeadline {
            inner,
            still_owed: H2_PREFACE_LEN,
            sleep: Some(Box::pin(tokio::time::sleep_until(admission.deadline))),
            slot: admission.slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                if this.still_owed > 0 {
                    this.still_owed = this.still_owed.saturating_sub(got);
                    if this.still_owed == 0 || got == 0 {
                        this.sleep = None;
                        this.slot = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(sleep) = this.sleep.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    this.sleep = None;
                    this.slot = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not start HTTP/2 within the noise handshake timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn limits_total_and_per_ip_and_frees_on_drop() {
        let l = PendingLimiter::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = l.admit(Some(a)).unwrap();
        let _a2 = l.admit(Some(a)).unwrap();
        assert_eq!(l.admit(Some(a)).unwrap_err(), PendingFull::PerIp);
        let _b1 = l.admit(Some(b)).unwrap();
        assert_eq!(l.admit(Some(b)).unwrap_err(), PendingFull::Total);
        assert_eq!(l.admit(None).unwrap_err(), PendingFull::Total);
        drop(a1);
        assert_eq!(l.pending(), 2);
        let _a3 = l.admit(Some(a)).unwrap();
        assert_eq!(l.pending(), 3);
    }

    #[tokio::test]
    async fn silent_client_times_out_and_frees_its_slot() {
        let l = PendingLimiter::new(1, 1);
        let slot = l.admit(None).unwrap();
        let (server, _client) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut io = PrefaceDeadline::new(server, Admission::new(Some(slot), deadline));
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(l.pending(), 0);
    }

    #[tokio::test]
    async fn preface_in_time_lifts_the_deadline() {
        let l = PendingLimiter::new(1, 1);
        let slot = l.admit(None).unwrap();
        let (server, mut client) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut io = PrefaceDeadline::new(server, Admission::new(Some(slot), deadline));
        // Split, to count across reads.
        client.write_all(&[b'P'; 10]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 10);
        assert_eq!(l.pending(), 1, "still owes 14 bytes");
        client.write_all(&[b'P'; 14]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 14);
        assert_eq!(l.pending(), 0, "slot freed once the preface is in");
        tokio::time::sleep_until(deadline + Duration::from_millis(50)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 5, "no deadline any more");
    }
}
