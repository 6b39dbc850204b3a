use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    NewUser, Store, StoreError, User, UserFilter, from_ms, is_unique_violation, now, returned_id,
    to_ms,
};
use crate::names::validate_dns_label;

const USER_COLUMNS: &str = "id, name, display_name, email, profile_pic_url, created_at";

pub(super) fn user_from_row(row: &AnyRow, prefix: &str) -> Result<User, sqlx::Error> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(User {
        id: row.try_get(col("id").as_str())?,
        name: row.try_get(col("name").as_str())?,
        display_name: row.try_get(col("display_name").as_str())?,
        email: row.try_get(col("email").as_str())?,
        profile_pic_url: row.try_get(col("profile_pic_url").as_str())?,
        created_at: from_ms(row.try_get(col("created_at").as_str())?),
    })
}

impl Store {
    pub async fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        validate_dns_label(&new.name)
            .map_err(|e| StoreError::Invalid(format!("invalid user name: {e}")))?;
        self.timed("create_user", async {
            let created = to_ms(now());
            let result = sqlx::query(
                "INSERT INTO users (name, display_name, email, profile_pic_url, created_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&new.name)
            .bind(&new.display_name)
            .bind(&new.email)
            .bind(&new.profile_pic_url)
            .bind(created)
            .fetch_all(&self.pool)
            .await;
            match result {
                Ok(rows) => self.user_by_id(returned_id(&rows)?).await,
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::AlreadyExists(format!("user {:?}", new.name)))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    pub async fn list_users(&self, filter: &UserFilter) -> Result<Vec<User>, StoreError> {
        self.timed("list_users", async {
            let rows = sqlx::query(&format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE ($1 = 0 OR id = $1) AND ($2 = '' OR name = $2) AND ($3 = '' OR email = $3) ORDER BY id"
            ))
            .bind(filter.id.unwrap_or(0))
            .bind(filter.name.clone().unwrap_or_default())
            .bind(filter.email.clone().unwrap_or_default())
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(|r| user_from_row(r, "")).collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn user_by_id(&self, id: i64) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(user_from_row(&r, "")?),
            None => Err(StoreError::NotFound(format!("user {id}"))),
        }
    }

    pub async fn user_by_name(&self, name: &str) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(user_from_row(&r, "")?),
            None => Err(StoreError::NotFound(format!("user {name:?}"))),
        }
    }

    /// A user named by name, or by decimal id when no user has that name.
    pub async fn resolve_user(&self, name_or_id: &str) -> Result<User, StoreError> {
        match self.user_by_name(name_or_id).await {
            Err(StoreError::NotFound(_)) => match name_or_id.parse::<i64>() {
                Ok(id) => self.user_by_id(id).await,
                Err(_) => Err(StoreError::NotFound(format!("user {name_or_id:?}"))),
            },
            other => other,
        }
    }

    pub async fn rename_user(&self, id: i64, new_name: &str) -> Result<User, StoreError> {
        validate_dns_label(new_name)
            .map_err(|e| StoreError::Invalid(format!("invalid user name: {e}")))?;
        self.timed("rename_user", async {
            let result = sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
                .bind(new_name)
                .bind(id)
                .execute(&self.pool)
                .await;
            match result {
                Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound(format!("user {id}"))),
                Ok(_) => self.user_by_id(id).await,
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::AlreadyExists(format!("user {new_name:?}")))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Deletes the user, its nodes and its pre-auth keys in one transaction.
    /// Returns the ids of the nodes that were expelled.
    pub async fn destroy_user(&self, id: i64) -> Result<Vec<i64>, StoreError> {
        self.timed("destroy_user", async {
            let _guard = self.write_lock.lock().await;
            let mut tx = self.pool.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("user {id}")));
            }
            let node_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM nodes WHERE user_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM nodes WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pre_auth_keys WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(node_ids)
        })
        .await
    }
}
