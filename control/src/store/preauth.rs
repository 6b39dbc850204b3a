use sqlx::Row;
use sqlx::any::AnyRow;

use super::users::user_from_row;
use super::{
    NewPreAuthKey, PreAuthKey, Store, StoreError, flag, from_ms, now, returned_id, tags_from_json,
    tags_to_json, to_ms, validate_tags,
};
use crate::keys::{self, PREAUTH_KEY_KIND};

const KEY_SELECT: &str = "SELECT k.id, k.prefix, k.reusable, k.ephemeral, k.used, k.tags, k.expiration, k.created_at, \
     u.id AS u_id, u.name AS u_name, u.display_name AS u_display_name, u.email AS u_email, \
     u.profile_pic_url AS u_profile_pic_url, u.created_at AS u_created_at \
     FROM pre_auth_keys k LEFT JOIN users u ON u.id = k.user_id";

fn key_from_row(row: &AnyRow) -> Result<PreAuthKey, sqlx::Error> {
    let user_id: Option<i64> = row.try_get("u_id")?;
    Ok(PreAuthKey {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        user: match user_id {
            Some(_) => Some(user_from_row(row, "u_")?),
            None => None,
        },
        reusable: row.try_get::<i64, _>("reusable")? != 0,
        ephemeral: row.try_get::<i64, _>("ephemeral")? != 0,
        used: row.try_get::<i64, _>("used")? != 0,
        tags: tags_from_json(&row.try_get::<String, _>("tags")?),
        expiration: from_ms(row.try_get("expiration")?),
        created_at: from_ms(row.try_get("created_at")?),
    })
}

impl Store {
    /// Creates a key; returns it with the full secret text, which is not kept.
    pub async fn create_preauth_key(
        &self,
        new: NewPreAuthKey,
    ) -> Result<(PreAuthKey, String), StoreError> {
        validate_tags(&new.tags)?;
        if new.user_id.is_none() && new.tags.is_empty() {
            return Err(StoreError::Invalid(
                "a pre-auth key needs a user or at least one tag".into(),
            ));
        }
        if new.expiration <= now() {
            return Err(StoreError::Invalid("the expiration is in the past".into()));
        }
        self.timed("create_preauth_key", async {
            if let Some(uid) = new.user_id {
                self.user_by_id(uid).await?;
            }
            let key = keys::generate(PREAUTH_KEY_KIND);
            let rows = sqlx::query(
                "INSERT INTO pre_auth_keys (prefix, hash, user_id, reusable, ephemeral, used, tags, expiration, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8) RETURNING id",
            )
            .bind(&key.prefix)
            .bind(&key.hash)
            .bind(new.user_id)
            .bind(flag(new.reusable))
            .bind(flag(new.ephemeral))
            .bind(tags_to_json(&new.tags))
            .bind(to_ms(new.expiration))
            .bind(to_ms(now()))
            .fetch_all(&self.pool)
            .await?;
            let stored = self.preauth_key_by_id(returned_id(&rows)?).await?;
            Ok((stored, key.full))
        })
        .await
    }

    /// The key `presented` names, if its secret matches; not whether it may
    /// still be used (registration decides that, in its transaction). Lets
    /// registration check the key's tags against the policy first.
    pub async fn preauth_key_by_secret(
        &self,
        presented: &str,
    ) -> Result<Option<PreAuthKey>, StoreError> {
        let Some(parsed) = keys::parse(PREAUTH_KEY_KIND, presented) else {
            return Ok(None);
        };
        let hash: Option<String> =
            sqlx::query_scalar("SELECT hash FROM pre_auth_keys WHERE prefix = $1")
                .bind(parsed.prefix)
                .fetch_optional(&self.pool)
                .await?;
        if !hash.is_some_and(|h| parsed.matches(&h)) {
            return Ok(None);
        }
        let row = sqlx::query(&format!("{KEY_SELECT} WHERE k.prefix = $1"))
            .bind(parsed.prefix)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_from_row(&r))
            .transpose()
            .map_err(Into::into)
    }

    pub async fn preauth_key_by_id(&self, id: i64) -> Result<PreAuthKey, StoreError> {
        let row = sqlx::query(&format!("{KEY_SELECT} WHERE k.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(key_from_row(&r)?),
            None => Err(StoreError::NotFound(format!("pre-auth key {id}"))),
        }
    }

    /// Every key, or one user's keys.
    pub async fn list_preauth_keys(
        &self,
        user_id: Option<i64>,
    ) -> Result<Vec<PreAuthKey>, StoreError> {
        self.timed("list_preauth_keys", async {
            let rows = sqlx::query(&format!(
                "{KEY_SELECT} WHERE ($1 = 0 OR k.user_id = $1) ORDER BY k.id"
            ))
            .bind(user_id.unwrap_or(0))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Makes the key unusable from now on; nodes already registered with it stay.
    pub async fn expire_preauth_key(&self, id: i64) -> Result<(), StoreError> {
        self.timed("expire_preauth_key", async {
            let t = to_ms(now());
            let r = sqlx::query("UPDATE pre_auth_keys SET expiration = CASE WHEN expiration > $1 THEN $1 ELSE expiration END WHERE id = $2")
                .bind(t)
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("pre-auth key {id}")));
            }
            Ok(())
        })
        .await
    }

    pub async fn delete_preauth_key(&self, id: i64) -> Result<(), StoreError> {
        self.timed("delete_preauth_key", async {
            let r = sqlx::query("DELETE FROM pre_auth_keys WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("pre-auth key {id}")));
            }
            Ok(())
        })
        .await
    }
}
