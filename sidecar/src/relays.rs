//! Our DERP sessions: one to our home region (where peers find us), and a
//! bounded set to the home regions of peers that live elsewhere, opened on
//! first use. Which session carries a peer's packets is decided here; the
//! sessions themselves (`derp::client`) do the I/O.

use std::collections::HashMap;

use meshscale_controlclient::NodeKey;
use meshscale_wire::tailcfg::{DerpMap, DerpRegionId};
use tokio::sync::mpsc;
use tracing::info;

use crate::derp::client::DerpTls;
use crate::derp::{self, DerpEvent, DerpHandle, DerpTarget};

/// Relay sessions to peers' home regions beyond our own, at most.
const MAX_EXTRA: usize = 8;

pub struct Relays {
    node: NodeKey,
    tls: DerpTls,
    events: mpsc::Sender<DerpEvent>,
    home: Option<DerpHandle>,
    /// Whether the home session is connected.
    home_up: bool,
    extra: HashMap<DerpRegionId, DerpHandle>,
}

impl Relays {
    /// Sessions authenticate as `node` and report on `events`.
    pub fn new(node: NodeKey, tls: DerpTls, events: mpsc::Sender<DerpEvent>) -> Self {
        Self {
            node,
            tls,
            events,
            home: None,
            home_up: false,
            extra: HashMap::new(),
        }
    }

    fn spawn(&self, target: DerpTarget) -> DerpHandle {
        derp::spawn(
            target,
            self.node.clone(),
            self.tls.clone(),
            self.events.clone(),
        )
    }

    /// A new DERP map (`changed`: different from the last one): regions may
    /// have moved, so the extra sessions reconnect lazily; the home session
    /// is replaced when the home region is another. Returns true when it
    /// was (peers must be told where to find us).
    pub fn set_map(&mut self, map: &DerpMap, changed: bool) -> bool {
        if changed {
            self.extra.clear();
        }
        let home = DerpTarget::home(map);
        if home.as_ref() == self.home.as_ref().map(|d| &d.target) {
            return false;
        }
        self.home = home.map(|t| {
            info!(region = t.region_id, code = %t.region_code, "home DERP");
            self.spawn(t)
        });
        self.home_up = false;
        true
    }

    /// Logged out: every session closes.
    pub fn clear(&mut self) {
        self.home = None;
        self.extra.clear();
        self.home_up = false;
    }

    /// Our home region's id; 0 without one.
    pub fn home_region(&self) -> DerpRegionId {
        self.home.as_ref().map_or(0, |d| d.target.region_id)
    }

    /// Our home region's code, while its session is connected.
    pub fn home_code_if_up(&self) -> Option<&str> {
        self.home
            .as_ref()
            .filter(|_| self.home_up)
            .map(|d| d.target.region_code.as_str())
    }

    pub fn home_code(&self) -> Option<&str> {
        self.home.as_ref().map(|d| d.target.region_code.as_str())
    }

    pub fn on_event(&mut self, ev: &DerpEvent) {
        match ev {
            DerpEvent::Connected(r) if *r == self.home_region() => self.home_up = true,
            DerpEvent::Disconnected(r) if *r == self.home_region() => self.home_up = false,
            _ => {}
        }
    }

    /// The session to reach a peer whose home is `region`: that region,
    /// since that is where the relay can deliver to it (opened now if
    /// needed and `map` has it, up to [`MAX_EXTRA`]); ours when the peer
    /// has none, its region is unknown, or too many are open.
    pub fn for_region(
        &mut self,
        region: DerpRegionId,
        map: Option<&DerpMap>,
    ) -> Option<&DerpHandle> {
        if region == 0 || region == self.home_region() {
            return self.home.as_ref();
        }
        if !self.extra.contains_key(&region) {
            match map.and_then(|m| DerpTarget::from_map(m, region)) {
                Some(t) if self.extra.len() < MAX_EXTRA => {
                    info!(region, code = %t.region_code, "DERP session to a peer's home region");
                    let h = self.spawn(t);
                    self.extra.insert(region, h);
                }
                _ => return self.home.as_ref(),
            }
        }
        self.extra.get(&region)
    }

    /// The code of the region a peer homed in `region` is reached through,
    /// without opening anything (for `ping` output).
    pub fn code_for(&self, region: DerpRegionId) -> Option<&str> {
        self.extra
            .get(&region)
            .or(self.home.as_ref())
            .map(|d| d.target.region_code.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_controlclient::dial::TlsConfigs;
    use meshscale_wire::tailcfg::{DerpNode, DerpRegion};

    /// Regions `ids`, each a relay on a closed local port: sessions are
    /// opened (and fail to connect, quietly retrying), nothing leaves the
    /// machine.
    fn map(ids: impl IntoIterator<Item = DerpRegionId>) -> DerpMap {
        DerpMap {
            regions: Some(
                ids.into_iter()
                    .map(|id| {
                        (
                            id,
                            DerpRegion {
                                region_id: id,
                                region_code: format!("r{id}"),
                                nodes: vec![DerpNode {
                                    host_name: "127.0.0.1".into(),
                                    ipv4: "127.0.0.1".into(),
                                    derp_port: 9,
                                    ..DerpNode::default()
                                }],
                                ..DerpRegion::default()
                            },
                        )
                    })
                    .collect(),
            ),
            ..DerpMap::default()
        }
    }

    fn relays() -> (Relays, mpsc::Receiver<DerpEvent>) {
        let tls = TlsConfigs::new(None).expect("TLS");
        let (tx, rx) = mpsc::channel(64);
        let node = NodeKey::generate().expect("key");
        let r = Relays::new(
            node,
            DerpTls {
                verified: tls.strict,
                insecure: tls.log_only,
            },
            tx,
        );
        (r, rx)
    }

    #[tokio::test]
    async fn peers_are_reached_through_their_home_region_within_bounds() {
        let (mut r, _events) = relays();
        assert!(r.for_region(0, None).is_none(), "no map, no relay");
        let m = map(1..=12);
        assert!(r.set_map(&m, true), "home chosen");
        assert!(!r.set_map(&m, false), "same home");
        assert_eq!(r.home_region(), 1);
        let region_of = |h: Option<&DerpHandle>| h.map(|d| d.target.region_id);
        assert_eq!(region_of(r.for_region(0, Some(&m))), Some(1));
        assert_eq!(region_of(r.for_region(1, Some(&m))), Some(1));
        assert_eq!(region_of(r.for_region(5, Some(&m))), Some(5));
        assert_eq!(r.code_for(5), Some("r5"));
        assert_eq!(r.code_for(6), Some("r1"), "not opened: ours");
        // Unknown to the map: ours.
        assert_eq!(region_of(r.for_region(99, Some(&m))), Some(1));
        // At most MAX_EXTRA extra sessions; past that, ours.
        for id in 2..=12 {
            let got = region_of(r.for_region(id, Some(&m)));
            let want = if id <= 1 + MAX_EXTRA as i64 { id } else { 1 };
            assert_eq!(got, Some(want), "region {id}");
        }
        assert_eq!(r.extra.len(), MAX_EXTRA);
        // A changed map drops them (reopened on use).
        assert!(!r.set_map(&m, true));
        assert!(r.extra.is_empty());
        r.for_region(5, Some(&m));
        r.clear();
        assert_eq!(r.home_region(), 0);
        assert!(r.extra.is_empty() && r.home.is_none());
    }

    #[tokio::test]
    async fn only_the_home_session_makes_us_connected() {
        let (mut r, _events) = relays();
        r.set_map(&map([3, 4]), true);
        assert_eq!(r.home_code(), Some("r3"));
        assert_eq!(r.home_code_if_up(), None);
        r.on_event(&DerpEvent::Connected(4));
        assert_eq!(r.home_code_if_up(), None, "another region's session");
        r.on_event(&DerpEvent::Connected(3));
        assert_eq!(r.home_code_if_up(), Some("r3"));
        r.on_event(&DerpEvent::Disconnected(3));
        assert_eq!(r.home_code_if_up(), None);
        // A new home starts disconnected.
        r.on_event(&DerpEvent::Connected(3));
        assert!(r.set_map(&map([2, 3]), true));
        assert_eq!(r.home_code_if_up(), None);
    }
}
