//! What is waiting to be written to one client connection.
//!
//! Packets are queued per connection with a fixed depth. When a queue is
//! full the oldest packet is dropped, as Tailscale's server does: fresher
//! packets are worth more to WireGuard and disco than stale ones, and a
//! slow client must never block the sender's read loop. Disco packets get
//! their own queue so bulk data cannot crowd out path discovery.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::frame::{self, NodeKey, PeerGoneReason};

/// PeerGone notices are small but unbounded in principle (one per peer
/// that leaves); past this many pending, new ones are dropped.
const MAX_PENDING_PEER_GONE: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub src: NodeKey,
    pub data: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    Yes,
    /// Queued, at the cost of the oldest packet.
    DroppedOldest,
}

#[derive(Default)]
struct Queues {
    disco: VecDeque<Packet>,
    other: VecDeque<Packet>,
    peer_gone: VecDeque<(NodeKey, PeerGoneReason)>,
    pong: Option<[u8; 8]>,
    ping: Option<[u8; 8]>,
    keep_alive: bool,
}

pub(crate) struct Outbox {
    queues: Mutex<Queues>,
    ready: Notify,
    depth: usize,
}

impl Outbox {
    pub(super) fn new(depth: usize) -> Self {
        Outbox {
            queues: Mutex::new(Queues::default()),
            ready: Notify::new(),
            depth: depth.max(1),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Queues) -> R) -> R {
        // A panic while holding this lock cannot leave the queues in a
        // state worse than "some frames missing", so poisoning is ignored.
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut q);
        drop(q);
        self.ready.notify_one();
        r
    }

    pub(super) fn push_packet(&self, packet: Packet) -> Queued {
        let depth = self.depth;
        self.with(|q| {
            let queue = if frame::looks_like_disco(&packet.data) {
                &mut q.disco
            } else {
                &mut q.other
            };
            let dropped = queue.len() >= depth;
            if dropped {
                queue.pop_front();
            }
            queue.push_back(packet);
            if dropped {
                Queued::DroppedOldest
            } else {
                Queued::Yes
            }
        })
    }

    pub(super) fn push_peer_gone(&self, peer: NodeKey, reason: PeerGoneReason) -> bool {
        self.with(|q| {
            if q.peer_gone.len() >= MAX_PENDING_PEER_GONE {
                return false;
            }
            q.peer_gone.push_back((peer, reason));
            true
        })
    }

    /// Only one pong is kept pending: a client pinging faster than we can
    /// answer gets its extra pings ignored (Tailscale does the same).
    pub(super) fn set_pong(&self, data: [u8; 8]) -> bool {
        self.with(|q| q.pong.replace(data).is_none())
    }

    pub(super) fn set_ping(&self, data: [u8; 8]) {
        self.with(|q| q.ping = Some(data));
    }

    pub(super) fn set_keep_alive(&self) {
        self.with(|q| q.keep_alive = true);
    }

    /// Resolves once something may have been queued since the last drain.
    pub(super) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves pending frames into `buf`, control frames first, then packets
    /// until `buf` holds at least `soft_limit` bytes (one packet always
    /// fits). Returns the number of frames added; 0 means nothing is left.
    pub(super) fn drain_into(&self, buf: &mut BytesMut, soft_limit: usize) -> usize {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (peer, reason) in q.peer_gone.drain(..) {
            frame::peer_gone_frame(buf, &peer, reason);
            n += 1;
        }
        if let Some(data) = q.pong.take() {
            frame::pong_frame(buf, &data);
            n += 1;
        }
        if let Some(data) = q.ping.take() {
            frame::ping_frame(buf, &data);
            n += 1;
        }
        if std::mem::take(&mut q.keep_alive) {
            frame::keep_alive_frame(buf);
            n += 1;
        }
        let Queues { disco, other, .. } = &mut *q;
        while buf.len() < soft_limit {
            let Some(p) = disco.pop_front().or_else(|| other.pop_front()) else {
                break;
            };
            // Packets were size-checked when read; a failure here would
            // mean an oversized packet, which is dropped rather than sent.
            if frame::recv_packet_frame(buf, &p.src, &p.data).is_ok() {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::frame::{FrameDecoder, ServerMessage};

    fn packet(tag: u8) -> Packet {
        Packet {
            src: [tag; 32],
            data: Bytes::from(vec![tag; 10]),
        }
    }

    fn disco_packet() -> Packet {
        let mut d = b"TS\xf0\x9f\x92\xac".to_vec();
        d.extend_from_slice(&[0; 60]);
        Packet {
            src: [0xdd; 32],
            data: Bytes::from(d),
        }
    }

    fn drain(o: &Outbox) -> Vec<ServerMessage> {
        let mut buf = BytesMut::new();
        while o.drain_into(&mut buf, usize::MAX) > 0 {}
        let dec = FrameDecoder::default();
        std::iter::from_fn(|| dec.decode(&mut buf).unwrap())
            .map(|f| ServerMessage::parse(&f))
            .collect()
    }

    #[test]
    fn full_queue_drops_oldest() {
        let o = Outbox::new(2);
        assert_eq!(o.push_packet(packet(1)), Queued::Yes);
        assert_eq!(o.push_packet(packet(2)), Queued::Yes);
        assert_eq!(o.push_packet(packet(3)), Queued::DroppedOldest);
        let sources: Vec<u8> = drain(&o)
            .into_iter()
            .map(|m| match m {
                ServerMessage::RecvPacket { from, .. } => from[0],
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sources, vec![2, 3]);
        assert!(drain(&o).is_empty());
    }

    #[test]
    fn disco_has_its_own_queue_and_goes_first() {
        let o = Outbox::new(1);
        o.push_packet(packet(1));
        assert_eq!(
            o.push_packet(disco_packet()),
            Queued::Yes,
            "data queue being full must not drop disco"
        );
        o.push_peer_gone([5; 32], PeerGoneReason::Disconnected);
        assert!(o.set_pong([1; 8]));
        assert!(
            !o.set_pong([2; 8]),
            "second pending pong replaces, reports overflow"
        );
        o.set_keep_alive();
        let msgs = drain(&o);
        assert_eq!(msgs.len(), 5);
        assert!(matches!(msgs[0], ServerMessage::PeerGone { .. }));
        assert_eq!(msgs[1], ServerMessage::Pong([2; 8]));
        assert_eq!(msgs[2], ServerMessage::KeepAlive);
        assert!(matches!(
            msgs[3],
            ServerMessage::RecvPacket {
                from: [0xdd, ..],
                ..
            }
        ));
        assert!(matches!(
            msgs[4],
            ServerMessage::RecvPacket { from: [1, ..], .. }
        ));
    }

    #[test]
    fn drains_in_bounded_batches() {
        let o = Outbox::new(8);
        for tag in 1..=3 {
            o.push_packet(Packet {
                src: [tag; 32],
                data: Bytes::from(vec![tag; 1000]),
            });
        }
        let mut buf = BytesMut::new();
        assert_eq!(
            o.drain_into(&mut buf, 1500),
            2,
            "stops once past the soft limit"
        );
        buf.clear();
        assert_eq!(o.drain_into(&mut buf, 1), 1, "one packet always fits");
        assert_eq!(o.drain_into(&mut buf, 1), 0);
    }

    #[tokio::test]
    async fn ready_is_not_lost_when_pushed_before_waiting() {
        let o = Outbox::new(4);
        o.push_packet(packet(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .unwrap();
    }
}
