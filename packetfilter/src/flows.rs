//! The flows we opened, so their replies pass (Tailscale keeps a 512-entry
//! LRU of UDP/SCTP tuples in `wgengine/filter`). Here: a fixed set-
//! associative table allocated once — each tuple hashes to a set of
//! `WAYS` slots and replaces the least recently used slot of its set — so
//! recording and looking up never allocate, and a peer cannot grow it.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;

/// Slots in total, as many as the official client's LRU.
pub const CAPACITY: usize = 512;
const WAYS: usize = 8;
const SETS: usize = CAPACITY / WAYS;

/// One direction of a flow: protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    tuple: Tuple,
    /// Last use; 0 = empty.
    used: u64,
}

#[derive(Debug)]
pub struct FlowTable {
    slots: Box<[Slot]>,
    clock: u64,
    /// Keyed per process so a peer cannot aim tuples at one set and evict
    /// the flows it shares.
    hasher: RandomState,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowTable {
    pub fn new() -> Self {
        let empty = Slot {
            tuple: Tuple {
                proto: 0,
                src: IpAddr::from([0u8; 4]),
                src_port: 0,
                dst: IpAddr::from([0u8; 4]),
                dst_port: 0,
            },
            used: 0,
        };
        FlowTable {
            slots: vec![empty; CAPACITY].into_boxed_slice(),
            clock: 0,
            hasher: RandomState::new(),
        }
    }

    fn set(&mut self, t: &Tuple) -> &mut [Slot] {
        let h = self.hasher.hash_one(t) as usize % SETS;
        &mut self.slots[h * WAYS..(h + 1) * WAYS]
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records `t` (or refreshes it), evicting its set's oldest entry.
    pub fn insert(&mut self, t: Tuple) {
        let now = self.tick();
        let set = self.set(&t);
        if let Some(s) = set.iter_mut().find(|s| s.used != 0 && s.tuple == t) {
            s.used = now;
            return;
        }
        if let Some(s) = set.iter_mut().min_by_key(|s| s.used) {
            *s = Slot {
                tuple: t,
                used: now,
            };
        }
    }

    /// Whether `t` is recorded; a hit counts as a use.
    pub fn contains(&mut self, t: &Tuple) -> bool {
        let now = self.tick();
        match self
            .set(t)
            .iter_mut()
            .find(|s| s.used != 0 && s.tuple == *t)
        {
            Some(s) => {
                s.used = now;
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used != 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> Tuple {
        Tuple {
            proto: 17,
            src: "100.64.0.2".parse().unwrap(),
            src_port: 53,
            dst: "100.64.0.1".parse().unwrap(),
            dst_port: port,
        }
    }

    #[test]
    fn records_and_finds() {
        let mut f = FlowTable::new();
        assert!(!f.contains(&t(1)));
        f.insert(t(1));
        f.insert(t(1));
        assert!(f.contains(&t(1)));
        assert!(!f.contains(&t(2)));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn bounded_and_keeps_recent() {
        let mut f = FlowTable::new();
        for p in 0..10_000 {
            f.insert(t(p));
        }
        assert!(f.len() <= CAPACITY);
        // The newest entry is always in its set.
        assert!(f.contains(&t(9_999)));
        // A flow in use survives a burst smaller than its set's share.
        f.insert(t(20_000));
        for p in 30_000..30_000 + (WAYS as u16 - 1) {
            f.insert(t(p));
            assert!(f.contains(&t(20_000)));
        }
    }
}
