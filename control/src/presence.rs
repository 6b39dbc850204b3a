//! Which nodes hold a live map session right now. In memory by design:
//! "online" is a property of this process's connections, not of the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Default, Clone)]
pub struct Presence {
    sessions: Arc<Mutex<HashMap<i64, usize>>>,
}

/// Held by a map session; the node counts as online while any guard for it lives.
pub struct SessionGuard {
    node_id: i64,
    sessions: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Presence {
    pub fn connect(&self, node_id: i64) -> SessionGuard {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        *s.entry(node_id).or_insert(0) += 1;
        SessionGuard {
            node_id,
            sessions: self.sessions.clone(),
        }
    }

    pub fn is_online(&self, node_id: i64) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&node_id)
    }

    pub fn online_nodes(&self) -> Vec<i64> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = s.get_mut(&self.node_id) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.node_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_any_session_lives() {
        let p = Presence::default();
        assert!(!p.is_online(1));
        let a = p.connect(1);
        let b = p.connect(1);
        assert!(p.is_online(1));
        drop(a);
        assert!(p.is_online(1));
        drop(b);
        assert!(!p.is_online(1));
        assert!(p.online_nodes().is_empty());
    }
}
