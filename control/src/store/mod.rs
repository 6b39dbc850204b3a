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
mod preauth;
mod users;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::config::DatabaseTarget;
use crate::ipam::IpPrefixes;
use crate::metrics::Metrics;

pub use model::*;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a query may wait for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

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
            _ => StoreError::Database(e.to_string()),
        }
    }
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
            prefixes,
            metrics,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", async {
            if let Some(path) = &self.sqlite_path
                && !path.exists()
            {
                return Err(StoreError::Unavailable(format!(
                    "the database file {} is gone",
                    path.display()
                )));
            }
            let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&self.pool).await?;
            Ok(())
        })
        .await
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
