use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{ApiKey, ApiKeySelector, Store, StoreError, from_ms, now, returned_id, to_ms};
use crate::keys::{self, API_KEY_KIND};

const API_KEY_COLUMNS: &str = "id, prefix, expiration, created_at, last_seen";

/// Seeing a key in use more often than this does not rewrite its `last_seen`.
const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        expiration: from_ms(row.try_get("expiration")?),
        created_at: from_ms(row.try_get("created_at")?),
        last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(from_ms),
    })
}

/// Why an API key was refused. Deliberately coarse towards the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("invalid API key")]
    Invalid,
    #[error("API key expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub async fn create_api_key(
        &self,
        expiration: DateTime<Utc>,
    ) -> Result<(ApiKey, String), StoreError> {
        if expiration <= now() {
            return Err(StoreError::Invalid("the expiration is in the past".into()));
        }
        self.timed("create_api_key", async {
            let key = keys::generate(API_KEY_KIND);
            let rows = sqlx::query(
                "INSERT INTO api_keys (prefix, hash, expiration, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(&key.prefix)
            .bind(&key.hash)
            .bind(to_ms(expiration))
            .bind(to_ms(now()))
            .fetch_all(&self.pool)
            .await?;
            let id = returned_id(&rows)?;
            let stored = self.api_key(&ApiKeySelector::Id(id)).await?;
            Ok((stored, key.full))
        })
        .await
    }

    pub async fn api_key(&self, selector: &ApiKeySelector) -> Result<ApiKey, StoreError> {
        let (clause, id, prefix) = selector_params(selector);
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {clause}"
        ))
        .bind(id)
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(api_key_from_row(&r)?),
            None => Err(StoreError::NotFound(describe(selector))),
        }
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.timed("list_api_keys", async {
            let rows = sqlx::query(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY id"
            ))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(api_key_from_row)
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn expire_api_key(&self, selector: &ApiKeySelector) -> Result<(), StoreError> {
        self.timed("expire_api_key", async {
            let (clause, id, prefix) = selector_params(selector);
            let r = sqlx::query(&format!(
                "UPDATE api_keys SET expiration = CASE WHEN expiration > $3 THEN $3 ELSE expiration END WHERE {clause}"
            ))
            .bind(id)
            .bind(prefix)
            .bind(to_ms(now()))
            .execute(&self.pool)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(describe(selector)));
            }
            Ok(())
        })
        .await
    }

    pub async fn delete_api_key(&self, selector: &ApiKeySelector) -> Result<(), StoreError> {
        self.timed("delete_api_key", async {
            let (clause, id, prefix) = selector_params(selector);
            let r = sqlx::query(&format!("DELETE FROM api_keys WHERE {clause}"))
                .bind(id)
                .bind(prefix)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(describe(selector)));
            }
            Ok(())
        })
        .await
    }

    /// Checks a presented API key: well-formed, known, matching hash, not expired.
    pub async fn verify_api_key(&self, presented: &str) -> Result<ApiKey, ApiKeyError> {
        let parsed = keys::parse(API_KEY_KIND, presented).ok_or(ApiKeyError::Invalid)?;
        let row = self
            .timed("verify_api_key", async {
                Ok(sqlx::query(
                    "SELECT id, hash, expiration, last_seen FROM api_keys WHERE prefix = $1",
                )
                .bind(parsed.prefix)
                .fetch_optional(&self.pool)
                .await?)
            })
            .await?
            .ok_or(ApiKeyError::Invalid)?;
        let hash: String = row.try_get("hash").map_err(StoreError::from)?;
        if !parsed.matches(&hash) {
            return Err(ApiKeyError::Invalid);
        }
        let id: i64 = row.try_get("id").map_err(StoreError::from)?;
        let expiration: i64 = row.try_get("expiration").map_err(StoreError::from)?;
        let now_ms = to_ms(now());
        if expiration <= now_ms {
            return Err(ApiKeyError::Expired);
        }
        let last_seen: Option<i64> = row.try_get("last_seen").map_err(StoreError::from)?;
        if last_seen.is_none_or(|t| now_ms - t > LAST_SEEN_RESOLUTION_MS) {
            sqlx::query("UPDATE api_keys SET last_seen = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from)?;
        }
        Ok(self.api_key(&ApiKeySelector::Id(id)).await?)
    }
}

/// One WHERE clause for both selectors, so every query binds `$1` (id) and `$2` (prefix).
fn selector_params(selector: &ApiKeySelector) -> (&'static str, i64, String) {
    match selector {
        ApiKeySelector::Id(id) => ("id = $1 AND $2 = ''", *id, String::new()),
        ApiKeySelector::Prefix(p) => ("$1 = 0 AND prefix = $2", 0, normalize_prefix(p)),
    }
}

/// Accepts the bare prefix or the masked form a listing shows (`mskey-api-<prefix>-***`).
fn normalize_prefix(p: &str) -> String {
    let p = p
        .strip_prefix(API_KEY_KIND)
        .and_then(|r| r.strip_prefix('-'))
        .unwrap_or(p);
    p.split('-').next().unwrap_or(p).to_string()
}

fn describe(selector: &ApiKeySelector) -> String {
    match selector {
        ApiKeySelector::Id(id) => format!("API key {id}"),
        ApiKeySelector::Prefix(p) => format!("API key with prefix {p:?}"),
    }
}
