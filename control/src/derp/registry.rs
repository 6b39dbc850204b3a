//! Who is connected to the relay, and who must hear when someone leaves.
//!
//! A node key may be connected more than once (a client switching
//! networks, or a cloned key). Like Tailscale's default policy
//! (`lastWriterIsActive`), the connection that registered or spoke most
//! recently receives the key's packets; the others stay open but idle.
//!
//! PeerGone(disconnected) goes to every connection that has *received*
//! from the leaving key, so it can drop its reverse route through us
//! (`derp.go`: "if A sent to B, and then if A disconnects, the server
//! sends FramePeerGone to B"). It is sent only when the key's last
//! connection closes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::frame::{NodeKey, PeerGoneReason};
use super::outbox::Outbox;

pub(crate) type ConnId = u64;

/// One client connection, shared between its reader, its writer, and the
/// registry (for other connections to queue packets to it).
pub(crate) struct Peer {
    pub id: ConnId,
    pub key: NodeKey,
    pub outbox: Outbox,
    /// Set while the key has more than one connection, so the read loop
    /// only takes the registry lock for activity tracking when it matters.
    dup: AtomicBool,
}

impl Peer {
    pub(super) fn new(id: ConnId, key: NodeKey, queue_depth: usize) -> Self {
        Peer {
            id,
            key,
            outbox: Outbox::new(queue_depth),
            dup: AtomicBool::new(false),
        }
    }

    pub(super) fn is_dup(&self) -> bool {
        self.dup.load(Ordering::Relaxed)
    }
}

struct KeyConns {
    /// Ordered by most recent registration or activity; the last is active.
    conns: Vec<ConnId>,
}

impl KeyConns {
    fn active(&self) -> Option<ConnId> {
        self.conns.last().copied()
    }
}

struct ConnEntry {
    peer: Arc<Peer>,
    /// Keys this connection has received packets from.
    saw_src: HashSet<NodeKey>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<NodeKey, KeyConns>,
    conns: HashMap<ConnId, ConnEntry>,
    /// Source key -> connections that received from it.
    watchers: HashMap<NodeKey, HashSet<ConnId>>,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below leaves the maps consistent before anything that
        // could panic, so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `peer` the active connection for its key.
    pub(super) fn register(&self, peer: Arc<Peer>) {
        let mut inner = self.lock();
        let id = peer.id;
        let key = peer.key;
        inner.conns.insert(
            id,
            ConnEntry {
                peer,
                saw_src: HashSet::new(),
            },
        );
        let Inner { by_key, conns, .. } = &mut *inner;
        let kc = by_key
            .entry(key)
            .or_insert_with(|| KeyConns { conns: Vec::new() });
        kc.conns.push(id);
        let dup = kc.conns.len() > 1;
        for c in &kc.conns {
            if let Some(e) = conns.get(c) {
                e.peer.dup.store(dup, Ordering::Relaxed);
            }
        }
    }

    /// Removes a connection. If it was its key's last, tells everyone who
    /// received from that key that it is gone.
    pub(super) fn unregister(&self, peer: &Peer) {
        let mut inner = self.lock();
        let Some(entry) = inner.conns.remove(&peer.id) else {
            return;
        };
        for src in &entry.saw_src {
            if let Some(w) = inner.watchers.get_mut(src) {
                w.remove(&peer.id);
                if w.is_empty() {
                    inner.watchers.remove(src);
                }
            }
        }

        let Inner {
            by_key,
            conns,
            watchers,
        } = &mut *inner;
        let Some(kc) = by_key.get_mut(&peer.key) else {
            return;
        };
        kc.conns.retain(|c| *c != peer.id);
        match kc.conns.len() {
            0 => {
                by_key.remove(&peer.key);
                for w in watchers.remove(&peer.key).unwrap_or_default() {
                    if let Some(e) = conns.get_mut(&w) {
                        // Forget it, so a later reconnect is watched afresh.
                        e.saw_src.remove(&peer.key);
                        e.peer
                            .outbox
                            .push_peer_gone(peer.key, PeerGoneReason::Disconnected);
                    }
                }
            }
            1 => {
                if let Some(e) = kc.conns.first().and_then(|c| conns.get(c)) {
                    e.peer.dup.store(false, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The connection that should get a packet for `dst`, noting that it
    /// has now heard from `src`.
    pub(super) fn route(&self, src: &NodeKey, dst: &NodeKey) -> Option<Arc<Peer>> {
        let mut inner = self.lock();
        let Inner {
            by_key,
            conns,
            watchers,
        } = &mut *inner;
        let active = by_key.get(dst)?.active()?;
        let entry = conns.get_mut(&active)?;
        if entry.saw_src.insert(*src) {
            watchers.entry(*src).or_default().insert(active);
        }
        Some(entry.peer.clone())
    }

    /// A duplicate connection that speaks becomes its key's active one.
    pub(super) fn note_activity(&self, peer: &Peer) {
        if !peer.is_dup() {
            return;
        }
        let mut inner = self.lock();
        if let Some(kc) = inner.by_key.get_mut(&peer.key)
            && kc.active() != Some(peer.id)
        {
            kc.conns.retain(|c| *c != peer.id);
            kc.conns.push(peer.id);
        }
    }

    pub(super) fn is_connected(&self, key: &NodeKey) -> bool {
        self.lock().by_key.contains_key(key)
    }

    /// Open, authenticated connections (duplicates included).
    pub(super) fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    #[cfg(test)]
    pub(super) fn all_peers(&self) -> Vec<Arc<Peer>> {
        self.lock().conns.values().map(|e| e.peer.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::frame::{FrameDecoder, ServerMessage};
    use bytes::BytesMut;

    fn peer(id: ConnId, key: u8) -> Arc<Peer> {
        Arc::new(Peer::new(id, [key; 32], 8))
    }

    fn pending(p: &Peer) -> Vec<ServerMessage> {
        let mut buf = BytesMut::new();
        p.outbox.drain_into(&mut buf, usize::MAX);
        let dec = FrameDecoder::default();
        std::iter::from_fn(|| dec.decode(&mut buf).unwrap())
            .map(|f| ServerMessage::parse(&f))
            .collect()
    }

    #[test]
    fn routes_to_registered_key_only() {
        let r = Registry::default();
        let a = peer(1, 0xa);
        r.register(a.clone());
        assert_eq!(r.route(&[0xb; 32], &[0xa; 32]).map(|p| p.id), Some(1));
        assert!(r.route(&[0xa; 32], &[0xb; 32]).is_none());
        assert!(r.is_connected(&[0xa; 32]));
        r.unregister(&a);
        assert!(!r.is_connected(&[0xa; 32]));
        assert_eq!(r.connection_count(), 0);
    }

    #[test]
    fn last_registered_or_active_wins() {
        let r = Registry::default();
        let (old, new) = (peer(1, 0xa), peer(2, 0xa));
        r.register(old.clone());
        assert!(!old.is_dup());
        r.register(new.clone());
        assert!(old.is_dup() && new.is_dup());
        assert_eq!(r.route(&[0; 32], &[0xa; 32]).map(|p| p.id), Some(2));
        r.note_activity(&old);
        assert_eq!(r.route(&[0; 32], &[0xa; 32]).map(|p| p.id), Some(1));
        r.unregister(&old);
        assert!(!new.is_dup());
        assert_eq!(r.route(&[0; 32], &[0xa; 32]).map(|p| p.id), Some(2));
    }

    #[test]
    fn peer_gone_goes_to_receivers_when_last_connection_leaves() {
        let r = Registry::default();
        let (a, b, c) = (peer(1, 0xa), peer(2, 0xb), peer(3, 0xc));
        let a2 = peer(4, 0xa);
        for p in [&a, &b, &c, &a2] {
            r.register((*p).clone());
        }
        // A sends to B: B has heard from A. C has not.
        assert!(r.route(&[0xa; 32], &[0xb; 32]).is_some());
        r.unregister(&a2);
        assert!(pending(&b).is_empty(), "A still has a connection");
        r.unregister(&a);
        assert_eq!(
            pending(&b),
            vec![ServerMessage::PeerGone {
                peer: [0xa; 32],
                reason: PeerGoneReason::Disconnected
            }]
        );
        assert!(pending(&c).is_empty());

        // A comes back and sends again: B must be told again when it leaves.
        let a3 = peer(5, 0xa);
        r.register(a3.clone());
        assert!(r.route(&[0xa; 32], &[0xb; 32]).is_some());
        r.unregister(&a3);
        assert_eq!(pending(&b).len(), 1);

        // B leaving cleans up its watches too.
        assert!(r.route(&[0xc; 32], &[0xb; 32]).is_some());
        r.unregister(&b);
        assert!(r.lock().watchers.is_empty());
    }
}
