//! Property tests: every parser of untrusted input (disco, DERP frames,
//! STUN, WireGuard peer identification, and netmap application) fed
//! arbitrary and mutated input. The properties: never panic; valid input
//! round-trips; a tampered packet is refused; a hostile map never puts an
//! address outside the mesh prefixes into the netmap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use meshscale_wire::netip::IpPrefix;
use meshscale_wire::tailcfg::{MapResponse, Node, PeerChange};
use meshscale_wire::{DiscoPublic, NodePublic};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::derp::frame;
use crate::disco::{self, Message, Ping, Pong};
use crate::netmap::{self, NetMap};
use crate::{nacl, stun, wg};

fn canonical_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        // v4-mapped v6 decodes as v4; leave it out of round trips.
        any::<[u8; 16]>()
            .prop_filter("not v4-mapped", |o| Ipv6Addr::from(*o)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    (canonical_ip(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip, p))
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<[u8; 12]>(), any::<[u8; 32]>(), 0usize..64).prop_map(|(txid, k, padding)| {
            Message::Ping(Ping {
                txid,
                node_key: NodePublic::from_bytes(k),
                padding,
            })
        }),
        (any::<[u8; 12]>(), sockaddr()).prop_map(|(txid, src)| Message::Pong(Pong { txid, src })),
        vec(sockaddr(), 0..8).prop_map(Message::CallMeMaybe),
    ]
}

/// Addresses from anywhere, mesh or not, any prefix length.
fn any_prefix() -> impl Strategy<Value = IpPrefix> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, b)| (IpAddr::V4(Ipv4Addr::from(o)), b)),
        (any::<[u8; 2]>(), 0u8..=32).prop_map(|(o, b)| (
            IpAddr::V4(Ipv4Addr::new(100, 64 | (o[0] & 0x3f), o[1], 1)),
            b
        )),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(o, b)| (IpAddr::V6(Ipv6Addr::from(o)), b)),
    ]
    .prop_filter_map("valid prefix", |(ip, bits)| IpPrefix::new(ip, bits).ok())
}

fn hostile_node() -> impl Strategy<Value = Node> {
    (
        -3i64..20,
        vec(any_prefix(), 0..4),
        vec(any_prefix(), 0..4),
        any::<[u8; 32]>(),
        vec(".{0,30}", 0..3),
        -2i64..2000,
    )
        .prop_map(|(id, addresses, allowed, key, endpoints, home_derp)| Node {
            id,
            name: format!("n{id}.mesh."),
            key: NodePublic::from_bytes(key),
            addresses,
            allowed_ips: Some(allowed),
            endpoints,
            home_derp,
            ..Node::default()
        })
}

fn hostile_map() -> impl Strategy<Value = MapResponse> {
    (
        proptest::option::of(hostile_node()),
        vec(hostile_node(), 0..5),
        vec(hostile_node(), 0..5),
        vec(-3i64..20, 0..5),
        vec(
            (-3i64..20, -2i64..5, proptest::option::of(any::<[u8; 32]>())),
            0..5,
        ),
        any::<bool>(),
    )
        .prop_map(
            |(node, peers, changed, removed, patches, keep_alive)| MapResponse {
                node,
                peers,
                peers_changed: changed,
                peers_removed: removed,
                peers_changed_patch: patches
                    .into_iter()
                    .map(|(node_id, derp_region, k)| PeerChange {
                        node_id,
                        derp_region,
                        disco_key: k.map(DiscoPublic::from_bytes),
                        ..PeerChange::default()
                    })
                    .collect(),
                keep_alive,
                ..MapResponse::default()
            },
        )
}

proptest! {
    #[test]
    fn disco_decode_never_panics(b in vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&b);
        let _ = disco::sender(&b);
        let _ = disco::looks_like_disco(&b);
        let _ = disco::open(&[7; 32], &b);
    }

    #[test]
    fn disco_round_trips_and_refuses_tampering(
        m in message(),
        flip in any::<prop::sample::Index>(),
    ) {
        prop_assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (pa, pb) = (nacl::public_of(&a), nacl::public_of(&b));
        let mut pkt = disco::seal(&a, &pa, &pb, &m).expect("seal");
        prop_assert!(disco::looks_like_disco(&pkt));
        prop_assert_eq!(disco::open(&b, &pkt), Ok((pa, m)));
        // Any flipped bit after the magic: a different sender key or a
        // broken box; never a message.
        let magic = 6;
        let i = magic + flip.index(pkt.len() - magic);
        pkt[i] ^= 1;
        prop_assert!(disco::open(&b, &pkt).is_err());
    }

    #[test]
    fn derp_parsers_never_panic(b in vec(any::<u8>(), 0..200), h in any::<[u8; 5]>()) {
        let _ = frame::parse_header(&h, frame::MAX_FRAME);
        let _ = frame::parse_recv_packet(&b);
        let _ = frame::parse_server_key(&b);
        let _ = frame::parse_peer_gone(&b);
        let _ = frame::parse_ping(&b);
        if let Ok((_, len)) = frame::parse_header(&h, frame::MAX_FRAME) {
            prop_assert!(len <= frame::MAX_FRAME);
        }
    }

    #[test]
    fn derp_send_packet_round_trips(k in any::<[u8; 32]>(), p in vec(any::<u8>(), 0..300)) {
        let key = NodePublic::from_bytes(k);
        let f = frame::send_packet(&key, &p).expect("encode");
        let (got, data) = frame::parse_recv_packet(&f[frame::HEADER_LEN..]).expect("parse");
        prop_assert_eq!(got, key);
        prop_assert_eq!(data, &p[..]);
    }

    #[test]
    fn stun_parser_never_panics(tail in vec(any::<u8>(), 0..120), head in any::<[u8; 8]>()) {
        let _ = stun::parse_response(&tail);
        // A header that passes the STUN check, then garbage attributes.
        let mut b = vec![1, 1, head[0], head[1], 0x21, 0x12, 0xa4, 0x42];
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&head[2..]);
        b.extend_from_slice(&tail);
        let _ = stun::parse_response(&b);
    }

    #[test]
    fn wireguard_identify_never_panics(b in vec(any::<u8>(), 0..200)) {
        let mut peers = wg::WgPeers::new(&[5; 32]);
        peers.ensure(NodePublic::from_bytes(nacl::public_of(&[6; 32])));
        let _ = peers.identify(&b);
    }

    #[test]
    fn hostile_maps_keep_addresses_in_the_mesh(maps in vec(hostile_map(), 1..6)) {
        let mut nm = NetMap::default();
        for m in &maps {
            let _ = nm.apply(m);
        }
        let nodes = nm.self_node.iter().chain(nm.peers.values());
        for n in nodes {
            for a in &n.addresses {
                prop_assert!(netmap::in_mesh(&a.addr()), "{a} kept");
            }
            for a in n.allowed_ips.iter().flatten() {
                prop_assert!(netmap::in_mesh(&a.addr()) && a.is_host(), "{a} allowed");
            }
        }
        for (id, p) in &nm.peers {
            prop_assert_eq!(*id, p.id);
        }
    }
}
