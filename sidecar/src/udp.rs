//! The data plane's one UDP socket, IPv4 and IPv6: bound to `[::]:port`
//! with IPV6_V6ONLY off, so IPv4 peers appear as `::ffff:a.b.c.d`; this
//! module hides that mapping. Where IPv6 is unavailable (disabled in a
//! container), it falls back to an IPv4-only socket.
//!
//! Reads and writes are batched where the OS allows: `recvmmsg` fills up
//! to [`BATCH`] messages per wake-up into a reused [`RecvBatch`], and
//! `sendmmsg` sends a [`SendBatch`] queued while handling one event. When
//! the kernel (or a seccomp filter) refuses those calls, the socket falls
//! back to one `recvmsg`/`sendto` per datagram for good.
//!
//! On top of that, UDP segmentation offload (`UDP_SEGMENT`): runs of
//! equal-sized datagrams to one destination (a TCP super-packet from the
//! TUN, cut up and encrypted) leave as one message the kernel splits late,
//! and UDP GRO (`UDP_GRO`): the kernel hands over runs of datagrams from
//! one source as one message with their size. Both save most of the
//! kernel's per-datagram cost; both turn themselves off where refused.
//! Socket buffers are raised to [`SOCKET_BUFFER`] so bursts are not lost.
//!
//! Also the host's own interface addresses, our LAN endpoint candidates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// Messages per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Datagrams queued for one flush: a little over two TCP super-packets
/// (64 KiB in 1,240-byte segments) cut up.
pub const SEND_BATCH: usize = 128;
/// Bytes per batch slot: a WireGuard datagram for a 1280-byte MTU plus
/// headroom. Larger datagrams are dropped on receive (flagged truncated)
/// and sent one by one on transmit.
pub const SLOT: usize = 2048;
/// A received message with UDP GRO on: up to 64 KiB of datagrams.
const GRO_SLOT: usize = 65_536;
/// Send and receive buffer size asked for (tailscaled asks for 7 MiB): a
/// TCP window's worth of datagrams must fit while the agent is busy.
pub const SOCKET_BUFFER: usize = 7 << 20;
/// Segments per `UDP_SEGMENT` message (the kernel's limit is 64 on older
/// kernels) and bytes (an IPv4 datagram's payload limit, with margin).
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_000;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one `cmsghdr` with an int (UDP_SEGMENT / UDP_GRO), aligned.
type Cmsg = [u64; 4];

pub struct Udp {
    sock: UdpSocket,
    dual: bool,
    /// Whether `recvmmsg`/`sendmmsg` work here; cleared on the first sign
    /// that they do not.
    recv_mmsg: AtomicBool,
    send_mmsg: AtomicBool,
    /// `UDP_SEGMENT` works; cleared on the first refusal.
    gso: AtomicBool,
    /// `UDP_GRO` is on: received messages may hold several datagrams.
    gro: AtomicBool,
}

/// Reused receive buffers: `BATCH` slots (of `SLOT` bytes, or 64 KiB with
/// GRO) and their source addresses.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    slot: usize,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[Cmsg]>,
    lens: [usize; BATCH],
    /// GRO segment size of each message; 0: one datagram.
    segs: [usize; BATCH],
    /// `None`: dropped (truncated, or an address family we do not speak).
    srcs: [Option<SocketAddr>; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            slot: SLOT,
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            names: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; BATCH]
                .into_boxed_slice(),
            ctrl: vec![[0u64; 4]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            segs: [0; BATCH],
            srcs: [None; BATCH],
            n: 0,
        }
    }

    /// Grows the slots for GRO (once; the pages are only touched when
    /// a burst fills them).
    fn ensure_slot(&mut self, slot: usize) {
        if self.slot < slot {
            self.bufs = vec![0u8; BATCH * slot].into_boxed_slice();
            self.slot = slot;
        }
    }

    /// The datagrams of the last receive, with their sources; a GRO
    /// message is cut back into its datagrams.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        (0..self.n).flat_map(move |i| {
            let data = &self.bufs[i * self.slot..i * self.slot + self.lens[i]];
            let (step, src) = match self.segs[i] {
                // A lone datagram larger than a WireGuard datagram can be
                // is nobody's: dropped, as when it was truncated.
                0 => (
                    data.len().max(1),
                    self.srcs[i].filter(|_| data.len() <= SLOT),
                ),
                s => (s, self.srcs[i]),
            };
            src.into_iter()
                .flat_map(move |src| data.chunks(step).map(move |c| (c, src)))
        })
    }

    /// How many datagrams the last receive returned (dropped ones too).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.n
    }
}

/// Datagrams queued for one `sendmmsg`, each with a caller's tag (the
/// peer) so that failures can be routed another way.
pub struct SendBatch<T> {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    name_lens: [libc::socklen_t; SEND_BATCH],
    lens: [usize; SEND_BATCH],
    /// Destinations as given to the socket, to find runs for GSO.
    dsts: Vec<SocketAddr>,
    tags: Vec<T>,
}

impl<T: Copy> Default for SendBatch<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> SendBatch<T> {
    pub fn new() -> SendBatch<T> {
        SendBatch {
            bufs: vec![0u8; SEND_BATCH * SLOT].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            names: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; SEND_BATCH]
                .into_boxed_slice(),
            name_lens: [0; SEND_BATCH],
            lens: [0; SEND_BATCH],
            dsts: Vec::with_capacity(SEND_BATCH),
            tags: Vec::with_capacity(SEND_BATCH),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.tags.len() == SEND_BATCH
    }

    /// The free slot the next datagram goes to, to build it in place
    /// (then [`Udp::commit`] it); `None` when the batch is full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        let i = self.tags.len();
        (i < SEND_BATCH).then(|| &mut self.bufs[i * SLOT..(i + 1) * SLOT])
    }

    fn data(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }
}

impl Udp {
    /// Binds `port` (0: any), falling back to a random port when it is
    /// taken: peers learn the port from our endpoints anyway.
    pub async fn bind(port: u16) -> std::io::Result<Udp> {
        match Self::bind_exact(port).await {
            Ok(u) => Ok(u),
            Err(e) if port != 0 => {
                warn!(port, error = %e, "UDP port busy; using a random one");
                Self::bind_exact(0).await
            }
            Err(e) => Err(e),
        }
    }

    async fn bind_exact(port: u16) -> std::io::Result<Udp> {
        match dual_stack(port) {
            Ok(sock) => Ok(Udp::new(sock, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
            Err(e) => {
                debug!(error = %e, "no IPv6 UDP socket; IPv4 only");
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
                Ok(Udp::new(sock, false))
            }
        }
    }

    fn new(sock: UdpSocket, dual: bool) -> Udp {
        let fd = sock.as_raw_fd();
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            // FORCE passes net.core.[rw]mem_max (needs CAP_NET_ADMIN,
            // which the agent has for its TUN); else as much as allowed.
            if let Err(e) = set_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER as libc::c_int)
                .or_else(|_| set_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER as libc::c_int))
            {
                debug!(error = %e, "cannot raise the UDP socket buffer");
            }
        }
        // MESHSCALE_UDP_OFFLOAD=0: no GSO/GRO (a kernel or middlebox that
        // mishandles them; and to measure what they give).
        let offload = std::env::var("MESHSCALE_UDP_OFFLOAD").map_or(true, |v| v != "0");
        let gro = offload && set_int(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok();
        debug!(gro, gso = offload, "UDP socket options");
        Udp {
            sock,
            dual,
            recv_mmsg: AtomicBool::new(true),
            send_mmsg: AtomicBool::new(true),
            gso: AtomicBool::new(offload),
            gro: AtomicBool::new(gro),
        }
    }

    pub fn port(&self) -> Option<u16> {
        self.sock.local_addr().ok().map(|a| a.port())
    }

    pub fn has_ipv6(&self) -> bool {
        self.dual
    }

    pub fn try_send_to(&self, buf: &[u8], dst: SocketAddr) -> std::io::Result<usize> {
        let dst = self.wire_addr(dst)?;
        self.sock.try_send_to(buf, dst)
    }

    /// The address as this socket must be given it.
    fn wire_addr(&self, dst: SocketAddr) -> std::io::Result<SocketAddr> {
        match (self.dual, dst.ip()) {
            (true, IpAddr::V4(v4)) => {
                Ok(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), dst.port()))
            }
            (false, IpAddr::V6(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no IPv6 UDP socket",
            )),
            _ => Ok(dst),
        }
    }

    /// Waits for datagrams and receives as many as are queued (up to
    /// [`BATCH`]) in one call; returns how many. Read them with
    /// [`RecvBatch::iter`].
    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        batch.n = 0;
        let gro = self.gro.load(Ordering::Relaxed);
        if gro {
            batch.ensure_slot(GRO_SLOT);
        }
        let n = self
            .sock
            .async_io(Interest::READABLE, || {
                if self.recv_mmsg.load(Ordering::Relaxed) {
                    match recv_mmsg(fd, batch, gro) {
                        Err(e) if mmsg_unsupported(&e) => {
                            warn!(error = %e, "recvmmsg unavailable; receiving one datagram per call");
                            self.recv_mmsg.store(false, Ordering::Relaxed);
                        }
                        r => return r,
                    }
                }
                recv_one(fd, batch, gro)
            })
            .await?;
        batch.n = n;
        Ok(n)
    }

    /// Queues a datagram for the next [`Udp::flush`]. Fails, queueing
    /// nothing, when the batch is full, the datagram does not fit a slot,
    /// or the address family is not available: send it some other way.
    pub fn queue<T: Copy>(
        &self,
        batch: &mut SendBatch<T>,
        data: &[u8],
        dst: SocketAddr,
        tag: T,
    ) -> std::io::Result<()> {
        if data.len() > SLOT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "datagram too large for a batch slot",
            ));
        }
        let slot = batch
            .next_slot()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "batch full"))?;
        slot[..data.len()].copy_from_slice(data);
        self.commit(batch, data.len(), dst, tag)
    }

    /// Queues the datagram built in [`SendBatch::next_slot`] (its first
    /// `len` bytes). Fails, queueing nothing, as [`Udp::queue`] does.
    pub fn commit<T: Copy>(
        &self,
        batch: &mut SendBatch<T>,
        len: usize,
        dst: SocketAddr,
        tag: T,
    ) -> std::io::Result<()> {
        let dst = self.wire_addr(dst)?;
        if batch.is_full() || len > SLOT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "batch full or datagram too large for a batch slot",
            ));
        }
        let i = batch.tags.len();
        batch.lens[i] = len;
        batch.name_lens[i] = write_sockaddr(&mut batch.names[i], dst);
        batch.dsts.push(dst);
        batch.tags.push(tag);
        Ok(())
    }

    /// Sends everything queued, with as few `sendmmsg` calls as the kernel
    /// allows, and empties the batch. Datagrams that could not be sent
    /// (socket buffer full, or an error for that destination) are handed to
    /// `failed` with their tags; nothing waits.
    pub fn flush<T: Copy>(&self, batch: &mut SendBatch<T>, mut failed: impl FnMut(T, &[u8])) {
        let fd = self.sock.as_raw_fd();
        let total = batch.tags.len();
        let mut sent = 0;
        while sent < total {
            let gso = self.gso.load(Ordering::Relaxed) && self.send_mmsg.load(Ordering::Relaxed);
            let r = if gso {
                self.sock
                    .try_io(Interest::WRITABLE, || send_gso(fd, batch, sent))
            } else if self.send_mmsg.load(Ordering::Relaxed) {
                self.sock
                    .try_io(Interest::WRITABLE, || send_mmsg(fd, batch, sent))
            } else {
                self.sock
                    .try_io(Interest::WRITABLE, || send_one(fd, batch, sent))
            };
            match r {
                Ok(0) => break,
                Ok(k) => sent += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // EIO: the route's device cannot checksum for GSO.
                Err(e) if gso && gso_refused(&e) => {
                    warn!(error = %e, "UDP segmentation offload refused; sending datagram by datagram");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    // sendmmsg reports an error only for the first datagram
                    // it tried. Try that one alone: if that works and the
                    // error was a refusal of the call, it is sendmmsg that
                    // is refused here.
                    let refused = mmsg_unsupported(&e);
                    let alone = if self.send_mmsg.load(Ordering::Relaxed) {
                        self.sock
                            .try_io(Interest::WRITABLE, || send_one(fd, batch, sent))
                    } else {
                        Err(std::io::Error::new(e.kind(), e.to_string()))
                    };
                    let e0 = e;
                    match alone {
                        Ok(_) if refused => {
                            warn!(error = %e0, "sendmmsg unavailable; sending one datagram per call");
                            self.send_mmsg.store(false, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            debug!(error = %e, "UDP send");
                            failed(batch.tags[sent], batch.data(sent));
                        }
                    }
                    sent += 1;
                }
            }
        }
        for i in sent..total {
            failed(batch.tags[i], batch.data(i));
        }
        batch.tags.clear();
        batch.dsts.clear();
    }
}

/// Errors that say the batch calls themselves are refused (an old kernel,
/// a seccomp filter), not that this datagram failed.
fn mmsg_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// Points `h` at slot `i` of the batch (and its control buffer with GRO).
fn prepare_recv(
    batch: &mut RecvBatch,
    i: usize,
    iov: &mut libc::iovec,
    h: &mut libc::msghdr,
    gro: bool,
) {
    *iov = libc::iovec {
        // SAFETY: (i + 1) * slot <= bufs.len().
        iov_base: unsafe { batch.bufs.as_mut_ptr().add(i * batch.slot) }.cast(),
        iov_len: batch.slot,
    };
    h.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    if gro {
        h.msg_control = batch.ctrl[i].as_mut_ptr().cast();
        h.msg_controllen = std::mem::size_of::<Cmsg>() as _;
    }
}

/// Records message `i` of a receive: length, GRO segment size, source
/// (`None` when truncated).
fn finish_recv(batch: &mut RecvBatch, i: usize, h: &libc::msghdr, len: usize) {
    batch.lens[i] = len.min(batch.slot);
    batch.segs[i] = gro_segment(h);
    batch.srcs[i] = if h.msg_flags & libc::MSG_TRUNC != 0 || len > batch.slot {
        None
    } else {
        read_sockaddr(&batch.names[i])
    };
}

/// The `UDP_GRO` segment size the kernel attached, if any.
fn gro_segment(h: &libc::msghdr) -> usize {
    if h.msg_control.is_null() {
        return 0;
    }
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG
    // macros stay inside them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

fn recv_mmsg(fd: RawFd, batch: &mut RecvBatch, gro: bool) -> std::io::Result<usize> {
    // SAFETY: iovec and mmsghdr are plain data; zeroes are valid and every
    // pointer used is set below.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        prepare_recv(batch, i, &mut iov[i], &mut hdrs[i].msg_hdr, gro);
    }
    // SAFETY: hdrs describes BATCH valid, disjoint buffers and address
    // slots that outlive the call.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            BATCH as _,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = r as usize;
    for (i, h) in hdrs.iter().enumerate().take(n) {
        finish_recv(batch, i, &h.msg_hdr, h.msg_len as usize);
    }
    Ok(n)
}

fn recv_one(fd: RawFd, batch: &mut RecvBatch, gro: bool) -> std::io::Result<usize> {
    // SAFETY: plain data; every pointer used is set by prepare_recv.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    prepare_recv(batch, 0, &mut iov, &mut h, gro);
    // SAFETY: h describes slot 0 and its address and control buffers.
    let r = unsafe { libc::recvmsg(fd, &mut h, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    finish_recv(batch, 0, &h, r as usize);
    Ok(1)
}

/// Sends from datagram `from` on, each run of equal-sized datagrams to one
/// destination (the last of a run may be shorter) as one `UDP_SEGMENT`
/// message; returns how many datagrams the kernel took.
fn send_gso<T: Copy>(fd: RawFd, batch: &mut SendBatch<T>, from: usize) -> std::io::Result<usize> {
    let total = batch.tags.len();
    // SAFETY: plain data; every pointer used is set below.
    let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut ctrl: [Cmsg; SEND_BATCH] = [[0; 4]; SEND_BATCH];
    let mut counts = [0usize; SEND_BATCH];
    let base = batch.bufs.as_mut_ptr();
    let mut m = 0;
    let mut i = from;
    while i < total {
        let start = i;
        let seg = batch.lens[i];
        let dst = batch.dsts[i];
        let mut bytes = 0;
        while i < total
            && batch.dsts[i] == dst
            && batch.lens[i] <= seg
            && i - start < MAX_GSO_SEGMENTS
            && bytes + batch.lens[i] <= MAX_GSO_BYTES
            && (seg > 0 || i == start)
        {
            let len = batch.lens[i];
            iov[i] = libc::iovec {
                // SAFETY: i < SEND_BATCH, so the slot lies inside bufs.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: len,
            };
            bytes += len;
            i += 1;
            // A shorter datagram can only end a run.
            if len < seg {
                break;
            }
        }
        let k = i - start;
        let h = &mut hdrs[m].msg_hdr;
        h.msg_name = (&mut batch.names[start] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = batch.name_lens[start];
        h.msg_iov = &mut iov[start];
        h.msg_iovlen = k as _;
        if k > 1 {
            h.msg_control = ctrl[m].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations;
            // the control buffer (32 bytes) holds one cmsghdr with a u16.
            unsafe {
                h.msg_controllen = libc::CMSG_SPACE(2) as _;
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
        counts[m] = k;
        m += 1;
    }
    // SAFETY: the first m headers describe valid buffers, addresses and
    // control data that outlive the call.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), m as _, libc::MSG_DONTWAIT as _) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(counts[..r as usize].iter().sum())
}

/// Errors that say `UDP_SEGMENT` itself is refused here.
fn gso_refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EPERM)
    )
}

fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn send_mmsg<T: Copy>(fd: RawFd, batch: &mut SendBatch<T>, from: usize) -> std::io::Result<usize> {
    let count = batch.tags.len() - from;
    // SAFETY: plain data; every pointer used is set below.
    let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let base = batch.bufs.as_mut_ptr();
    for j in 0..count {
        let i = from + j;
        iov[j] = libc::iovec {
            // SAFETY: i < SEND_BATCH, so the slot lies inside bufs.
            iov_base: unsafe { base.add(i * SLOT) }.cast(),
            iov_len: batch.lens[i],
        };
        let h = &mut hdrs[j].msg_hdr;
        h.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = batch.name_lens[i];
        h.msg_iov = &mut iov[j];
        h.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers describe valid buffers and
    // addresses that outlive the call.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as _, libc::MSG_DONTWAIT as _) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as usize)
}

fn send_one<T: Copy>(fd: RawFd, batch: &SendBatch<T>, i: usize) -> std::io::Result<usize> {
    let data = batch.data(i);
    // SAFETY: data and the address are valid for the stated lengths.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            (&batch.names[i] as *const libc::sockaddr_storage).cast(),
            batch.name_lens[i],
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(1)
}

fn write_sockaddr(out: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    // SAFETY: plain data.
    *out = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for,
            // every sockaddr type.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// A source address as the rest of the agent sees it: IPv4 peers on the
/// dual-stack socket come back as plain IPv4.
fn read_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(match ip.to_canonical() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(
                    v6,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

/// `[::]:port` with IPV6_V6ONLY explicitly off: the host's
/// `net.ipv6.bindv6only` default must not decide whether IPv4 works.
fn dual_stack(port: u16) -> std::io::Result<UdpSocket> {
    // SAFETY: socket() has no memory preconditions; a valid fd is owned
    // by the UdpSocket right away, so every error path below closes it.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let off: libc::c_int = 0;
    // SAFETY: a valid fd, and a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    };
    // SAFETY: addr is a valid sockaddr_in6 and the length is its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    UdpSocket::from_std(sock)
}

/// The host's unicast addresses that peers on a LAN could reach: no
/// loopback, no link-local (they need a scope peers cannot know), nothing
/// in the mesh prefixes (our own tunnel), at most `max`.
pub fn interface_addrs(max: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() && out.len() < max {
        // SAFETY: cur is a node of the list getifaddrs returned, alive
        // until freeifaddrs; ifa_addr may be null and is checked.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as libc::c_uint == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which struct
        // it points to.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if usable(&ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: head came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn usable(ip: &IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || crate::netmap::in_mesh(ip) {
        return false;
    }
    match ip {
        IpAddr::V4(a) => !a.is_link_local(),
        IpAddr::V6(a) => !a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_addresses() {
        for ok in ["192.168.1.2", "10.0.0.5", "2001:db8::1", "fd00::5"] {
            assert!(usable(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "100.64.0.1",
            "fd7a:115c:a1e0::1",
            "0.0.0.0",
        ] {
            assert!(!usable(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[tokio::test]
    async fn dual_stack_talks_to_ipv4_and_ipv6() {
        let a = Udp::bind(0).await.unwrap();
        let port = a.port().unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // try_send_to needs the reactor to have seen the socket writable.
        a.sock.writable().await.unwrap();
        a.try_send_to(
            b"x",
            SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_addr().unwrap().port()),
        )
        .unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(from.port(), port);
        b.send_to(b"y", ("127.0.0.1", port)).await.unwrap();
        let mut batch = RecvBatch::new();
        a.recv_batch(&mut batch).await.unwrap();
        let (data, src) = batch.iter().next().unwrap();
        assert_eq!(
            (data, src.ip()),
            (&b"y"[..], "127.0.0.1".parse::<IpAddr>().unwrap())
        );
        if a.has_ipv6()
            && let Ok(c) = UdpSocket::bind("[::1]:0").await
        {
            a.try_send_to(b"z", c.local_addr().unwrap()).unwrap();
            let (_, from) = c.recv_from(&mut buf).await.unwrap();
            assert_eq!(from.port(), port);
        }
    }

    const N: usize = 50;

    /// Receives until `want` datagrams came; returns them and how many
    /// receive calls that took.
    async fn receive_all(u: &Udp, want: usize) -> (Vec<(Vec<u8>, SocketAddr)>, usize) {
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        let mut calls = 0;
        while got.len() < want {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), u.recv_batch(&mut batch))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
            assert!((1..=BATCH).contains(&n));
            assert_eq!(batch.len(), n);
            calls += 1;
            got.extend(batch.iter().map(|(d, a)| (d.to_vec(), a)));
        }
        (got, calls)
    }

    /// 50 datagrams from two senders, queued before the first receive:
    /// `recvmmsg` returns them in a few batches, each with its own source.
    #[tokio::test]
    async fn recv_batch_returns_every_datagram_with_its_source() {
        let a = Udp::bind(0).await.unwrap();
        let port = a.port().unwrap();
        let s1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let s2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..N {
            let s = if i % 2 == 0 { &s1 } else { &s2 };
            s.send_to(format!("datagram {i}").as_bytes(), ("127.0.0.1", port))
                .unwrap();
        }
        let (got, calls) = receive_all(&a, N).await;
        assert!(calls <= N.div_ceil(BATCH) + 1, "{calls} receive calls");
        assert!(a.recv_mmsg.load(Ordering::Relaxed), "recvmmsg fell back");
        assert_eq!(got.len(), N);
        for (i, (data, src)) in got.iter().enumerate() {
            assert_eq!(data, format!("datagram {i}").as_bytes());
            let s = if i % 2 == 0 { &s1 } else { &s2 };
            assert_eq!(*src, s.local_addr().unwrap(), "datagram {i}");
        }
    }

    /// The single-datagram fallback gives the same result, one per call.
    #[tokio::test]
    async fn recv_fallback_without_recvmmsg() {
        let a = Udp::bind(0).await.unwrap();
        a.recv_mmsg.store(false, Ordering::Relaxed);
        let port = a.port().unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            s.send_to(&[i], ("127.0.0.1", port)).unwrap();
        }
        let (got, calls) = receive_all(&a, 5).await;
        assert_eq!(calls, 5);
        for (i, (data, src)) in got.iter().enumerate() {
            assert_eq!(
                (data.as_slice(), *src),
                (&[i as u8][..], s.local_addr().unwrap())
            );
        }
    }

    /// Datagrams larger than a slot are dropped, not handed on cut short.
    #[tokio::test]
    async fn oversized_datagrams_are_dropped() {
        let a = Udp::bind(0).await.unwrap();
        let port = a.port().unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[7u8; SLOT + 1], ("127.0.0.1", port)).unwrap();
        s.send_to(b"ok", ("127.0.0.1", port)).unwrap();
        let mut seen = Vec::new();
        let mut batch = RecvBatch::new();
        while seen.len() < 2 {
            let n = a.recv_batch(&mut batch).await.unwrap();
            seen.extend((0..n).map(|_| ()));
            let ok: Vec<_> = batch.iter().map(|(d, _)| d.to_vec()).collect();
            assert!(ok.iter().all(|d| d == b"ok"), "{ok:?}");
        }
    }

    /// `queue` + `flush`: 50 datagrams to two receivers (IPv4 through the
    /// dual-stack mapping), with sendmmsg and with the fallback.
    #[tokio::test]
    async fn send_batch_delivers_everything() {
        for batched in [true, false] {
            let a = Udp::bind(0).await.unwrap();
            a.send_mmsg.store(batched, Ordering::Relaxed);
            a.sock.writable().await.unwrap();
            let r1 = Udp::bind(0).await.unwrap();
            let r2 = Udp::bind(0).await.unwrap();
            let d1: SocketAddr = ([127, 0, 0, 1], r1.port().unwrap()).into();
            let d2: SocketAddr = ([127, 0, 0, 1], r2.port().unwrap()).into();
            let mut out = SendBatch::<usize>::new();
            let mut failed = Vec::new();
            for i in 0..N {
                if out.is_full() {
                    a.flush(&mut out, |t, _| failed.push(t));
                }
                let dst = if i % 2 == 0 { d1 } else { d2 };
                a.queue(&mut out, format!("d{i}").as_bytes(), dst, i)
                    .unwrap();
            }
            a.flush(&mut out, |t, _| failed.push(t));
            assert!(out.is_empty());
            assert!(failed.is_empty(), "failed: {failed:?}");
            assert_eq!(a.send_mmsg.load(Ordering::Relaxed), batched);
            for (r, parity) in [(&r1, 0), (&r2, 1)] {
                let (got, _) = receive_all(r, N / 2).await;
                let want: Vec<Vec<u8>> = (0..N)
                    .filter(|i| i % 2 == parity)
                    .map(|i| format!("d{i}").into_bytes())
                    .collect();
                assert_eq!(got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), want);
                assert!(got.iter().all(|(_, s)| s.port() == a.port().unwrap()));
            }
        }
    }

    #[tokio::test]
    async fn queue_refuses_what_a_batch_cannot_carry() {
        let a = Udp::bind(0).await.unwrap();
        let mut out = SendBatch::<()>::new();
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(a.queue(&mut out, &[0u8; SLOT + 1], dst, ()).is_err());
        for _ in 0..SEND_BATCH {
            a.queue(&mut out, b"x", dst, ()).unwrap();
        }
        assert!(out.is_full());
        assert!(a.queue(&mut out, b"x", dst, ()).is_err());
    }

    /// A run of equal-sized datagrams to one destination (ending with a
    /// shorter one) arrives whole and in order, whether it leaves as one
    /// `UDP_SEGMENT` message or datagram by datagram, and whether the
    /// receiver gets it coalesced (GRO) or not.
    #[tokio::test]
    async fn segmented_runs_arrive_whole_and_in_order() {
        for gso in [true, false] {
            let a = Udp::bind(0).await.unwrap();
            a.gso.store(gso, Ordering::Relaxed);
            a.sock.writable().await.unwrap();
            let r = Udp::bind(0).await.unwrap();
            let dst: SocketAddr = ([127, 0, 0, 1], r.port().unwrap()).into();
            let want: Vec<Vec<u8>> = (0..70u8)
                .map(|i| vec![i; if i == 69 { 300 } else { 1200 }])
                .collect();
            let mut out = SendBatch::<usize>::new();
            let mut failed = Vec::new();
            for (i, d) in want.iter().enumerate() {
                a.queue(&mut out, d, dst, i).unwrap();
            }
            a.flush(&mut out, |t, _| failed.push(t));
            assert!(failed.is_empty(), "failed: {failed:?}");
            assert_eq!(a.gso.load(Ordering::Relaxed), gso, "GSO state changed");
            let (got, _) = receive_all(&r, want.len()).await;
            let got: Vec<Vec<u8>> = got.into_iter().map(|(d, _)| d).collect();
            assert_eq!(got, want);
        }
    }
}
