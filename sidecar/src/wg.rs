//! WireGuard sessions: one boringtun [`Tunn`] per peer, keyed by node key
//! (Tailscale's WireGuard static keys are the node keys). Knows which peer
//! a datagram belongs to; does no I/O.

use std::collections::HashMap;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519::{PublicKey, StaticSecret};
use meshscale_wire::NodePublic;

/// Tunn indexes are 24 bits (boringtun shifts them left by 8).
const MAX_INDEX: u32 = (1 << 24) - 1;

pub struct WgPeer {
    pub tunn: Tunn,
    pub index: u32,
}

impl WgPeer {
    /// Whether a session is established (data can be sent without a
    /// handshake first).
    pub fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }
}

/// WireGuard message types (the first byte; three reserved zero bytes
/// follow) and the sizes of the two handshake messages.
const TYPE_INITIATION: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const INITIATION_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;

fn has_type(datagram: &[u8], ty: u8, len: usize) -> bool {
    datagram.len() == len && datagram[..4] == [ty, 0, 0, 0]
}

/// A handshake initiation (what the fast resends are about).
pub fn is_initiation(datagram: &[u8]) -> bool {
    has_type(datagram, TYPE_INITIATION, INITIATION_LEN)
}

/// A handshake response.
pub fn is_response(datagram: &[u8]) -> bool {
    has_type(datagram, TYPE_RESPONSE, RESPONSE_LEN)
}

pub struct WgPeers {
    private: StaticSecret,
    public: PublicKey,
    peers: HashMap<NodePublic, WgPeer>,
    by_index: HashMap<u32, NodePublic>,
    next_index: u32,
}

impl WgPeers {
    pub fn new(private: &[u8; 32]) -> Self {
        let private = StaticSecret::from(*private);
        let public = PublicKey::from(&private);
        Self {
            private,
            public,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            next_index: 1,
        }
    }

    pub fn get_mut(&mut self, key: &NodePublic) -> Option<&mut WgPeer> {
        self.peers.get_mut(key)
    }

    pub fn contains(&self, key: &NodePublic) -> bool {
        self.peers.contains_key(key)
    }

    pub fn keys(&self) -> Vec<NodePublic> {
        self.peers.keys().copied().collect()
    }

    /// Adds a session for `key` if there is none.
    pub fn ensure(&mut self, key: NodePublic) {
        if self.peers.contains_key(&key) {
            return;
        }
        let index = self.alloc_index();
        // 25 s keep-alive, as tailscaled: keeps NAT mappings open.
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(*key.as_bytes()),
            None,
            Some(25),
            index,
            None,
        );
        self.by_index.insert(index, key);
        self.peers.insert(key, WgPeer { tunn, index });
    }

    pub fn remove(&mut self, key: &NodePublic) {
        if let Some(p) = self.peers.remove(key) {
            self.by_index.remove(&p.index);
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = if i >= MAX_INDEX { 1 } else { i + 1 };
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// The peer a WireGuard datagram received over UDP belongs to: by our
    /// receiver index, or for a handshake initiation by the initiator's
    /// static key (which only we can decrypt).
    pub fn identify(&self, datagram: &[u8]) -> Option<NodePublic> {
        let idx = match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(p) => {
                let half = parse_handshake_anon(&self.private, &self.public, &p).ok()?;
                let key = NodePublic::from_bytes(half.peer_static_public);
                return self.peers.contains_key(&key).then_some(key);
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.by_index.get(&(idx >> 8)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::TunnResult;

    #[test]
    fn handshake_between_two_tables_identifies_peers() {
        let a_priv: [u8; 32] = rand::random();
        let b_priv: [u8; 32] = rand::random();
        let a_pub =
            NodePublic::from_bytes(*PublicKey::from(&StaticSecret::from(a_priv)).as_bytes());
        let b_pub =
            NodePublic::from_bytes(*PublicKey::from(&StaticSecret::from(b_priv)).as_bytes());
        let mut a = WgPeers::new(&a_priv);
        let mut b = WgPeers::new(&b_priv);
        a.ensure(b_pub);
        b.ensure(a_pub);

        let mut buf = vec![0u8; 2048];
        let init = match a
            .get_mut(&b_pub)
            .unwrap()
            .tunn
            .format_handshake_initiation(&mut buf, false)
        {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        };
        assert_eq!(b.identify(&init), Some(a_pub));
        let mut out = vec![0u8; 2048];
        let resp = match b
            .get_mut(&a_pub)
            .unwrap()
            .tunn
            .decapsulate(None, &init, &mut out)
        {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no response"),
        };
        assert_eq!(a.identify(&resp), Some(b_pub));
        assert!(is_initiation(&init) && !is_response(&init));
        assert!(is_response(&resp) && !is_initiation(&resp));
        assert!(!is_initiation(&init[..100]) && !is_initiation(&[]));

        // The initiator has a session once the response is in, not before.
        let a_peer = a.get_mut(&b_pub).unwrap();
        assert!(!a_peer.has_session());
        let keepalive = match a_peer.tunn.decapsulate(None, &resp, &mut out) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no keepalive"),
        };
        assert!(a_peer.has_session());
        assert!(!is_initiation(&keepalive) && !is_response(&keepalive));
        // Unknown junk identifies nobody.
        assert_eq!(a.identify(&[9; 40]), None);
        b.remove(&a_pub);
        assert_eq!(b.identify(&init), None);
    }
}
