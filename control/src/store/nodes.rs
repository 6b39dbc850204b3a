use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::users::user_from_row;
use super::{
    AuthKeyError, NewNode, Node, NodeLive, PreAuthKey, RegisterMethod, Store, StoreError, flag,
    from_ms, is_unique_violation, now, tags_from_json, tags_to_json, to_ms, validate_tags,
};
use crate::ipam::AddressFamily;
use crate::keys::{self, PREAUTH_KEY_KIND};
use crate::names::{given_name_candidate, sanitize_hostname, validate_dns_label};

const NODE_SELECT: &str = "SELECT n.id, n.machine_key, n.node_key, n.disco_key, n.hostname, n.given_name, \
     n.ipv4, n.ipv6, n.tags, n.ephemeral, n.auth_key_id, n.register_method, n.expiry, n.last_seen, n.created_at, \
     u.id AS u_id, u.name AS u_name, u.display_name AS u_display_name, u.email AS u_email, \
     u.profile_pic_url AS u_profile_pic_url, u.created_at AS u_created_at \
     FROM nodes n JOIN users u ON u.id = n.user_id";

/// Forward probes for a free address before giving up on the cheap path and
/// loading every used address of the family (only near exhaustion).
const CHEAP_PROBES: usize = 32;

fn node_from_row(row: &AnyRow) -> Result<Node, sqlx::Error> {
    let ipv4: Option<String> = row.try_get("ipv4")?;
    let ipv6: Option<String> = row.try_get("ipv6")?;
    Ok(Node {
        id: row.try_get("id")?,
        machine_key: row.try_get("machine_key")?,
        node_key: row.try_get("node_key")?,
        disco_key: row.try_get("disco_key")?,
        hostname: row.try_get("hostname")?,
        given_name: row.try_get("given_name")?,
        user: user_from_row(row, "u_")?,
        ipv4: ipv4.and_then(|s| s.parse().ok()),
        ipv6: ipv6.and_then(|s| s.parse().ok()),
        tags: tags_from_json(&row.try_get::<String, _>("tags")?),
        ephemeral: row.try_get::<i64, _>("ephemeral")? != 0,
        auth_key_id: row.try_get("auth_key_id")?,
        register_method: RegisterMethod::from_i64(row.try_get("register_method")?),
        expiry: row.try_get::<Option<i64>, _>("expiry")?.map(from_ms),
        last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(from_ms),
        created_at: from_ms(row.try_get("created_at")?),
    })
}

/// Counts for the `nodes` gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub total: i64,
    pub expired: i64,
}

impl Store {
    /// Admits a node. A machine key seen before keeps its node id, name and
    /// addresses (a re-login), taking the new user, keys and expiry.
    pub async fn register_node(&self, new: NewNode) -> Result<Node, StoreError> {
        validate_tags(&new.tags)?;
        self.timed("register_node", async {
            let _guard = self.write_lock.lock().await;
            let mut tx = self.pool.begin().await?;
            let id = self.upsert_node_tx(&mut tx, &new).await?;
            tx.commit().await?;
            self.node(id).await
        })
        .await
    }

    /// Inserts a new node or re-admits a known machine key, inside the caller's transaction.
    async fn upsert_node_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        new: &NewNode,
    ) -> Result<i64, StoreError> {
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT id FROM nodes WHERE machine_key = $1")
                .bind(&new.machine_key)
                .fetch_optional(&mut **tx)
                .await?;
        let user_exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
            .bind(new.user_id)
            .fetch_optional(&mut **tx)
            .await?;
        if user_exists.is_none() {
            return Err(StoreError::NotFound(format!("user {}", new.user_id)));
        }
        let t = to_ms(now());
        let id = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE nodes SET node_key = $1, disco_key = $2, hostname = $3, user_id = $4, tags = $5, \
                     ephemeral = $6, auth_key_id = $7, register_method = $8, expiry = $9, updated_at = $10 \
                     WHERE id = $11",
                )
                .bind(&new.node_key)
                .bind(&new.disco_key)
                .bind(&new.hostname)
                .bind(new.user_id)
                .bind(tags_to_json(&new.tags))
                .bind(flag(new.ephemeral))
                .bind(new.auth_key_id)
                .bind(new.register_method as i64)
                .bind(new.expiry.map(to_ms))
                .bind(t)
                .bind(id)
                .execute(&mut **tx)
                .await?;
                id
            }
            None => {
                let ipv4 = self.allocate_v4(tx).await?;
                let ipv6 = self.allocate_v6(tx).await?;
                let given_name = free_given_name(tx, &sanitize_hostname(&new.hostname)).await?;
                let row = sqlx::query(
                    "INSERT INTO nodes (machine_key, node_key, disco_key, hostname, given_name, user_id, ipv4, ipv6, \
                     tags, ephemeral, auth_key_id, register_method, expiry, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) RETURNING id",
                )
                .bind(&new.machine_key)
                .bind(&new.node_key)
                .bind(&new.disco_key)
                .bind(&new.hostname)
                .bind(&given_name)
                .bind(new.user_id)
                .bind(ipv4.to_string())
                .bind(ipv6.to_string())
                .bind(tags_to_json(&new.tags))
                .bind(flag(new.ephemeral))
                .bind(new.auth_key_id)
                .bind(new.register_method as i64)
                .bind(new.expiry.map(to_ms))
                .bind(t)
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        // Another replica took the same address or name between our read and write.
                        StoreError::Unavailable("concurrent registration conflict, retry".into())
                    } else {
                        e.into()
                    }
                })?;
                row.try_get("id")?
            }
        };
        Ok(id)
    }

    async fn allocate_v4(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<Ipv4Addr, StoreError> {
        allocate(tx, &self.prefixes.v4).await
    }

    async fn allocate_v6(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<Ipv6Addr, StoreError> {
        allocate(tx, &self.prefixes.v6).await
    }

    pub async fn node(&self, id: i64) -> Result<Node, StoreError> {
        let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(node_from_row(&r)?),
            None => Err(StoreError::NotFound(format!("node {id}"))),
        }
    }

    pub async fn get_node(&self, id: i64) -> Result<Node, StoreError> {
        self.timed("get_node", self.node(id)).await
    }

    pub async fn node_by_machine_key(&self, machine_key: &str) -> Result<Option<Node>, StoreError> {
        self.timed("node_by_machine_key", async {
            let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.machine_key = $1"))
                .bind(machine_key)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| node_from_row(&r)).transpose()?)
        })
        .await
    }

    pub async fn node_by_node_key(&self, node_key: &str) -> Result<Option<Node>, StoreError> {
        self.timed("node_by_node_key", async {
            let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.node_key = $1"))
                .bind(node_key)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| node_from_row(&r)).transpose()?)
        })
        .await
    }

    /// Replaces the node's WireGuard key (the client rotated it).
    pub async fn set_node_key(&self, id: i64, node_key: &str) -> Result<Node, StoreError> {
        self.timed("set_node_key", async {
            let r = sqlx::query("UPDATE nodes SET node_key = $1, updated_at = $2 WHERE id = $3")
                .bind(node_key)
                .bind(to_ms(now()))
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            self.node(id).await
        })
        .await
    }

    /// Every node, or one user's nodes, by id.
    pub async fn list_nodes(&self, user_id: Option<i64>) -> Result<Vec<Node>, StoreError> {
        self.timed("list_nodes", async {
            let rows = sqlx::query(&format!(
                "{NODE_SELECT} WHERE ($1 = 0 OR n.user_id = $1) ORDER BY n.id"
            ))
            .bind(user_id.unwrap_or(0))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(node_from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn delete_node(&self, id: i64) -> Result<Node, StoreError> {
        self.timed("delete_node", async {
            let node = self.node(id).await?;
            let r = sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            Ok(node)
        })
        .await
    }

    /// Sets when the node's key expires: `Some(t)` at t, `None` never.
    pub async fn set_node_expiry(
        &self,
        id: i64,
        expiry: Option<DateTime<Utc>>,
    ) -> Result<Node, StoreError> {
        self.timed("set_node_expiry", async {
            let r = sqlx::query("UPDATE nodes SET expiry = $1, updated_at = $2 WHERE id = $3")
                .bind(expiry.map(to_ms))
                .bind(to_ms(now()))
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            self.node(id).await
        })
        .await
    }

    pub async fn rename_node(&self, id: i64, new_name: &str) -> Result<Node, StoreError> {
        validate_dns_label(new_name)
            .map_err(|e| StoreError::Invalid(format!("invalid node name: {e}")))?;
        self.timed("rename_node", async {
            let result =
                sqlx::query("UPDATE nodes SET given_name = $1, updated_at = $2 WHERE id = $3")
                    .bind(new_name)
                    .bind(to_ms(now()))
                    .bind(id)
                    .execute(&self.pool)
                    .await;
            match result {
                Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound(format!("node {id}"))),
                Ok(_) => self.node(id).await,
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::AlreadyExists(format!("node name {new_name:?}")))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    pub async fn move_node(&self, id: i64, user_id: i64) -> Result<Node, StoreError> {
        self.timed("move_node", async {
            self.user_by_id(user_id).await?;
            let r = sqlx::query("UPDATE nodes SET user_id = $1, updated_at = $2 WHERE id = $3")
                .bind(user_id)
                .bind(to_ms(now()))
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            self.node(id).await
        })
        .await
    }

    pub async fn set_node_tags(&self, id: i64, tags: &[String]) -> Result<Node, StoreError> {
        validate_tags(tags)?;
        self.timed("set_node_tags", async {
            let mut sorted: Vec<String> = tags.to_vec();
            sorted.sort();
            sorted.dedup();
            let r = sqlx::query("UPDATE nodes SET tags = $1, updated_at = $2 WHERE id = $3")
                .bind(tags_to_json(&sorted))
                .bind(to_ms(now()))
                .bind(id)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            self.node(id).await
        })
        .await
    }

    /// Records what a node reports on its map session: its disco key,
    /// endpoints and Hostinfo (JSON text, stored as received after parsing).
    pub async fn update_node_live(&self, id: i64, live: &NodeLive) -> Result<(), StoreError> {
        self.timed("update_node_live", async {
            // Under the write lock like every registration: a commit between a
            // registration's first read and first write fails it on SQLite.
            let _guard = self.write_lock.lock().await;
            sqlx::query(
                "UPDATE nodes SET disco_key = $1, endpoints = $2, hostinfo = $3, hostname = $4, last_seen = $5 \
                 WHERE id = $6",
            )
            .bind(&live.disco_key)
            .bind(&live.endpoints_json)
            .bind(&live.hostinfo_json)
            .bind(&live.hostname)
            .bind(to_ms(now()))
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn touch_last_seen(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.timed("touch_last_seen", async {
            let _guard = self.write_lock.lock().await;
            sqlx::query("UPDATE nodes SET last_seen = $1 WHERE id = $2")
                .bind(to_ms(at))
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// What the node last reported, for building its view for peers after a restart.
    pub async fn node_live(&self, id: i64) -> Result<NodeLive, StoreError> {
        let row =
            sqlx::query("SELECT disco_key, endpoints, hostinfo, hostname FROM nodes WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        Ok(NodeLive {
            disco_key: row.try_get("disco_key")?,
            endpoints_json: row.try_get("endpoints")?,
            hostinfo_json: row.try_get("hostinfo")?,
            hostname: row.try_get("hostname")?,
        })
    }

    /// Every node with what it last reported, in one query (map building at start-up).
    pub async fn list_nodes_live(&self) -> Result<Vec<(Node, NodeLive)>, StoreError> {
        self.timed("list_nodes_live", async {
            let rows = sqlx::query(&format!(
                "{} ORDER BY n.id",
                NODE_SELECT.replace("SELECT n.id,", "SELECT n.endpoints, n.hostinfo, n.id,")
            ))
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let node = node_from_row(r)?;
                let live = NodeLive {
                    disco_key: node.disco_key.clone(),
                    endpoints_json: r.try_get("endpoints")?,
                    hostinfo_json: r.try_get("hostinfo")?,
                    hostname: node.hostname.clone(),
                };
                out.push((node, live));
            }
            Ok(out)
        })
        .await
    }

    /// Admits a node with a pre-auth key, consuming a single-use key in the
    /// same transaction: if the registration fails, the key stays unused; two
    /// racing registrations with one single-use key cannot both succeed.
    pub async fn register_with_preauth_key(
        &self,
        presented: &str,
        mut new: NewNode,
    ) -> Result<(Node, PreAuthKey), AuthKeyError> {
        validate_tags(&new.tags)?;
        let parsed = keys::parse(PREAUTH_KEY_KIND, presented).ok_or(AuthKeyError::Invalid)?;
        let result = self
            .timed("register_with_preauth_key", async {
                let _guard = self.write_lock.lock().await;
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(
                    "SELECT id, hash, user_id, reusable, ephemeral, used, tags, expiration FROM pre_auth_keys WHERE prefix = $1",
                )
                .bind(parsed.prefix)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(Err(AuthKeyError::Invalid)) };
                let hash: String = row.try_get("hash")?;
                if !parsed.matches(&hash) {
                    return Ok(Err(AuthKeyError::Invalid));
                }
                let key_id: i64 = row.try_get("id")?;
                if row.try_get::<i64, _>("expiration")? <= to_ms(now()) {
                    return Ok(Err(AuthKeyError::Expired));
                }
                let reusable = row.try_get::<i64, _>("reusable")? != 0;
                let used = row.try_get::<i64, _>("used")? != 0;
                if used && !reusable {
                    // The same machine retrying with the key it registered with is a re-login, not a second use.
                    let same: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM nodes WHERE machine_key = $1 AND auth_key_id = $2",
                    )
                    .bind(&new.machine_key)
                    .bind(key_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if same.is_none() {
                        return Ok(Err(AuthKeyError::Used));
                    }
                }
                let Some(user_id) = row.try_get::<Option<i64>, _>("user_id")? else {
                    return Ok(Err(AuthKeyError::Invalid));
                };
                new.user_id = user_id;
                new.ephemeral = row.try_get::<i64, _>("ephemeral")? != 0;
                new.auth_key_id = Some(key_id);
                new.register_method = RegisterMethod::AuthKey;
                // The key's tags plus those the node asked for (registration
                // has checked both against the policy).
                let mut tags = tags_from_json(&row.try_get::<String, _>("tags")?);
                tags.append(&mut new.tags);
                tags.sort();
                tags.dedup();
                new.tags = tags;
                if !reusable {
                    sqlx::query("UPDATE pre_auth_keys SET used = 1 WHERE id = $1").bind(key_id).execute(&mut *tx).await?;
                }
                let id = self.upsert_node_tx(&mut tx, &new).await?;
                tx.commit().await?;
                Ok(Ok((id, key_id)))
            })
            .await?;
        let (id, key_id) = result?;
        Ok((self.node(id).await?, self.preauth_key_by_id(key_id).await?))
    }

    pub async fn count_nodes(&self) -> Result<NodeCounts, StoreError> {
        self.timed("count_nodes", async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS total, \
                 COALESCE(SUM(CASE WHEN expiry IS NOT NULL AND expiry <= $1 THEN 1 ELSE 0 END), 0) AS expired \
                 FROM nodes",
            )
            .bind(to_ms(now()))
            .fetch_one(&self.pool)
            .await?;
            Ok(NodeCounts { total: row.try_get("total")?, expired: row.try_get("expired")? })
        })
        .await
    }
}

/// The next free address of one family, walking forward from the cursor.
async fn allocate<P: AddressFamily>(
    tx: &mut Transaction<'static, Any>,
    prefix: &P,
) -> Result<P::Addr, StoreError> {
    let cursor = lock_cursor(tx, P::CURSOR)
        .await?
        .and_then(|s| s.parse().ok());
    let mut chosen = None;
    for candidate in prefix.candidates(cursor).take(CHEAP_PROBES) {
        if !address_in_use(tx, P::COLUMN, &candidate.to_string()).await? {
            chosen = Some(candidate);
            break;
        }
    }
    if chosen.is_none() {
        let used = used_addresses(tx, P::COLUMN).await?;
        // Among `used.len() + 1` distinct candidates at least one is free, if the range has that many.
        chosen = prefix
            .candidates(cursor)
            .take(used.len() + 1)
            .find(|a| !used.contains(&a.to_string()));
    }
    let a = chosen.ok_or_else(|| StoreError::Exhausted(P::NAME, prefix.to_string()))?;
    set_cursor(tx, P::CURSOR, &a.to_string()).await?;
    Ok(a)
}

/// Takes the allocator's row lock (PostgreSQL) or write lock (SQLite) first,
/// so concurrent registrations on several replicas queue here.
async fn lock_cursor(
    tx: &mut Transaction<'static, Any>,
    family: &str,
) -> Result<Option<String>, StoreError> {
    sqlx::query("UPDATE ip_cursors SET last = last WHERE family = $1")
        .bind(family)
        .execute(&mut **tx)
        .await?;
    let last: Option<String> = sqlx::query_scalar("SELECT last FROM ip_cursors WHERE family = $1")
        .bind(family)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(last.filter(|s| !s.is_empty()))
}

async fn set_cursor(
    tx: &mut Transaction<'static, Any>,
    family: &str,
    last: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE ip_cursors SET last = $1 WHERE family = $2")
        .bind(last)
        .bind(family)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn address_in_use(
    tx: &mut Transaction<'static, Any>,
    column: &str,
    addr: &str,
) -> Result<bool, StoreError> {
    let hit: Option<i64> = sqlx::query_scalar(&format!("SELECT id FROM nodes WHERE {column} = $1"))
        .bind(addr)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(hit.is_some())
}

async fn used_addresses(
    tx: &mut Transaction<'static, Any>,
    column: &str,
) -> Result<HashSet<String>, StoreError> {
    let all: Vec<Option<String>> = sqlx::query_scalar(&format!("SELECT {column} FROM nodes"))
        .fetch_all(&mut **tx)
        .await?;
    Ok(all.into_iter().flatten().collect())
}

/// The first of `base`, `base-1`, `base-2`, ... that no node uses.
async fn free_given_name(
    tx: &mut Transaction<'static, Any>,
    base: &str,
) -> Result<String, StoreError> {
    let taken: Vec<String> = sqlx::query_scalar(
        "SELECT given_name FROM nodes WHERE given_name = $1 OR given_name LIKE $2",
    )
    .bind(base)
    .bind(format!("{base}-%"))
    .fetch_all(&mut **tx)
    .await?;
    let taken: HashSet<String> = taken.into_iter().collect();
    let name = (0..=taken.len() as u32)
        .map(|n| given_name_candidate(base, n))
        .find(|c| !taken.contains(c))
        .unwrap_or_else(|| given_name_candidate(base, taken.len() as u32 + 1));
    Ok(name)
}
