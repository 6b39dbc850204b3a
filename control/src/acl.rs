//! Where the access policy comes from and how it changes: Headscale's
//! `policy.mode: file` (a HuJSON file, reloaded on SIGHUP and when its
//! content changes) or `database` (`meshscale policy set`). A policy is put
//! in force only once it parsed and its `tests` held against the live
//! tailnet; a refused one changes nothing. Also the tag-ownership checks
//! registration and `nodes tag` make against the policy in force.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshscale_policy::{MAX_POLICY_BYTES, Policy, PolicyError, TagOwner};

use crate::config::PolicySource;
use crate::mapper::Hub;
use crate::mapper::access::policy_user;
use crate::store::{Store, StoreError, StoredPolicy, User};

/// How often file mode looks at the file's content.
const FILE_POLL: Duration = Duration::from_secs(1);
/// How often database mode looks for a policy set through another replica.
const DATABASE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// The policy is refused; the text is one line naming the entry at fault.
    #[error("{0}")]
    Refused(#[from] PolicyError),
    #[error(
        "the policy can only be set in `policy.mode: database`; this server reads it from a file: edit the file instead"
    )]
    NotDatabaseMode,
    #[error("no policy is set: every node may reach every other node")]
    NoPolicy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policy text in force and what it was last compared with.
#[derive(Debug, Default)]
struct Current {
    /// The text in force (`None`: no policy) and when it was set or loaded.
    text: Option<String>,
    updated_at: Option<DateTime<Utc>>,
    /// The last text read from the source, in force or refused: an unchanged
    /// bad file is refused (and logged) once, not at every poll.
    last_read: Option<String>,
    /// The database row in force (database mode).
    db_id: Option<i64>,
}

pub struct Acl {
    source: PolicySource,
    current: Mutex<Current>,
}

/// Parses `text` and runs its `tests`/`sshTests` against the live tailnet.
pub fn parse_and_check(text: &str, hub: &Hub) -> Result<Policy, PolicyError> {
    let policy = Policy::parse(text)?;
    let (_, tailnet) = hub.policy_view(&[]);
    policy.check(&tailnet)?;
    Ok(policy)
}

/// What the hub enforces: an empty text is no policy at all (allow-all,
/// and tags have no owners to check against), as in Headscale.
fn in_force(text: Option<&str>, policy: Option<Policy>) -> Option<Arc<Policy>> {
    match text {
        Some(t) if !t.trim().is_empty() => policy.map(Arc::new),
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<String, AclError> {
    let read = |source| AclError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() > MAX_POLICY_BYTES {
        return Err(AclError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

impl Acl {
    /// Reads the policy at start-up and puts it in force in `hub`. A policy
    /// that cannot be read or is refused stops the start, as in Headscale:
    /// better no server than one enforcing something else than intended.
    pub async fn load(source: PolicySource, store: &Store, hub: &Hub) -> Result<Acl, AclError> {
        let acl = Acl {
            source,
            current: Mutex::new(Current::default()),
        };
        let (text, updated_at, db_id) = match &acl.source {
            PolicySource::None => (None, None, None),
            PolicySource::File(path) => (Some(read_file(path)?), Some(Utc::now()), None),
            PolicySource::Database => match store.get_policy().await? {
                Some(p) => (
                    Some(p.data),
                    Some(p.updated_at),
                    store.policy_version().await?.map(|v| v.0),
                ),
                None => (None, None, None),
            },
        };
        let policy = text
            .as_deref()
            .map(|t| parse_and_check(t, hub))
            .transpose()?;
        hub.set_policy(in_force(text.as_deref(), policy));
        {
            let mut cur = acl.lock();
            cur.last_read = text.clone();
            cur.text = text;
            cur.updated_at = updated_at;
            cur.db_id = db_id;
        }
        Ok(acl)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// The policy text in force and when it was set.
    pub fn current(&self) -> Result<(String, DateTime<Utc>), AclError> {
        let cur = self.lock();
        match (&cur.text, cur.updated_at) {
            (Some(t), Some(at)) => Ok((t.clone(), at)),
            _ => Err(AclError::NoPolicy),
        }
    }

    /// `meshscale policy set`: checks, stores, and puts `text` in force.
    pub async fn set(
        &self,
        store: &Store,
        hub: &Hub,
        text: &str,
    ) -> Result<StoredPolicy, AclError> {
        if self.source != PolicySource::Database {
            return Err(AclError::NotDatabaseMode);
        }
        let policy = parse_and_check(text, hub)?;
        let stored = store.set_policy(text).await?;
        let db_id = store.policy_version().await?.map(|v| v.0);
        hub.set_policy(in_force(Some(text), Some(policy)));
        let mut cur = self.lock();
        cur.text = Some(stored.data.clone());
        cur.last_read = cur.text.clone();
        cur.updated_at = Some(stored.updated_at);
        cur.db_id = db_id;
        Ok(stored)
    }

    /// Looks at the source again and puts a changed policy in force.
    /// `force` (SIGHUP) re-reads and re-applies even an unchanged text.
    /// `Ok(true)` when a new policy is in force; a refused one is an error
    /// and leaves the policy in force as it was.
    pub async fn reload(&self, store: &Store, hub: &Hub, force: bool) -> Result<bool, AclError> {
        let (text, updated_at, db_id) = match &self.source {
            PolicySource::None => return Ok(false),
            PolicySource::File(path) => (read_file(path)?, Utc::now(), None),
            PolicySource::Database => {
                let version = store.policy_version().await?;
                if !force && version.map(|v| v.0) == self.lock().db_id {
                    return Ok(false);
                }
                match store.get_policy().await? {
                    Some(p) => (p.data, p.updated_at, version.map(|v| v.0)),
                    None => return Ok(false),
                }
            }
        };
        {
            let mut cur = self.lock();
            if !force && cur.last_read.as_deref() == Some(text.as_str()) {
                return Ok(false);
            }
            cur.last_read = Some(text.clone());
            if db_id.is_some() {
                // Refused or not, this row has been looked at.
                cur.db_id = db_id;
            }
        }
        let policy = parse_and_check(&text, hub)?;
        hub.set_policy(in_force(Some(&text), Some(policy)));
        let mut cur = self.lock();
        cur.text = Some(text);
        cur.updated_at = Some(updated_at);
        Ok(true)
    }
}

/// Reloads the policy on SIGHUP and when its source changes, until `stop`.
pub async fn watch(state: crate::state::SharedState, stop: impl std::future::Future<Output = ()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let poll = match state.acl.source() {
        PolicySource::None => None,
        PolicySource::File(_) => Some(FILE_POLL),
        PolicySource::Database => Some(DATABASE_POLL),
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; the policy reloads only when it changes");
            None
        }
    };
    tokio::pin!(stop);
    loop {
        let force = tokio::select! {
            _ = &mut stop => return,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = async {
                match poll {
                    Some(p) => tokio::time::sleep(p).await,
                    None => std::future::pending::<()>().await,
                }
            } => false,
        };
        if force && poll.is_none() {
            tracing::info!(
                "SIGHUP: no policy configured (policy.path is empty); nothing to reload"
            );
            continue;
        }
        match state.acl.reload(&state.store, &state.hub, force).await {
            Ok(true) => tracing::info!("policy reloaded and in force"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "policy not reloaded; the policy in force stays")
            }
        }
    }
}

/// The tags of `tags` that `owner` may not carry under the policy in force:
/// neither the user (per `tagOwners`) nor, when given, the tags in
/// `held` own them. Without a policy no tag is owned by anyone.
pub fn unowned_tags(hub: &Hub, tags: &[String], owner: &User, held: &[String]) -> Vec<String> {
    if tags.is_empty() {
        return Vec::new();
    }
    let (policy, tailnet) = hub.policy_view(&[owner]);
    let Some(policy) = policy else {
        return tags.to_vec();
    };
    let user = policy_user(owner);
    tags.iter()
        .filter(|tag| {
            !(held.contains(tag)
                || policy.may_own_tag(tag, &TagOwner::User(&user), &tailnet)
                || (!held.is_empty() && policy.may_own_tag(tag, &TagOwner::Tags(held), &tailnet)))
        })
        .cloned()
        .collect()
}
