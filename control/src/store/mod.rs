//! Persistent state: users, nodes, pre-auth keys, API keys, and the address
//! allocator's high-water marks. One code path for SQLite (the embedded
//! default) and PostgreSQL, through sqlx's `Any` driver; the two migration
//! sets under `control/migrations/` describe the same schema.
//!
//! Writes that must not interleave (address allocation, name uniqueness)
//! run inside a transaction under `write_lock`. Within one process that lock
//! serialises them; across PostgreSQL replicas the `ip_cursors` row lock and
//! the UNIQUE constraints do.

mod apikeys;
mod model;
mod nodes;
mod policy;
mod preauth;
mod recycle;
mod users;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};

use crate::config::DatabaseTarget;
use crate::ipam::IpPrefixes;
use crate::metrics::Metrics;

pub use model::*;
pub use policy::StoredPolicy;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a query may wait for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one write probe's outcome answers [`Store::ping`].
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The `ip_cursors` key the write probe inserts and deletes in one transaction.
const PROBE_ROW: &str = "health-probe";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("no free {0} address left in {1}")]
    Exhausted(&'static str, String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code();
                let fault = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    code.and_then(|c| c.parse().ok()).and_then(sqlite_fault)
                } else {
                    code.as_deref().and_then(postgres_fault)
                };
                match fault {
                    Some(what) => {
                        recycle::mark();
                        StoreError::Unavailable(format!("{what} ({e})"))
                    }
                    None => StoreError::Database(e.to_string()),
                }
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

// Database errors that say the storage cannot take the change right now
// (disk full, read-only, I/O failure, server going away), as opposed to a
// bad query or constraint: clients are told to retry later, and the admin
// reads why.

/// SQLite result codes; extended codes carry the primary one in the low byte.
fn sqlite_fault(code: i64) -> Option<&'static str> {
    match code & 0xff {
        13 => Some("the disk is full"),
        8 => Some("the database is read-only"),
        10 => Some("disk I/O error"),
        14 => Some("the database file cannot be opened"),
        _ => None,
    }
}

/// PostgreSQL SQLSTATEs.
fn postgres_fault(code: &str) -> Option<&'static str> {
    match code {
        "53100" => Some("the disk is full"),
        "25006" => Some("the database is read-only"),
        "58030" => Some("disk I/O error"),
        c if c.starts_with("53") => Some("the database server is out of resources"),
        c if c.starts_with("57") => Some("the database server is shutting down or restarting"),
        c if c.starts_with("08") => Some("the connection to the database failed"),
        _ => None,
    }
}

/// The `id` of an `INSERT ... RETURNING id`, run with `fetch_all`. With
/// SQLite outside a transaction the implicit commit happens after the row
/// is returned: `fetch_one` would stop at the row and miss a commit that
/// fails (disk full), handing out the id of a row that was never stored.
fn returned_id(rows: &[sqlx::any::AnyRow]) -> Result<i64, sqlx::Error> {
    use sqlx::Row;
    rows.first().ok_or(sqlx::Error::RowNotFound)?.try_get("id")
}

/// True when the error is a UNIQUE violation, which callers turn into "already exists".
fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file, watched by [`Store::ping`]: an open connection keeps
    /// working on a deleted or unmounted file, silently writing into nothing.
    sqlite_path: Option<std::path::PathBuf>,
    write_lock: tokio::sync::Mutex<()>,
    /// The last write probe: when, and its error text if it failed.
    last_probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    prefixes: IpPrefixes,
    metrics: Metrics,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(
        target: &DatabaseTarget,
        prefixes: IpPrefixes,
        metrics: Metrics,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, backend, max_connections, wal) = match target {
            DatabaseTarget::Sqlite {
                path,
                write_ahead_log,
            } => {
                prepare_sqlite_dir(path)?;
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Backend::Sqlite,
                    4,
                    *write_ahead_log,
                )
            }
            DatabaseTarget::Postgres {
                url,
                max_connections,
            } => (url.clone(), Backend::Postgres, *max_connections, false),
        };
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Invalid(format!("database settings: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        if wal {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            // In WAL mode NORMAL survives a process crash; only an OS crash can lose the last commits.
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                    }
                    Ok(())
                })
            })
            .before_acquire(|_, meta| Box::pin(async move { Ok(recycle::reusable(meta.age)) }))
            .after_release(move |conn, _| {
                Box::pin(async move {
                    // sqlx's SQLite worker counts transaction depth only for
                    // statements that succeed. After a failed COMMIT or
                    // ROLLBACK (disk full, I/O error: SQLite may already have
                    // rolled back by itself) the count stays above zero, the
                    // next `begin` on the connection becomes a SAVEPOINT,
                    // and rolling that back leaves a transaction open: later
                    // "committed" writes on it are never committed, and its
                    // reads see an old snapshot. Such a connection is closed
                    // rather than reused. A count above zero may also be a
                    // dropped transaction's rollback the worker has not run
                    // yet: the ping lets it run first.
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    if backend == Backend::Sqlite {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open the database: {e}")))?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("schema migration failed: {e}")))?;
        let sqlite_path = match target {
            DatabaseTarget::Sqlite { path, .. } => {
                restrict_permissions(path)?;
                Some(path.clone())
            }
            DatabaseTarget::Postgres { .. } => None,
        };
        Ok(Store {
            pool,
            backend,
            sqlite_path,
            write_lock: tokio::sync::Mutex::new(()),
            last_probe: tokio::sync::Mutex::new(None),
            prefixes,
            metrics,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database can take a write now. A read alone passes on a
    /// full or read-only disk, so this commits a small write; concurrent
    /// callers share one probe, and a result is reused for [`PROBE_REUSE`]
    /// so that a flood of health checks cannot turn into a flood of writes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        // Cheap and write-free, so never answered from the cache.
        if let Some(path) = &self.sqlite_path
            && !path.exists()
        {
            return Err(StoreError::Unavailable(format!(
                "the database file {} is gone",
                path.display()
            )));
        }
        let mut last = self.last_probe.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < PROBE_REUSE
        {
            return result.clone().map_err(StoreError::Unavailable);
        }
        let result = self
            .timed("ping", self.probe_write())
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(why) | StoreError::Database(why) => why,
                other => other.to_string(),
            });
        if result.is_ok() && last.as_ref().is_some_and(|(_, r)| r.is_err()) {
            // Back from a fault: connections opened during it may still be
            // read-only.
            recycle::mark();
        }
        *last = Some((Instant::now(), result.clone()));
        result.map_err(StoreError::Unavailable)
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        // Under the write lock: on SQLite a commit landing between a
        // registration's first read and its first write would fail that
        // registration (a stale WAL snapshot cannot be upgraded).
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await?;
        // A row that exists only inside this transaction: nothing reads it,
        // yet the commit must write a page (a no-op UPDATE writes nothing).
        let result = async {
            sqlx::query("INSERT INTO ip_cursors (family, last) VALUES ($1, '')")
                .bind(PROBE_ROW)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM ip_cursors WHERE family = $1")
                .bind(PROBE_ROW)
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match result {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e.into());
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs one store operation, recording its latency by name.
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = f.await;
        self.metrics
            .observe_store(op, start.elapsed(), result.is_ok());
        result
    }
}

fn prepare_sqlite_dir(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
    }
    Ok(())
}

/// The database holds key hashes and node keys: owner-only, like Headscale's.
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for p in [
        path.to_path_buf(),
        path.with_extension("sqlite-wal"),
        path.with_extension("sqlite-shm"),
    ] {
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
                StoreError::Unavailable(format!("cannot restrict {}: {e}", p.display()))
            })?;
        }
    }
    Ok(())
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn tags_to_json(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

fn tags_from_json(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Tags as ACLs name them: `tag:` followed by a DNS label.
pub fn validate_tags(tags: &[String]) -> Result<(), StoreError> {
    for t in tags {
        let name = t
            .strip_prefix("tag:")
            .ok_or_else(|| StoreError::Invalid(format!("tag {t:?} must start with \"tag:\"")))?;
        crate::names::validate_dns_label(name)
            .map_err(|e| StoreError::Invalid(format!("tag {t:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    #[test]
    fn storage_faults_are_told_apart_from_bad_queries() {
        assert_eq!(sqlite_fault(13), Some("the disk is full"));
        // SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED: extended codes.
        assert_eq!(sqlite_fault(778), Some("disk I/O error"));
        assert_eq!(sqlite_fault(1032), Some("the database is read-only"));
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_ERROR.
        assert_eq!(sqlite_fault(2067), None);
        assert_eq!(sqlite_fault(1), None);
        assert_eq!(postgres_fault("25006"), Some("the database is read-only"));
        assert_eq!(postgres_fault("53100"), Some("the disk is full"));
        assert!(postgres_fault("57P01").is_some());
        assert!(postgres_fault("08006").is_some());
        // unique_violation, syntax_error.
        assert_eq!(postgres_fault("23505"), None);
        assert_eq!(postgres_fault("42601"), None);
    }
}
