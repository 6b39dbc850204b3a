//! The access policy in `policy.mode: database`: one row per `policy set`,
//! the newest in force (Headscale keeps them the same way). The store does
//! not interpret the text; the server parses it before storing it.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, from_ms, now, to_ms};

/// A stored policy: its text exactly as it was set, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub data: String,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// The policy in force, or `None` when none was ever set.
    pub async fn get_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.timed("get_policy", async {
            let row = sqlx::query("SELECT data, updated_at FROM policies ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| {
                Ok(StoredPolicy {
                    data: r.try_get("data")?,
                    updated_at: from_ms(r.try_get("updated_at")?),
                })
            })
            .transpose()
            .map_err(|e: sqlx::Error| e.into())
        })
        .await
    }

    /// When the policy in force was set, without reading its text: what a
    /// replica polls to notice a `policy set` made through another one.
    pub async fn policy_version(&self) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
        self.timed("policy_version", async {
            let row = sqlx::query("SELECT id, updated_at FROM policies ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| Ok((r.try_get("id")?, from_ms(r.try_get("updated_at")?))))
                .transpose()
                .map_err(|e: sqlx::Error| e.into())
        })
        .await
    }

    /// Stores `data` as the policy in force. The caller has parsed it.
    pub async fn set_policy(&self, data: &str) -> Result<StoredPolicy, StoreError> {
        self.timed("set_policy", async {
            let at = now();
            let _guard = self.write_lock.lock().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO policies (data, created_at, updated_at) VALUES ($1, $2, $2)")
                .bind(data)
                .bind(to_ms(at))
                .execute(&mut *tx)
                .await?;
            // Earlier versions are history nobody reads; keep the table small.
            sqlx::query("DELETE FROM policies WHERE id < (SELECT MAX(id) FROM policies) - 10")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(StoredPolicy {
                data: data.to_string(),
                updated_at: from_ms(to_ms(at)),
            })
        })
        .await
    }
}
