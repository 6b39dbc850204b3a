//! The tailnet in memory and the fan-out of changes to live map sessions.
//!
//! Changes are applied to the in-memory tailnet at once, but what peers are
//! told is batched: changes that arrive within a short window (growing with
//! the number of sessions, see [`batch_window`]) are merged per node into ONE
//! delta message, encoded once, and the same bytes are queued to every
//! session. A join storm thus costs each session one frame per window instead
//! of several frames per joining node, and a change costs O(changed nodes)
//! per receiver, never a full map rebuild per node.
//!
//! A session's first message is a full map, spliced together from each
//! peer's cached JSON (see [`Member::view_json`]), so building it is a copy,
//! not a re-serialization of every peer.
//!
//! All mutations happen under one lock, in order, and a new session's
//! snapshot is taken under that same lock. Every change carries a sequence
//! number; a session remembers the sequence its snapshot covered, so it is
//! sent every change made after it (never misses one). A batch it receives
//! may repeat changes its snapshot already had; clients apply peer deltas
//! idempotently. A node never receives a full entry about itself as a peer.
//!
//! Under an access policy each node sees only the peers the policy makes
//! visible and gets its own packet filter (see [`super::access`]). The
//! policy is compiled again, once per batch, when the policy or anything it
//! depends on (a node joining or leaving, tags, owner, addresses) changed;
//! nodes whose share changed get a delta (new filter, `PeersChanged` for
//! peers that became visible, `PeersRemoved` for the others), encoded once
//! per distinct change. Peer deltas are encoded once per distinct visible
//! set, so nodes that see the same peers share frames.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use meshscale_policy::Policy;
use meshscale_wire::tailcfg::{
    CapMap, Debug as MapDebug, FilterRule, MapResponse, Node, PeerChange, SshPolicy, UserProfile,
};
use tokio::sync::mpsc;

use super::access::{self, ALLOW_ALL, Access, NOT_YET_COMPILED, Visible};
use super::frame::Frame;
use super::view::{Live, Tailnet, node_view, user_profile};
use crate::store;

/// Messages a session may lag behind before it is cut off; the client
/// reconnects and starts again from a full map.
const SESSION_QUEUE: usize = 512;

/// Shortest and longest time changes wait to be merged into one delta.
const MIN_WINDOW: Duration = Duration::from_millis(10);
const MAX_WINDOW: Duration = Duration::from_millis(100);
/// What queueing one frame to one session and writing it out costs, roughly:
/// the window grows with the sessions so that fan-out stays a bounded share
/// of the server's time however many nodes are connected.
const PER_SESSION: Duration = Duration::from_micros(10);

/// The longest window during a burst of changes (a join storm). Every
/// batch costs each live session a frame (queue, HTTP/2, Noise, a write), so
/// in a storm the number of batches, not their size, is what the server pays
/// for; a quarter of a second keeps one change's propagation well under the
/// 1 s a node may wait for it.
const MAX_BURST_WINDOW: Duration = Duration::from_millis(250);
/// A change arriving this soon after the previous batch went out means
/// changes are coming in a burst.
const BURST_GAP: Duration = Duration::from_millis(200);

/// How long changes are held back to be merged, for `sessions` live sessions.
fn batch_window(sessions: usize) -> Duration {
    PER_SESSION
        .saturating_mul(u32::try_from(sessions).unwrap_or(u32::MAX))
        .clamp(MIN_WINDOW, MAX_WINDOW)
}

/// The window for the next batch: the base window for a lone change; in a
/// burst (the previous batch left less than [`BURST_GAP`] ago) twice the
/// previous window, up to [`MAX_BURST_WINDOW`].
fn next_window(base: Duration, previous: Duration, since_last_flush: Option<Duration>) -> Duration {
    match since_last_flush {
        Some(gap) if gap < BURST_GAP => previous
            .saturating_mul(2)
            .clamp(base, MAX_BURST_WINDOW.max(base)),
        _ => base,
    }
}

struct Session {
    id: u64,
    tx: mpsc::Sender<Arc<Frame>>,
    /// The last change its full map already contained.
    since: u64,
}

struct Member {
    record: store::Node,
    live: Live,
    /// The node as peers see it, rebuilt only when the node changes.
    view: Node,
    /// `view` serialized, spliced as is into every full map.
    view_json: Bytes,
    sessions: Vec<Session>,
    /// Its share of the policy, as its sessions were last told.
    access: Arc<Access>,
}

impl Member {
    fn new(record: store::Node, live: Live, view: Node, access: Arc<Access>) -> Member {
        let view_json = encode_json(&view);
        Member {
            record,
            live,
            view,
            view_json,
            sessions: Vec::new(),
            access,
        }
    }

    fn set_view(&mut self, view: Node) {
        self.view_json = encode_json(&view);
        self.view = view;
    }
}

/// What peers have not yet been told about one node, merged.
#[derive(Debug)]
enum Change {
    /// Send the node's whole current view (it was added or its record
    /// changed), then the patches that came after it: the view already
    /// holds their values, but clients watch for e.g. `Online` patches.
    /// Patches older than the last full change are dropped, never sent
    /// after it (clients apply patches after full entries).
    Full(Option<PeerChange>),
    /// Send these fields only.
    Patch(PeerChange),
    Removed,
}

#[derive(Debug)]
struct Pending {
    change: Change,
    /// Sequence number of the latest change merged into it.
    seq: u64,
}

#[derive(Default)]
struct State {
    members: BTreeMap<i64, Member>,
    pending: BTreeMap<i64, Pending>,
    /// Sequence number of the last change applied.
    seq: u64,
    flush_scheduled: bool,
    sessions: usize,
    /// When the last batch went out, and the window it waited.
    last_flush: Option<std::time::Instant>,
    window: Duration,
    /// `None`: no policy, everyone reaches and sees everyone.
    policy: Option<Arc<Policy>>,
    /// The policy or its inputs changed since the last compilation.
    policy_dirty: bool,
    /// Bumped by every such change: a compilation that ran outside the lock
    /// knows whether its inputs are still current.
    policy_gen: u64,
    /// A compilation is running outside the lock.
    compiling: bool,
    /// The hub's tailnet settings, for a node's view of itself.
    tailnet: Option<Arc<Tailnet>>,
}

impl State {
    fn policy_inputs_changed(&mut self) {
        self.policy_dirty = true;
        self.policy_gen += 1;
    }

    /// What a node joining now gets until the next compilation.
    fn initial_access(&self) -> Arc<Access> {
        if self.policy.is_some() {
            NOT_YET_COMPILED.clone()
        } else {
            ALLOW_ALL.clone()
        }
    }
}

pub struct Hub {
    tailnet: Tailnet,
    state: Arc<Mutex<State>>,
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(tailnet: Tailnet) -> Hub {
        let state = State {
            tailnet: Some(Arc::new(tailnet.clone())),
            ..State::default()
        };
        Hub {
            tailnet,
            state: Arc::new(Mutex::new(state)),
            next_session: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn view(&self, record: &store::Node, live: &Live, is_self: bool) -> Node {
        node_view(record, live, &self.tailnet, Utc::now(), is_self)
    }

    /// Fills the hub from the store at start-up (no sessions exist yet).
    pub fn load(&self, nodes: Vec<(store::Node, Live)>) {
        let mut st = self.lock();
        for (record, live) in nodes {
            let view = self.view(&record, &live, false);
            let access = st.initial_access();
            st.members
                .insert(record.id, Member::new(record, live, view, access));
        }
        if st.policy.is_some() {
            // No sessions yet: nothing to tell anyone.
            apply_policy(&mut st);
        }
    }

    /// Puts `policy` in force (`None`: no policy, allow-all) and tells every
    /// live session what changed for it, now: a policy change is rare and
    /// must not wait behind a batch window.
    pub fn set_policy(&self, policy: Option<Arc<Policy>>) {
        let mut st = self.lock();
        st.policy = policy;
        st.policy_gen += 1;
        apply_policy(&mut st);
    }

    pub fn has_policy(&self) -> bool {
        self.lock().policy.is_some()
    }

    /// The policy in force and the tailnet it is compiled against (with
    /// `extra` users added, e.g. the owner of a node not yet stored).
    pub fn policy_view(
        &self,
        extra: &[&store::User],
    ) -> (Option<Arc<Policy>>, meshscale_policy::Tailnet) {
        let st = self.lock();
        let tailnet = access::policy_tailnet(st.members.values().map(|m| &m.record), extra);
        (st.policy.clone(), tailnet)
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

    /// Records a change for peers and makes sure a flush is coming.
    fn note(&self, st: &mut State, node_id: i64, change: Change) {
        st.seq += 1;
        let seq = st.seq;
        match st.pending.get_mut(&node_id) {
            Some(p) => {
                p.seq = seq;
                merge(&mut p.change, change);
            }
            None => {
                st.pending.insert(node_id, Pending { change, seq });
            }
        }
        self.schedule(st);
    }

    /// Makes sure a flush is coming.
    fn schedule(&self, st: &mut State) {
        schedule(&self.state, st);
    }

    /// Sends what is pending now instead of at the end of the window
    /// (compiling the policy first, under the lock, if it is due).
    pub fn flush(&self) {
        flush(&mut self.lock(), true);
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
        let mut self_view = self.view(&record, &live, true);
        let policy_mode = st.policy.is_some();
        let inputs_changed = st.members.get(&id).is_none_or(|m| {
            let r = &m.record;
            r.tags != record.tags
                || r.user != record.user
                || r.ipv4 != record.ipv4
                || r.ipv6 != record.ipv6
                || r.hostname != record.hostname
        });
        if policy_mode && inputs_changed {
            st.policy_inputs_changed();
        }
        let access = st.initial_access();
        match st.members.get_mut(&id) {
            Some(member) => {
                member.record = record;
                member.set_view(view);
                add_caps(&mut self_view, &member.access.cap_map);
            }
            None => {
                st.members
                    .insert(id, Member::new(record, live, view, access));
            }
        }
        let to_self = Frame::encode(&MapResponse {
            node: Some(self_view),
            user_profiles: vec![profile],
            control_time: Some(Utc::now()),
            ..MapResponse::default()
        });
        send_to(&mut st, id, &to_self);
        self.note(&mut st, id, Change::Full(None));
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
        if st.policy.is_some() {
            st.policy_inputs_changed();
        }
        st.sessions = st.sessions.saturating_sub(member.sessions.len());
        let now = Utc::now();
        let mut record = member.record.clone();
        record.expiry = Some(now - chrono::Duration::seconds(1));
        let last = Frame::encode(&MapResponse {
            node: Some(node_view(&record, &member.live, &self.tailnet, now, true)),
            control_time: Some(now),
            ..MapResponse::default()
        });
        queue(&mut member, &last);
        self.note(&mut st, node_id, Change::Removed);
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
        let view = node_view(
            &member.record,
            &member.live,
            &self.tailnet,
            Utc::now(),
            false,
        );
        member.set_view(view);
        // A patch cannot say "no endpoints any more" (empty means unchanged).
        let change = if after.hostinfo != before.hostinfo
            || (after.endpoints.is_empty() && !before.endpoints.is_empty())
        {
            Change::Full(None)
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
            Change::Patch(patch)
        };
        self.note(&mut st, node_id, change);
        Some(after)
    }

    /// Opens a map session for a node: marks it online (telling peers) and
    /// returns its full map plus the queue its deltas will arrive on.
    pub fn subscribe(self: &Arc<Self>, node_id: i64) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let full = {
            let mut st = self.lock();
            let member = st.members.get_mut(&node_id)?;
            let came_online = !member.live.online;
            member.live.online = true;
            member.live.last_seen = Some(Utc::now());
            let view = node_view(
                &member.record,
                &member.live,
                &self.tailnet,
                Utc::now(),
                false,
            );
            member.set_view(view);
            if came_online {
                self.note(&mut st, node_id, Change::Patch(online_patch(node_id, true)));
            }
            let since = st.seq;
            let member = st.members.get_mut(&node_id)?;
            member.sessions.push(Session {
                id: session_id,
                tx,
                since,
            });
            st.sessions += 1;
            self.collect_full(&st, node_id)?
        };
        // Assembling and compressing the full map happens outside the lock:
        // it is the one O(N) step.
        let first = self.full_map(full);
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
        let full = self.collect_full(&self.lock(), node_id)?;
        Some(self.full_map(full))
    }

    /// Everything a full map needs, taken out of the locked state: the
    /// node's own view, every peer's cached JSON (cheap reference-counted
    /// copies), and their owners' profiles.
    fn collect_full(&self, st: &State, node_id: i64) -> Option<FullMap> {
        let member = st.members.get(&node_id)?;
        let mut self_view = node_view(
            &member.record,
            &member.live,
            &self.tailnet,
            Utc::now(),
            true,
        );
        let access = member.access.clone();
        add_caps(&mut self_view, &access.cap_map);
        let mut profiles: BTreeMap<i64, UserProfile> = BTreeMap::new();
        profiles.insert(member.record.user.id, user_profile(&member.record.user));
        let mut peers = Vec::with_capacity(match &access.visible {
            Visible::All => st.members.len().saturating_sub(1),
            Visible::Ids(set) => set.ids.len(),
        });
        let mut add = |id: i64, m: &Member| {
            if id != node_id {
                profiles
                    .entry(m.record.user.id)
                    .or_insert_with(|| user_profile(&m.record.user));
                peers.push(m.view_json.clone());
            }
        };
        match &access.visible {
            Visible::All => st.members.iter().for_each(|(id, m)| add(*id, m)),
            Visible::Ids(set) => {
                for id in &set.ids {
                    if let Some(m) = st.members.get(id) {
                        add(*id, m);
                    }
                }
            }
        }
        Some(FullMap {
            self_view,
            peers,
            profiles: profiles.into_values().collect(),
            filter: access.filter.clone(),
            ssh: access.ssh.clone(),
        })
    }

    fn full_map(&self, full: FullMap) -> Arc<Frame> {
        let mut filters = BTreeMap::new();
        filters.insert("base".to_string(), Some(full.filter));
        let rest = MapResponse {
            node: Some(full.self_view),
            derp_map: Some(self.tailnet.derp_map.clone()),
            dns_config: Some(self.tailnet.dns.clone()),
            domain: self.tailnet.domain.clone(),
            collect_services: Some(false),
            packet_filters: filters,
            ssh_policy: full.ssh,
            user_profiles: full.profiles,
            control_time: Some(Utc::now()),
            debug: Some(MapDebug {
                disable_log_tail: true,
                ..MapDebug::default()
            }),
            ..MapResponse::default()
        };
        Arc::new(Frame::from_json(splice_peers(
            encode_json(&rest),
            &full.peers,
        )))
    }

    fn unsubscribe(&self, node_id: i64, session_id: u64) {
        let mut st = self.lock();
        let Some(member) = st.members.get_mut(&node_id) else {
            return;
        };
        let before = member.sessions.len();
        member.sessions.retain(|s| s.id != session_id);
        let removed = before - member.sessions.len();
        let went_offline = member.sessions.is_empty() && member.live.online;
        if went_offline {
            member.live.online = false;
            member.live.last_seen = Some(Utc::now());
            let view = node_view(
                &member.record,
                &member.live,
                &self.tailnet,
                Utc::now(),
                false,
            );
            member.set_view(view);
        }
        st.sessions = st.sessions.saturating_sub(removed);
        if went_offline {
            self.note(
                &mut st,
                node_id,
                Change::Patch(online_patch(node_id, false)),
            );
        }
    }
}

struct FullMap {
    self_view: Node,
    peers: Vec<Bytes>,
    profiles: Vec<UserProfile>,
    filter: Vec<FilterRule>,
    ssh: Option<SshPolicy>,
}

/// The capabilities `nodeAttrs` grant, added to a node's view of itself.
fn add_caps(self_view: &mut Node, caps: &CapMap) {
    for (cap, values) in caps {
        self_view.cap_map.insert(cap.clone(), values.clone());
    }
}

fn encode_json<T: serde::Serialize>(v: &T) -> Bytes {
    // Serializing our own types cannot fail (no maps with non-string keys, no fallible Serialize impls).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Adds `"Peers":[...]` to an encoded `MapResponse` that has none (an empty
/// `peers` is not serialized), from each peer's encoded view.
fn splice_peers(rest: Bytes, peers: &[Bytes]) -> Vec<u8> {
    let body = rest.strip_suffix(b"}").unwrap_or(&rest);
    let size = body.len() + peers.iter().map(|p| p.len() + 1).sum::<usize>() + 16;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(body);
    if body.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(br#""Peers":["#);
    for (i, p) in peers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"]}");
    out
}

fn online_patch(node_id: i64, online: bool) -> PeerChange {
    PeerChange {
        node_id,
        online: Some(online),
        last_seen: (!online).then(Utc::now),
        ..PeerChange::default()
    }
}

/// Folds a newer change into what is pending for the same node.
fn merge(old: &mut Change, new: Change) {
    match (&mut *old, new) {
        (Change::Full(Some(p)), Change::Patch(n)) | (Change::Patch(p), Change::Patch(n)) => {
            merge_patch(p, n)
        }
        (Change::Full(p @ None), Change::Patch(n)) => *p = Some(n),
        (_, new) => *old = new,
    }
}

/// Later values win; fields a patch leaves unset keep the earlier value.
fn merge_patch(p: &mut PeerChange, n: PeerChange) {
    if !n.endpoints.is_empty() {
        p.endpoints = n.endpoints;
    }
    if n.disco_key.is_some() {
        p.disco_key = n.disco_key;
    }
    if n.derp_region != 0 {
        p.derp_region = n.derp_region;
    }
    if n.cap != 0 {
        p.cap = n.cap;
    }
    if n.online.is_some() {
        p.online = n.online;
        p.last_seen = n.last_seen;
    }
}

/// One entry of a batch.
struct Entry {
    node_id: i64,
    seq: u64,
    change: Change,
}

/// Encodes the pending changes once and queues the same frame to every
/// session that needs it. Sessions opened after the last change in the batch
/// already have it all in their full map. A session whose own node is in the
/// batch gets a copy without that node (a node is not its own peer) and
/// without what its full map already had; in a join storm these are the
/// sessions opened during the window.
/// Makes sure a flush is coming: at the end of the batch window, the policy
/// is compiled if it is due (outside the lock: at thousands of nodes a
/// compilation takes a while, and sessions keep opening and reporting
/// meanwhile), then the batch goes out.
fn schedule(state: &Arc<Mutex<State>>, st: &mut State) {
    if st.flush_scheduled {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            st.flush_scheduled = true;
            let state = state.clone();
            let window = next_window(
                batch_window(st.sessions),
                st.window,
                st.last_flush.map(|t| t.elapsed()),
            );
            st.window = window;
            rt.spawn(async move {
                tokio::time::sleep(window).await;
                compile_outside_lock(&state).await;
                let mut st = lock(&state);
                flush(&mut st, false);
                // Inputs changed during the compilation: compile again.
                if st.policy_dirty {
                    schedule(&state, &mut st);
                }
            });
        }
        // No runtime (a plain thread): nothing can wait, send now.
        Err(_) => flush(st, true),
    }
}

/// Compiles the policy in force, if due, without holding the lock, and puts
/// the result in force. When nodes changed meanwhile the result is applied
/// all the same (it is closer than what is in force) and the policy stays
/// due; when the policy itself changed, the result is dropped.
async fn compile_outside_lock(state: &Arc<Mutex<State>>) {
    let (policy, tailnet, generation) = {
        let mut st = lock(state);
        let Some(policy) = st.policy.clone() else {
            return;
        };
        if !st.policy_dirty || st.compiling {
            return;
        }
        st.compiling = true;
        let tailnet = access::policy_tailnet(st.members.values().map(|m| &m.record), &[]);
        (policy, tailnet, st.policy_gen)
    };
    let started = std::time::Instant::now();
    let job = policy.clone();
    let fresh = tokio::task::spawn_blocking(move || access::compile(&job, &tailnet)).await;
    let compiled_in = started.elapsed();
    let mut st = lock(state);
    st.compiling = false;
    let Ok(fresh) = fresh else {
        tracing::error!("policy compilation failed; the previous one stays in force");
        return;
    };
    if !st.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, &policy)) {
        return;
    }
    apply_access(&mut st, fresh, compiled_in);
    st.policy_dirty = st.policy_gen != generation;
}

/// `compile_now`: compile a due policy here, under the lock (a flush that
/// must be complete: tests, no runtime). Otherwise only the policy-free
/// case, which costs nothing, is brought up to date here.
fn flush(st: &mut State, compile_now: bool) {
    st.flush_scheduled = false;
    st.last_flush = Some(std::time::Instant::now());
    if st.policy_dirty && (compile_now || st.policy.is_none()) {
        apply_policy(st);
    }
    if st.pending.is_empty() {
        return;
    }
    let mut entries: Vec<Entry> = std::mem::take(&mut st.pending)
        .into_iter()
        .map(|(node_id, p)| Entry {
            node_id,
            seq: p.seq,
            change: p.change,
        })
        .collect();
    entries.sort_by_key(|e| e.seq);
    let newest = entries.last().map_or(0, |e| e.seq);
    let changed: BTreeSet<i64> = entries.iter().map(|e| e.node_id).collect();
    // One frame per visible set (one in all without a policy), made on
    // first need. A removal goes to everyone: removing a peer a client
    // never had is a no-op, and the node is gone from every visible set.
    let sees =
        |v: &Visible, e: &Entry| matches!(e.change, Change::Removed) || v.contains(e.node_id);
    let mut shared: HashMap<u64, Option<Arc<Frame>>> = HashMap::new();
    for m in st.members.values() {
        if m.sessions.iter().any(|s| s.since < newest) {
            let visible = &m.access.visible;
            shared
                .entry(visible.group_key())
                .or_insert_with(|| encode_entries(&st.members, &entries, |e| sees(visible, e)));
        }
    }
    let mut custom: HashMap<u64, Arc<Frame>> = HashMap::new();
    for id in &changed {
        let Some(m) = st.members.get(id) else {
            continue;
        };
        for s in m.sessions.iter().filter(|s| s.since < newest) {
            let only_new =
                |e: &Entry| e.node_id != *id && e.seq > s.since && sees(&m.access.visible, e);
            if let Some(f) = encode_entries(&st.members, &entries, only_new) {
                custom.insert(s.id, f);
            }
        }
    }
    for (id, member) in st.members.iter_mut() {
        let own = changed.contains(id);
        let node_id = *id;
        let group = member.access.visible.group_key();
        member.sessions.retain(|s| {
            if s.since >= newest {
                return true;
            }
            let frame = if own {
                custom.get(&s.id)
            } else {
                shared.get(&group).and_then(Option::as_ref)
            };
            match frame {
                Some(f) => try_queue(node_id, s, f),
                None => true,
            }
        });
    }
    // Sessions cut off above no longer count.
    st.sessions = st.members.values().map(|m| m.sessions.len()).sum();
}

/// Compiles the policy in force (or, without one, gives everyone the
/// allow-all share) and tells every node whose share changed: its new
/// filter, SSH policy or capabilities, the peers it may now see (in full)
/// and those it may no longer see. Nodes with the same change share one
/// encoded frame.
fn apply_policy(st: &mut State) {
    st.policy_dirty = false;
    let started = std::time::Instant::now();
    let fresh: HashMap<i64, Arc<Access>> = match &st.policy {
        None => st
            .members
            .keys()
            .map(|id| (*id, ALLOW_ALL.clone()))
            .collect(),
        Some(policy) => {
            let tailnet = access::policy_tailnet(st.members.values().map(|m| &m.record), &[]);
            access::compile(policy, &tailnet)
        }
    };
    apply_access(st, fresh, started.elapsed());
}

/// Puts each node's new share in force and tells those whose share changed.
fn apply_access(st: &mut State, mut fresh: HashMap<i64, Arc<Access>>, compiled_in: Duration) {
    let started = std::time::Instant::now();
    let all: Vec<i64> = st.members.keys().copied().collect();
    // (old set, new set) → (added, removed), computed once per pair.
    type Diff = Arc<(Vec<i64>, Vec<i64>)>;
    let mut diffs: HashMap<(u64, u64), Diff> = HashMap::new();
    let mut frames: HashMap<DeltaKey, Arc<Frame>> = HashMap::new();
    let mut updates: Vec<(i64, Arc<Access>, Option<Arc<Frame>>)> = Vec::new();
    let now = Utc::now();
    for (id, m) in &st.members {
        let new = fresh.remove(id).unwrap_or_else(|| NOT_YET_COMPILED.clone());
        let old = &m.access;
        if Arc::ptr_eq(old, &new) {
            continue;
        }
        let filter_changed = old.filter != new.filter;
        let ssh_changed = old.ssh != new.ssh;
        let caps_changed = old.cap_map != new.cap_map;
        let pair = (old.visible.group_key(), new.visible.group_key());
        let diff = diffs
            .entry(pair)
            .or_insert_with(|| Arc::new(access::visible_diff(&old.visible, &new.visible, &all)))
            .clone();
        let (added, removed) = (&diff.0, &diff.1);
        if !(filter_changed || ssh_changed || caps_changed)
            && added.iter().all(|p| p == id)
            && removed.iter().all(|p| p == id)
        {
            updates.push((*id, new, None));
            continue;
        }
        let own = caps_changed || added.contains(id) || removed.contains(id);
        let key = DeltaKey {
            filter: filter_changed.then(|| fingerprint(&new.filter)),
            ssh: ssh_changed.then(|| fingerprint(&new.ssh)),
            pair,
            node: own.then_some(*id),
        };
        let frame = frames
            .entry(key)
            .or_insert_with(|| {
                let mut msg = MapResponse {
                    control_time: Some(now),
                    ..MapResponse::default()
                };
                if filter_changed {
                    msg.packet_filters
                        .insert("base".into(), Some(new.filter.clone()));
                }
                if ssh_changed {
                    // An empty policy replaces the old one; `None` would keep it.
                    msg.ssh_policy = Some(new.ssh.clone().unwrap_or_default());
                }
                if caps_changed && let Some(tailnet) = &st.tailnet {
                    let mut me = node_view(&m.record, &m.live, tailnet, now, true);
                    add_caps(&mut me, &new.cap_map);
                    msg.node = Some(me);
                }
                let mut profiles = BTreeMap::new();
                for p in added.iter().filter(|p| *p != id) {
                    if let Some(peer) = st.members.get(p) {
                        msg.peers_changed.push(peer.view.clone());
                        profiles
                            .entry(peer.record.user.id)
                            .or_insert_with(|| user_profile(&peer.record.user));
                    }
                }
                msg.user_profiles = profiles.into_values().collect();
                msg.peers_removed = removed.iter().filter(|p| *p != id).copied().collect();
                Frame::encode(&msg)
            })
            .clone();
        updates.push((*id, new, Some(frame)));
    }
    let changed = updates.iter().filter(|u| u.2.is_some()).count();
    for (id, new, frame) in updates {
        if let Some(m) = st.members.get_mut(&id) {
            m.access = new;
            if let Some(f) = frame {
                queue(m, &f);
            }
        }
    }
    st.sessions = st.members.values().map(|m| m.sessions.len()).sum();
    tracing::debug!(
        nodes = all.len(),
        changed,
        frames = frames.len(),
        compile_ms = compiled_in.as_secs_f64() * 1e3,
        apply_ms = started.elapsed().as_secs_f64() * 1e3,
        "policy applied"
    );
}

/// Nodes whose policy deltas have equal keys receive identical frames.
#[derive(PartialEq, Eq, Hash)]
struct DeltaKey {
    filter: Option<u64>,
    ssh: Option<u64>,
    /// Old and new visible set.
    pair: (u64, u64),
    /// Set when the frame is about the node itself (its capabilities, or it
    /// is in its own visible-set diff) and so cannot be shared.
    node: Option<i64>,
}

fn fingerprint<T: serde::Serialize>(v: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    encode_json(v).hash(&mut h);
    h.finish()
}

/// The entries `keep` selects as one message, or `None` if it selects none.
fn encode_entries(
    members: &BTreeMap<i64, Member>,
    entries: &[Entry],
    keep: impl Fn(&Entry) -> bool,
) -> Option<Arc<Frame>> {
    let mut msg = MapResponse {
        control_time: Some(Utc::now()),
        ..MapResponse::default()
    };
    let mut profiles = BTreeMap::new();
    let mut any = false;
    for e in entries.iter().filter(|e| keep(e)) {
        any = true;
        match &e.change {
            Change::Removed => msg.peers_removed.push(e.node_id),
            Change::Patch(p) => msg.peers_changed_patch.push(p.clone()),
            Change::Full(patch) => {
                if let Some(m) = members.get(&e.node_id) {
                    msg.peers_changed.push(m.view.clone());
                    profiles
                        .entry(m.record.user.id)
                        .or_insert_with(|| user_profile(&m.record.user));
                }
                if let Some(p) = patch {
                    msg.peers_changed_patch.push(p.clone());
                }
            }
        }
    }
    msg.user_profiles = profiles.into_values().collect();
    any.then(|| Frame::encode(&msg))
}

fn send_to(st: &mut State, node_id: i64, frame: &Arc<Frame>) {
    if let Some(member) = st.members.get_mut(&node_id) {
        queue(member, frame);
    }
}

fn queue(member: &mut Member, frame: &Arc<Frame>) {
    let node_id = member.record.id;
    member.sessions.retain(|s| try_queue(node_id, s, frame));
}

/// Queues `frame` to one session; `false` when the session must go. A
/// session whose queue is full is cut off rather than allowed to slow
/// everyone down.
fn try_queue(node_id: i64, s: &Session, frame: &Arc<Frame>) -> bool {
    match s.tx.try_send(frame.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                node.id = node_id,
                session = s.id,
                "map session too slow; closing it"
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
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

    #[test]
    fn windows_grow_only_in_a_burst() {
        let base = Duration::from_millis(10);
        let lone = Some(Duration::from_secs(5));
        assert_eq!(next_window(base, Duration::from_millis(160), lone), base);
        assert_eq!(next_window(base, Duration::ZERO, None), base);
        let burst = Some(Duration::from_millis(5));
        let mut w = base;
        let mut seen = Vec::new();
        for _ in 0..8 {
            w = next_window(base, w, burst);
            seen.push(w.as_millis());
        }
        assert_eq!(seen, [20, 40, 80, 160, 250, 250, 250, 250]);
        // A base window above the burst cap is never shortened by a burst.
        let big = Duration::from_millis(400);
        assert_eq!(next_window(big, base, burst), big);
    }

    #[tokio::test]
    async fn changes_within_a_window_reach_a_session_as_one_frame() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut s1 = hub.subscribe(1).unwrap();
        for id in 2..=4 {
            hub.upsert(record(id));
        }
        hub.update_live(2, |l| l.endpoints = vec!["10.0.0.2:41641".into()]);
        hub.flush();
        let batch = decode(&s1.frames.try_recv().unwrap());
        let mut ids: Vec<i64> = batch.peers_changed.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3, 4], "one full entry per node, merged");
        let two = batch.peers_changed.iter().find(|n| n.id == 2).unwrap();
        assert_eq!(
            two.endpoints,
            ["10.0.0.2:41641"],
            "the entry is the node as it is now"
        );
        // The patch that came after node 2's full entry rides along, after it.
        assert_eq!(batch.peers_changed_patch.len(), 1);
        assert_eq!(batch.peers_changed_patch[0].node_id, 2);
        assert_eq!(batch.peers_changed_patch[0].endpoints, two.endpoints);
        assert!(s1.frames.try_recv().is_err(), "nothing else queued");
    }

    #[tokio::test]
    async fn a_session_opened_in_a_window_gets_later_changes_but_never_itself() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut s1 = hub.subscribe(1).unwrap();
        hub.flush();
        while s1.frames.try_recv().is_ok() {}
        // Node 2 joins and opens its session, then node 3 joins, in one window.
        hub.upsert(record(2));
        let mut s2 = hub.subscribe(2).unwrap();
        while s2.frames.try_recv().is_ok() {}
        assert_eq!(decode(&s2.first).peers.len(), 1);
        hub.upsert(record(3));
        hub.flush();
        let to_2 = decode(&s2.frames.try_recv().unwrap());
        let ids: Vec<i64> = to_2.peers_changed.iter().map(|n| n.id).collect();
        assert_eq!(ids, [3], "what came after its full map, and not itself");
        let to_1 = decode(&s1.frames.try_recv().unwrap());
        let mut ids: Vec<i64> = to_1.peers_changed.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3]);

        // A node's own endpoint change is not echoed back to it.
        hub.update_live(2, |l| l.endpoints = vec!["10.0.0.2:1".into()]);
        hub.flush();
        assert!(s2.frames.try_recv().is_err());
        let patch = decode(&s1.frames.try_recv().unwrap());
        assert_eq!(patch.peers_changed_patch[0].endpoints, ["10.0.0.2:1"]);
    }

    #[test]
    fn spliced_full_map_decodes_like_a_serialized_one() {
        let hub = Hub::new(tailnet());
        for id in 1..=3 {
            hub.upsert(record(id));
        }
        let map = decode(&hub.snapshot(2).unwrap());
        let ids: Vec<i64> = map.peers.iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(map.node.unwrap().id, 2);
        assert!(map.derp_map.is_some() && map.packet_filters.contains_key("base"));
        assert_eq!(
            splice_peers(Bytes::from_static(b"{}"), &[]),
            b"{\"Peers\":[]}"
        );
    }

    /// Node `id` of user `user` ("u<user>"), with addresses.
    fn owned(id: i64, user: i64) -> store::Node {
        let mut r = record(id);
        r.user.id = user;
        r.user.name = format!("u{user}");
        r.ipv4 = Some(std::net::Ipv4Addr::new(100, 64, 0, id as u8));
        r.ipv6 = Some(format!("fd7a:115c:a1e0::{id}").parse().unwrap());
        r
    }

    fn drain(s: &mut Subscription) {
        while s.frames.try_recv().is_ok() {}
    }

    fn peer_ids(m: &MapResponse) -> Vec<i64> {
        let mut ids: Vec<i64> = m.peers.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn under_a_policy_sessions_see_only_allowed_peers_and_share_frames() {
        let hub = Arc::new(Hub::new(tailnet()));
        // u1 owns nodes 1, 2 and 4; u2 owns node 3. u1's nodes reach each other.
        for (id, user) in [(1, 1), (2, 1), (3, 2), (4, 1)] {
            hub.upsert(owned(id, user));
        }
        let policy =
            Policy::parse(r#"{"acls": [{"action": "accept", "src": ["u1@"], "dst": ["u1@:*"]}]}"#)
                .unwrap();
        hub.set_policy(Some(Arc::new(policy)));
        let mut s: Vec<Subscription> = (1..=4).map(|id| hub.subscribe(id).unwrap()).collect();
        hub.flush();
        s.iter_mut().for_each(drain);
        let first: Vec<MapResponse> = s.iter().map(|x| decode(&x.first)).collect();
        assert_eq!(peer_ids(&first[0]), [2, 4]);
        assert_eq!(
            peer_ids(&first[2]),
            Vec::<i64>::new(),
            "u2's node sees nobody"
        );
        let filter3 = first[2].packet_filters["base"].as_ref().unwrap();
        assert!(filter3.is_empty(), "nothing may reach node 3: {filter3:?}");
        assert!(!first[0].packet_filters["base"].as_ref().unwrap().is_empty());

        // Node 2's change reaches 1 and 4 (one shared frame), never 3.
        hub.update_live(2, |l| l.endpoints = vec!["10.0.0.2:1".into()]);
        hub.flush();
        let to1 = s[0].frames.try_recv().unwrap();
        let to4 = s[3].frames.try_recv().unwrap();
        assert!(
            Arc::ptr_eq(&to1, &to4),
            "nodes that see the same peers share frames"
        );
        assert_eq!(decode(&to1).peers_changed_patch[0].node_id, 2);
        assert!(
            s[2].frames.try_recv().is_err(),
            "node 3 does not see node 2"
        );

        // A policy change reaches the sessions as deltas.
        let everyone =
            Policy::parse(r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#)
                .unwrap();
        hub.set_policy(Some(Arc::new(everyone)));
        let to3 = decode(&s[2].frames.try_recv().unwrap());
        let mut added: Vec<i64> = to3.peers_changed.iter().map(|n| n.id).collect();
        added.sort_unstable();
        assert_eq!(added, [1, 2, 4]);
        assert!(!to3.packet_filters["base"].as_ref().unwrap().is_empty());
        let to1 = decode(&s[0].frames.try_recv().unwrap());
        assert_eq!(
            to1.peers_changed.iter().map(|n| n.id).collect::<Vec<_>>(),
            [3]
        );

        // Back to no policy: nothing left to add; allow-all filters.
        hub.set_policy(None);
        let to3 = decode(&s[2].frames.try_recv().unwrap());
        assert!(to3.peers_changed.is_empty() && to3.peers_removed.is_empty());
        assert_eq!(
            to3.packet_filters["base"].as_ref().unwrap(),
            &super::super::view::allow_all_filter()
        );
    }

    #[tokio::test]
    async fn a_node_joining_under_a_policy_gets_its_share_in_the_next_batch() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.set_policy(Some(Arc::new(
            Policy::parse(r#"{"acls": [{"action": "accept", "src": ["u1@"], "dst": ["u1@:*"]}]}"#)
                .unwrap(),
        )));
        hub.upsert(owned(1, 1));
        hub.flush();
        let mut s1 = hub.subscribe(1).unwrap();
        hub.upsert(owned(2, 1));
        hub.upsert(owned(3, 2));
        let mut s2 = hub.subscribe(2).unwrap();
        assert!(
            decode(&s2.first).peers.is_empty(),
            "not compiled yet: sees nobody"
        );
        hub.flush();
        let mut seen_by_2 = Vec::new();
        while let Ok(f) = s2.frames.try_recv() {
            seen_by_2.extend(decode(&f).peers_changed.iter().map(|n| n.id));
        }
        assert!(
            seen_by_2.contains(&1) && !seen_by_2.contains(&3),
            "{seen_by_2:?}"
        );
        let mut seen_by_1 = Vec::new();
        while let Ok(f) = s1.frames.try_recv() {
            seen_by_1.extend(decode(&f).peers_changed.iter().map(|n| n.id));
        }
        assert!(
            seen_by_1.contains(&2) && !seen_by_1.contains(&3),
            "{seen_by_1:?}"
        );
    }

    /// The batch task compiles outside the lock; its result reaches sessions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_task_compiles_the_policy_and_sends_the_result() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.set_policy(Some(Arc::new(
            Policy::parse(r#"{"acls": [{"action": "accept", "src": ["u1@"], "dst": ["u1@:*"]}]}"#)
                .unwrap(),
        )));
        hub.upsert(owned(1, 1));
        let mut s1 = hub.subscribe(1).unwrap();
        hub.upsert(owned(2, 1));
        hub.upsert(owned(3, 2));
        let mut seen = Vec::new();
        while !seen.contains(&2) {
            let f = tokio::time::timeout(Duration::from_secs(10), s1.frames.recv())
                .await
                .expect("a frame within the deadline")
                .expect("session open");
            seen.extend(decode(&f).peers_changed.iter().map(|n| n.id));
        }
        assert!(!seen.contains(&3), "{seen:?}");
        assert!(!lock(&hub.state).policy_dirty, "compiled and applied");
    }

    #[tokio::test]
    async fn a_session_that_stops_reading_is_cut_off_not_waited_for() {
        let hub = Arc::new(Hub::new(tailnet()));
        hub.upsert(record(1));
        let mut slow = hub.subscribe(1).unwrap();
        for i in 0..(SESSION_QUEUE as i64 + 10) {
            hub.upsert(record(100 + i));
            hub.flush();
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
