//! Nodes waiting for an admin to approve an interactive login
//! (`meshscale nodes register --key <id> --user U`). In memory with a TTL,
//! as Headscale's registration cache: a waiting client that goes away
//! leaves nothing behind once its entry expires.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::oneshot;

/// How long a login may wait for approval.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// Bound on waiting entries, so a flood of interactive logins cannot grow memory without end.
pub const PENDING_CAPACITY: usize = 10_000;

#[derive(Debug)]
pub struct PendingNode {
    pub machine_key: String,
    pub node_key: String,
    pub hostname: String,
    /// Tags the client asked for (`--advertise-tags`), checked against the
    /// policy when an admin admits the node.
    pub request_tags: Vec<String>,
    /// Told the new node's id once an admin approves; the client's register call waits on it.
    pub on_approved: Option<oneshot::Sender<i64>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PendingError {
    #[error("too many logins are waiting for approval; try again later")]
    Full,
    #[error("registration id {0:?} is not valid")]
    InvalidId(String),
    #[error("registration id {0:?} is already waiting")]
    Duplicate(String),
}

struct Entry {
    node: PendingNode,
    created: Instant,
}

pub struct PendingRegistrations {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    capacity: usize,
}

impl Default for PendingRegistrations {
    fn default() -> Self {
        Self::new(PENDING_TTL, PENDING_CAPACITY)
    }
}

/// Ids are 24 lowercase hex characters: unguessable, URL-safe, easy to copy.
pub fn new_registration_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn validate_registration_id(id: &str) -> Result<(), PendingError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(PendingError::InvalidId(id.chars().take(64).collect()));
    }
    Ok(())
}

impl PendingRegistrations {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        PendingRegistrations {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// Parks a node under a fresh id, or under `id` when the caller chose one.
    pub fn insert(&self, id: Option<String>, node: PendingNode) -> Result<String, PendingError> {
        let id = match id {
            Some(id) => {
                validate_registration_id(&id)?;
                id
            }
            None => new_registration_id(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl = self.ttl;
        entries.retain(|_, e| e.created.elapsed() < ttl);
        if entries.contains_key(&id) {
            return Err(PendingError::Duplicate(id));
        }
        if entries.len() >= self.capacity {
            return Err(PendingError::Full);
        }
        entries.insert(
            id.clone(),
            Entry {
                node,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Removes and returns the waiting node, if it is there and not expired.
    pub fn take(&self, id: &str) -> Option<PendingNode> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = entries.remove(id)?;
        (e.created.elapsed() < self.ttl).then_some(e.node)
    }

    /// What an approval needs, without removing the entry: it stays until the
    /// node is stored, so a client polling meanwhile still finds it waiting.
    pub fn peek(&self, id: &str) -> Option<(String, String, String)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = entries.get(id).filter(|e| e.created.elapsed() < self.ttl)?;
        Some((
            e.node.machine_key.clone(),
            e.node.node_key.clone(),
            e.node.hostname.clone(),
        ))
    }

    /// The tags the waiting node asked for.
    pub fn request_tags(&self, id: &str) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(id)
            .map(|e| e.node.request_tags.clone())
            .unwrap_or_default()
    }

    pub fn contains(&self, id: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(id)
            .is_some_and(|e| e.created.elapsed() < self.ttl)
    }

    /// For a client polling on its login URL: a receiver told the node id
    /// when an admin approves. A newer poll replaces an older one's.
    pub fn wait(&self, id: &str) -> Option<oneshot::Receiver<i64>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries
            .get_mut(id)
            .filter(|e| e.created.elapsed() < self.ttl)?;
        let (tx, rx) = oneshot::channel();
        entry.node.on_approved = Some(tx);
        Some(rx)
    }

    /// Puts back an entry whose approval failed, so the admin can retry.
    pub fn restore(&self, id: String, node: PendingNode) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            id,
            Entry {
                node,
                created: Instant::now(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> PendingNode {
        PendingNode {
            machine_key: "mkey:00".into(),
            node_key: "nodekey:00".into(),
            hostname: "h".into(),
            request_tags: Vec::new(),
            on_approved: None,
        }
    }

    #[test]
    fn take_once() {
        let p = PendingRegistrations::default();
        let id = p.insert(None, node()).unwrap();
        assert_eq!(id.len(), 24);
        assert!(p.take(&id).is_some());
        assert!(p.take(&id).is_none());
    }

    #[test]
    fn bounded_and_validated() {
        let p = PendingRegistrations::new(PENDING_TTL, 2);
        p.insert(None, node()).unwrap();
        p.insert(Some("abc".into()), node()).unwrap();
        assert_eq!(p.insert(None, node()), Err(PendingError::Full));
        assert!(matches!(
            p.insert(Some("a/b".into()), node()),
            Err(PendingError::InvalidId(_))
        ));
        let q = PendingRegistrations::default();
        q.insert(Some("abc".into()), node()).unwrap();
        assert!(matches!(
            q.insert(Some("abc".into()), node()),
            Err(PendingError::Duplicate(_))
        ));
    }

    #[tokio::test]
    async fn a_waiting_poll_learns_the_node_id() {
        let p = PendingRegistrations::default();
        let id = p.insert(None, node()).unwrap();
        assert!(p.contains(&id));
        let rx = p.wait(&id).unwrap();
        let mut entry = p.take(&id).unwrap();
        entry.on_approved.take().unwrap().send(42).unwrap();
        assert_eq!(rx.await.unwrap(), 42);
        assert!(p.wait(&id).is_none());
    }

    #[test]
    fn expired_entries_are_gone() {
        let p = PendingRegistrations::new(Duration::ZERO, 10);
        let id = p.insert(None, node()).unwrap();
        assert!(p.take(&id).is_none());
    }
}
