//! The tailnet in memory and the fan-out of changes to live map sessions.
//!
//! Every change is turned into one delta message, encoded once, and the same
//! bytes are queued to every session that must see it: a change costs
//! O(changed nodes) per receiver, never a full map rebuild per node. Only a
//! session's first message is a full map, built from the cached views.
//!
//! All mutations happen under one lock, in order, and a new session's
//! snapshot is taken under that same lock, so no session ever misses or
//! double-applies a delta.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::Utc;
use meshscale_wire::tailcfg::{Debug as MapDebug, MapResponse, Node, PeerChange, UserProfile};
use tokio::sync::mpsc;

use super::frame::Frame;
use super::view::{Live, Tailnet, allow_all_filter, node_view, user_profile};
use crate::store;

/// Messages a session may lag behind before it is cut off; the client
/// reconnects and starts again from a full map.
const SESSION_QUEUE: usize = 512;

struct Member {
    record: store::Node,
    live: Live,
    /// The node as peers see it, rebuilt only when the node changes.
    view: Node,
    sessions: Vec<(u64, mpsc::Sender<Arc<Frame>>)>,
}

#[derive(Default)]
struct State {
    members: BTreeMap<i64, Member>,
}

pub struct Hub {
    tailnet: Tailnet,
    state: Mutex<State>,
    next_session: AtomicU64,
}

/// A live map session. Dropping it ends the session (and, for the node's
/// last session, marks it offline for everyone).
pub struct Subscription {
    pub first: Arc<Frame>,
    pub frames: mpsc::Receiver<Arc<Frame>>,
    hub: Arc<Hub>,
    node_id: i64,
    session_id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.node_id, self.session_id);
    }
}

impl Hub {
    pub fn new(tailnet: Tailnet) -> Hub {
        Hub {
            tailnet,
            state: Mutex::new(State::default()),
            next_session: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn view(&self, record: &store::Node, live: &Live, is_self: bool) -> Node {
        node_view(record, live, &self.tailnet, Utc::now(), is_self)
    }

    /// Fills the hub from the store at start-up (no sessions exist yet).
    pub fn load(&self, nodes: Vec<(store::Node, Live)>) {
        let mut st = self.lock();
        for (record, live) in nodes {
            let view = self.view(&record, &live, false);
            st.members.insert(
                record.id,
                Member {
                    record,
                    live,
                    view,
                    sessions: Vec::new(),
                },
            );
        }
    }

    pub fn is_online(&self, node_id: i64) -> bool {
        self.lock()
            .members
            .get(&node_id)
            .is_some_and(|m| m.live.online)
    }

    pub fn online_count(&self) -> usize {
        self.lock()
            .members
            .values()
            .filter(|m| m.live.online)
            .count()
    }

    pub fn live(&self, node_id: i64) -> Option<Live> {
        self.lock().members.get(&node_id).map(|m| m.live.clone())
    }

    /// A node was admitted or its record changed (rename, expiry, owner, tags, keys).
    pub fn upsert(&self, record: store::Node) {
        let mut st = self.lock();
        let id = record.id;
        let profile = user_profile(&record.user);
        let live = st
            .members
            .get(&id)
            .map(|m| m.live.clone())
            .unwrap_or_default();
        let view = self.view(&record, &live, false);
        let self_view = self.view(&record, &live, true);
        let member = st.members.entry(id).or_insert_with(|| Member {
            record: record.clone(),
            live,
            view: view.clone(),
            sessions: Vec::new(),
        });
        member.record = record;
        member.view = view.clone();
        let to_peers = Frame::encode(&MapResponse {
            peers_changed: vec![view],
            user_profiles: vec![profile.clone()],
            control_time: Some(Utc::now()),
            ..MapResponse::default()
        });
        let to_self = Frame::encode(&MapResponse {
            node: Some(self_view),
            user_profiles: vec![profile],
            control_time: Some(Utc::now()),
            ..MapResponse::default()
        });
        broadcast(&mut st, Some(id), &to_peers);
        send_to(&mut st, id, &to_self);
    }

    /// A node is gone: every peer drops it, and its own sessions get a last
    /// message saying its key has expired before they end. Without that last
    /// message a client keeps its old netmap and retries forever instead of
    /// asking its user to log in again (Headscale issue 3410).
    pub fn remove(&self, node_id: i64) {
        let mut st = self.lock();
        let Some(mut member) = st.members.remove(&node_id) else {
            return;
        };
        let now = Utc::now();
        let mut record = member.record.clone();
        record.expiry = Some(now - chrono::Duration::seconds(1));
        let last = Frame::encode(&MapResponse {
            node: Some(node_view(&record, &member.live, &self.tailnet, now, true)),
            control_time: Some(now),
            ..MapResponse::default()
        });
        queue(&mut member, &last);
        let frame = Frame::encode(&MapResponse {
            peers_removed: vec![node_id],
            control_time: Some(Utc::now()),
            ..MapResponse::default()
        });
        broadcast(&mut st, None, &frame);
    }

    /// Applies what a node reported (endpoints, disco key, Hostinfo). Peers get
    /// a patch for path changes, the full node when its Hostinfo changed.
    /// Returns the new live state when anything changed.
    pub fn update_live(&self, node_id: i64, update: impl FnOnce(&mut Live)) -> Option<Live> {
        let mut st = self.lock();
        let member = st.members.get_mut(&node_id)?;
        let before = member.live.clone();
        update(&mut member.live);
        let after = member.live.clone();
        if after == before {
            return None;
        }
        member.view = node_view(
            &member.record,
            &member.live,
            &self.tailnet,
            Utc::now(),
            false,
        );
        let msg = if after.hostinfo != before.hostinfo {
            MapResponse {
                peers_changed: vec![member.view.clone()],
                ..MapResponse::default()
            }
        } else {
            let mut patch = PeerChange {
                node_id,
                ..PeerChange::default()
            };
            if after.endpoints != before.endpoints {
                patch.endpoints = after.endpoints.clone();
            }
            if after.disco_key != before.disco_key {
                patch.disco_key = Some(after.disco_key);
            }
            if after.home_derp() != before.home_derp() {
                patch.derp_region = after.home_derp();
            }
            if after.capver != before.capver {
                patch.cap = after.capver;
            }
            MapResponse {
                peers_changed_patch: vec![patch],
                ..MapResponse::default()
            }
        };
        let frame = Frame::encode(&MapResponse {
            control_time: Some(Utc::now()),
            ..msg
        });
        broadcast(&mut st, Some(node_id), &frame);
        Some(after)
    }

    /// Opens a map session for a node: marks it online (telling peers) and
    /// returns its full map plus the queue its deltas will arrive on.
    pub fn subscribe(self: &Arc<Self>, node_id: i64) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (self_view, peers, profiles) = {
            let mut st = self.lock();
            let member = st.members.get_mut(&node_id)?;
            let came_online = !member.live.online;
            member.live.online = true;
            member.live.last_seen = Some(Utc::now());
            member.view = node_view(
                &member.record,
                &member.live,
                &self.tailnet,
                Utc::now(),
                false,
            );
            member.sessions.push((session_id, tx));
            if came_online {
                let frame = online_patch(node_id, true);
                broadcast(&mut st, Some(node_id), &frame);
            }
            self.collect_full(&st, node_id)?
        };
        // Encoding the full map happens outside the lock: it is the one O(N) step.
        let first = Frame::encode(&self.full_map(self_view, peers, profiles));
        Some(Subscription {
            first,
            frames: rx,
            hub: self.clone(),
            node_id,
            session_id,
        })
    }

    /// A one-shot map (a non-streaming request): the same content as a session's first message.
    pub fn snapshot(&self, node_id: i64) -> Option<Arc<Frame>> {
        let (self_view, peers, profiles) = self.collect_full(&self.lock(), node_id)?;
        Some(Frame::encode(&self.full_map(self_view, peers, profiles)))
    }

    /// Everything a full map needs, cloned out of the locked state: the
    /// node's own view, every peer's cached view, and their owners' profiles.
    fn collect_full(
        &self,
        st: &State,
        node_id: i64,
    ) -> Option<(Node, Vec<Node>, Vec<UserProfile>)> {
        let member = st.members.get(&node_id)?;
        let self_view = node_view(
            &member.record,
            &member.live,
            &self.tailnet,
            Utc::now(),
            true,
        );
        let mut profiles: BTreeMap<i64, UserProfile> = BTreeMap::new();
        let mut peers = Vec::with_capacity(st.members.len().saturating_sub(1));
        for (id, m) in &st.members {
            profiles
                .entry(m.record.user.id)
                .or_insert_with(|| user_profile(&m.record.user));
            if *id != node_id {
                peers.push(m.view.clone());
            }
        }
        Some((self_view, peers, profiles.into_values().collect()))
    }

    fn full_map(
        &self,
        self_view: Node,
        peers: Vec<Node>,
        profiles: Vec<UserProfile>,
    ) -> MapResponse {
        let mut filters = BTreeMap::new();
        filters.insert("base".to_string(), Some(allow_all_filter()));
        MapResponse {
            node: Some(self_view),
            derp_map: Some(self.tailnet.derp_map.clone()),
            peers,
            dns_config: Some(self.tailnet.dns.clone()),
            domain: self.tailnet.domain.clone(),
            collect_services: Some(false),
            packet_filters: filters,
            user_profiles: profiles,
            control_time: Some(Utc::now()),
            debug: Some(MapDebug {
                disable_log_tail: true,
                ..MapDebug::default()
            }),
            ..MapResponse::default()
        }
    }

    fn unsubscribe(&self, node_id: i64, session_id: u64) {
        let mut st = self.lock();
        let Some(member) = st.members.get_mut(&node_id) else {
            return;
        };
        member.sessions.retain(|(id, _)| *id != session_id);
        if member.sessions.is_empty() && member.live.online {
            member.live.online = false;
            member.live.last_seen = Some(Utc::now());
            member.view = node_view(
                &member.record,
                &member.live,
                &self.tailnet,
                Utc::now(),
                false,
            );
            let frame = online_patch(node_id, false);
            broadcast(&mut st, Some(node_id), &frame);
        }
    }
}

fn online_patch(node_id: i64, online: bool) -> Arc<Frame> {
    let now = Utc::now();
    Frame::encode(&MapResponse {
        peers_changed_patch: vec![PeerChange {
            node_id,
            online: Some(online),
            last_seen: (!online).then_some(now),
            ..PeerChange::default()
        }],
        control_time: Some(now),
        ..MapResponse::default()
    })
}

/// Queues `frame` to every session except those of `except`. A session whose
/// queue is full is cut off rather than allowed to slow everyone down.
fn broadcast(st: &mut State, except: Option<i64>, frame: &Arc<Frame>) {
    for (id, member) in st.members.iter_mut() {
        if Some(*id) != except {
            queue(member, frame);
        }
    }
}

fn send_to(st: &mut State, node_id: i64, frame: &Arc<Frame>) {
    if let Some(member) = st.members.get_mut(&node_id) {
        queue(member, frame);
    }
}

fn queue(member: &mut Member, frame: &Arc<Frame>) {
    member
        .sessions
        .retain(|(session, tx)| match tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    node.id = member.record.id,
                    session,
                    "map session too slow; closing it"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::tailcfg::{DerpMap, DnsConfig};

    fn tailnet() -> Tailnet {
        Tailnet {
            base_domain: None,
            domain: "mesh".into(),
            derp_map: DerpMap::default(),
            dns: DnsConfig::default(),
        }
    }

    fn record(id: i64) -> store::Node {
        store::Node {
            id,
            machine_key: format!("mkey:{:0>64}", id),
            node_key: format!("nodekey:{:0>64}", id),
            disco_key: String::new(),
            hostname: format!("n{id}"),
            given_name: format!("n{id}"),
            user: store::User {
                id: 1,
                name: "vpn1".into(),
                display_name: String::new(),
                email: String::new(),
                profile_pic_url: String::new(),
                created_at: Utc::now(),
            },
            ipv4: None,
            ipv6: None,
            tags: vec![],
            ephemeral: false,
            auth_key_id: None,
            register_method: store::RegisterMethod::AuthKey,
            expiry: None,
            last_seen: None,
            created_at: Utc::now(),
        }
    }

    fn decode(f: &Frame) -> MapResponse {
        serde_json::from_slice(f.json()).unwrap()
    }

    #[tokio::test]
    async fn sessions_get_a_full_map_then_only_deltas() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut s1 = hub.subscribe(1).unwrap();
        let first = decode(&s1.first);
        assert_eq!(first.node.as_ref().unwrap().id, 1);
        assert!(
            first.peers.is_empty()
                && first.derp_map.is_some()
                && first.packet_filters.contains_key("base")
        );
        assert!(hub.is_online(1));

        hub.upsert(record(2));
        let joined = decode(&s1.frames.recv().await.unwrap());
        assert_eq!(joined.peers_changed.len(), 1);
        assert!(
            joined.peers.is_empty() && joined.node.is_none() && joined.derp_map.is_none(),
            "a delta, not a full map"
        );

        let s2 = hub.subscribe(2).unwrap();
        assert_eq!(decode(&s2.first).peers.len(), 1);
        let online = decode(&s1.frames.recv().await.unwrap());
        assert_eq!(online.peers_changed_patch[0].online, Some(true));

        hub.update_live(2, |l| l.endpoints = vec!["10.0.0.2:41641".into()]);
        let patch = decode(&s1.frames.recv().await.unwrap());
        assert_eq!(patch.peers_changed_patch[0].endpoints, ["10.0.0.2:41641"]);

        drop(s2);
        let offline = decode(&s1.frames.recv().await.unwrap());
        assert_eq!(offline.peers_changed_patch[0].online, Some(false));
        assert!(!hub.is_online(2));

        hub.remove(2);
        assert_eq!(decode(&s1.frames.recv().await.unwrap()).peers_removed, [2]);
        assert!(s1.frames.try_recv().is_err(), "nothing else queued");
    }

    #[tokio::test]
    async fn a_removed_node_is_told_its_key_expired_then_its_session_ends() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut s = hub.subscribe(1).unwrap();
        hub.remove(1);
        let last = decode(&s.frames.recv().await.unwrap());
        let me = last.node.unwrap();
        assert!(me.expired && !me.machine_authorized);
        assert!(
            s.frames.recv().await.is_none(),
            "the session ends after that"
        );
    }

    #[tokio::test]
    async fn a_session_that_stops_reading_is_cut_off_not_waited_for() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut slow = hub.subscribe(1).unwrap();
        for i in 0..(SESSION_QUEUE as i64 + 10) {
            hub.upsert(record(100 + i));
        }
        let mut received = 0;
        while slow.frames.recv().await.is_some() {
            received += 1;
        }
        assert_eq!(
            received, SESSION_QUEUE,
            "the queue was drained, then closed"
        );
    }
}
