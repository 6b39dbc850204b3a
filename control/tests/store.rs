//! The store against real SQLite files and a real PostgreSQL server.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{Duration, Utc};
use meshscale_control::config::DatabaseTarget;
use meshscale_control::ipam::IpPrefixes;
use meshscale_control::metrics::Metrics;
use meshscale_control::store::{
    ApiKeySelector, NewNode, NewPreAuthKey, NewUser, RegisterMethod, Store, StoreError, UserFilter,
};
use support::{Db, backends, target};

fn prefixes(v4: &str, v6: &str) -> IpPrefixes {
    IpPrefixes::new(v4.parse().unwrap(), v6.parse().unwrap()).unwrap()
}

fn default_prefixes() -> IpPrefixes {
    prefixes("100.64.0.0/10", "fd7a:115c:a1e0::/48")
}

async fn open(t: &DatabaseTarget, p: IpPrefixes) -> Store {
    Store::open(t, p, Metrics::new()).await.expect("open store")
}

fn new_node(machine: &str, host: &str, user_id: i64) -> NewNode {
    NewNode {
        machine_key: format!("mkey:{machine:0>64}"),
        node_key: format!("nodekey:{machine:0>64}"),
        disco_key: String::new(),
        hostname: host.into(),
        user_id,
        tags: vec![],
        ephemeral: false,
        auth_key_id: None,
        register_method: RegisterMethod::Cli,
        expiry: None,
    }
}

async fn user(store: &Store, name: &str) -> i64 {
    store
        .create_user(NewUser {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn users_keys_and_bad_input() {
    for db in backends() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&target(&db, dir.path()).await, default_prefixes()).await;
        let ctx = db.name();
        let u = store
            .create_user(NewUser {
                name: "vpn1".into(),
                email: "a@b.c".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(u.id, 1, "{ctx}");
        assert!(
            matches!(
                store
                    .create_user(NewUser {
                        name: "vpn1".into(),
                        ..Default::default()
                    })
                    .await,
                Err(StoreError::AlreadyExists(_))
            ),
            "{ctx}"
        );
        assert!(
            matches!(
                store
                    .create_user(NewUser {
                        name: "Bad_Name".into(),
                        ..Default::default()
                    })
                    .await,
                Err(StoreError::Invalid(_))
            ),
            "{ctx}"
        );
        let found = store
            .list_users(&UserFilter {
                email: Some("a@b.c".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{ctx}");
        assert_eq!(store.resolve_user("1").await.unwrap().name, "vpn1", "{ctx}");
        assert!(
            matches!(
                store.resolve_user("nobody").await,
                Err(StoreError::NotFound(_))
            ),
            "{ctx}"
        );
        let renamed = store.rename_user(u.id, "vpn2").await.unwrap();
        assert_eq!(renamed.name, "vpn2", "{ctx}");
        assert!(
            matches!(
                store.rename_user(99, "x").await,
                Err(StoreError::NotFound(_))
            ),
            "{ctx}"
        );

        let expiration = Utc::now() + Duration::hours(24);
        let (key, full) = store
            .create_preauth_key(NewPreAuthKey {
                user_id: Some(u.id),
                reusable: true,
                ephemeral: true,
                tags: vec![],
                expiration,
            })
            .await
            .unwrap();
        assert!(
            full.starts_with("mskey-auth-") && full.contains(&key.prefix),
            "{ctx}"
        );
        let listed = store.list_preauth_keys(Some(u.id)).await.unwrap();
        assert_eq!(listed.len(), 1, "{ctx}");
        assert!(
            listed[0].reusable && listed[0].ephemeral && !listed[0].used,
            "{ctx}"
        );
        store.expire_preauth_key(key.id).await.unwrap();
        assert!(
            store.preauth_key_by_id(key.id).await.unwrap().expiration <= Utc::now(),
            "{ctx}"
        );
        assert!(
            matches!(
                store
                    .create_preauth_key(NewPreAuthKey {
                        user_id: Some(u.id),
                        reusable: false,
                        ephemeral: false,
                        tags: vec![],
                        expiration: Utc::now() - Duration::hours(1)
                    })
                    .await,
                Err(StoreError::Invalid(_))
            ),
            "{ctx}"
        );
        assert!(
            matches!(
                store
                    .create_preauth_key(NewPreAuthKey {
                        user_id: Some(42),
                        reusable: false,
                        ephemeral: false,
                        tags: vec![],
                        expiration
                    })
                    .await,
                Err(StoreError::NotFound(_))
            ),
            "{ctx}"
        );
        assert!(
            matches!(
                store.expire_preauth_key(999).await,
                Err(StoreError::NotFound(_))
            ),
            "{ctx}"
        );

        let (api, api_full) = store
            .create_api_key(Utc::now() + Duration::days(90))
            .await
            .unwrap();
        assert_eq!(
            store.verify_api_key(&api_full).await.unwrap().id,
            api.id,
            "{ctx}"
        );
        assert!(
            store
                .verify_api_key(&api_full.replace(&api.prefix, "000000000000"))
                .await
                .is_err(),
            "{ctx}"
        );
        let mut tampered = api_full.clone();
        tampered.pop();
        tampered.push(if api_full.ends_with('0') { '1' } else { '0' });
        assert!(store.verify_api_key(&tampered).await.is_err(), "{ctx}");
        store
            .expire_api_key(&ApiKeySelector::Prefix(api.prefix.clone()))
            .await
            .unwrap();
        assert!(
            store.verify_api_key(&api_full).await.is_err(),
            "{ctx}: expired key must be refused"
        );
        store
            .delete_api_key(&ApiKeySelector::Id(api.id))
            .await
            .unwrap();
        assert!(store.list_api_keys().await.unwrap().is_empty(), "{ctx}");
        assert!(
            matches!(
                store.delete_api_key(&ApiKeySelector::Id(api.id)).await,
                Err(StoreError::NotFound(_))
            ),
            "{ctx}"
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_never_share_an_address() {
    for db in backends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&target(&db, dir.path()).await, default_prefixes()).await);
        let uid = user(&store, "vpn1").await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .register_node(new_node(&format!("{i:x}"), "host", uid))
                    .await
            }));
        }
        let mut v4 = HashSet::new();
        let mut v6 = HashSet::new();
        let mut names = HashSet::new();
        for t in tasks {
            let n = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", db.name()));
            assert!(
                v4.insert(n.ipv4.unwrap()),
                "{}: duplicate {:?}",
                db.name(),
                n.ipv4
            );
            assert!(
                v6.insert(n.ipv6.unwrap()),
                "{}: duplicate {:?}",
                db.name(),
                n.ipv6
            );
            assert!(
                names.insert(n.given_name.clone()),
                "{}: duplicate name",
                db.name()
            );
        }
        let expected: HashSet<_> = (1..=200u32)
            .map(|i| {
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i)
            })
            .collect();
        assert_eq!(v4, expected, "{}: sequential from 100.64.0.1", db.name());
        assert!(
            names.contains("host") && names.contains("host-199"),
            "{}",
            db.name()
        );
        assert_eq!(store.list_nodes(None).await.unwrap().len(), 200);
        store.close().await;
    }
}

#[tokio::test]
async fn deleted_addresses_come_back_only_after_the_range_wraps_even_across_restarts() {
    for db in backends() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(&db, dir.path()).await;
        // /29 holds six hosts: .1 to .6.
        let small = prefixes("100.64.0.0/29", "fd7a:115c:a1e0::/120");
        let store = open(&t, small).await;
        let uid = user(&store, "vpn1").await;
        let a = store.register_node(new_node("a", "a", uid)).await.unwrap();
        let b = store.register_node(new_node("b", "b", uid)).await.unwrap();
        assert_eq!(a.ipv4.unwrap().to_string(), "100.64.0.1");
        assert_eq!(a.ipv6.unwrap().to_string(), "fd7a:115c:a1e0::1");
        assert_eq!(b.ipv4.unwrap().to_string(), "100.64.0.2");
        store.delete_node(b.id).await.unwrap();
        store.close().await;

        let store = open(&t, small).await;
        let c = store.register_node(new_node("c", "c", uid)).await.unwrap();
        assert_eq!(
            c.ipv4.unwrap().to_string(),
            "100.64.0.3",
            "{}: the freed .2 must wait",
            db.name()
        );
        for m in ["d", "e", "f"] {
            store.register_node(new_node(m, m, uid)).await.unwrap();
        }
        let g = store.register_node(new_node("g", "g", uid)).await.unwrap();
        assert_eq!(
            g.ipv4.unwrap().to_string(),
            "100.64.0.2",
            "{}: reused after wrapping",
            db.name()
        );
        assert!(
            matches!(
                store.register_node(new_node("h", "h", uid)).await,
                Err(StoreError::Exhausted("IPv4", _))
            ),
            "{}",
            db.name()
        );
        store.close().await;
    }
}

#[tokio::test]
async fn relogin_keeps_identity_and_destroy_expels() {
    for db in backends() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(&db, dir.path()).await;
        let store = open(&t, default_prefixes()).await;
        let u1 = user(&store, "vpn1").await;
        let u2 = user(&store, "vpn2").await;
        let first = store
            .register_node(new_node("m1", "Web Server", u1))
            .await
            .unwrap();
        assert_eq!(first.given_name, "web-server");
        let mut again = new_node("m1", "Web Server", u2);
        again.node_key = format!("nodekey:{:1>64}", "");
        let second = store.register_node(again).await.unwrap();
        assert_eq!(
            (second.id, second.ipv4, second.ipv6),
            (first.id, first.ipv4, first.ipv6),
            "{}",
            db.name()
        );
        assert_eq!(second.user.id, u2);
        let other = store
            .register_node(new_node("m2", "web server", u1))
            .await
            .unwrap();
        assert_eq!(other.given_name, "web-server-1");
        assert!(matches!(
            store.rename_node(other.id, "web-server").await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.rename_node(other.id, "No Spaces").await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            store.rename_node(other.id, "db").await.unwrap().given_name,
            "db"
        );
        let expired = store
            .set_node_expiry(other.id, Some(Utc::now() - Duration::seconds(1)))
            .await
            .unwrap();
        assert!(expired.is_expired(Utc::now()));
        assert!(
            store
                .set_node_expiry(other.id, None)
                .await
                .unwrap()
                .expiry
                .is_none()
        );
        assert_eq!(store.move_node(other.id, u2).await.unwrap().user.id, u2);
        assert!(matches!(
            store.move_node(other.id, 77).await,
            Err(StoreError::NotFound(_))
        ));
        let tagged = store
            .set_node_tags(other.id, &["tag:b".into(), "tag:a".into(), "tag:a".into()])
            .await
            .unwrap();
        assert_eq!(tagged.tags, ["tag:a", "tag:b"]);
        assert!(matches!(
            store.set_node_tags(other.id, &["nottag".into()]).await,
            Err(StoreError::Invalid(_))
        ));

        let expiration = Utc::now() + Duration::hours(1);
        store
            .create_preauth_key(NewPreAuthKey {
                user_id: Some(u2),
                reusable: false,
                ephemeral: false,
                tags: vec![],
                expiration,
            })
            .await
            .unwrap();
        let expelled = store.destroy_user(u2).await.unwrap();
        assert_eq!(expelled.len(), 2, "{}", db.name());
        assert!(store.list_nodes(None).await.unwrap().is_empty());
        assert!(store.list_preauth_keys(None).await.unwrap().is_empty());
        assert!(matches!(
            store.destroy_user(u2).await,
            Err(StoreError::NotFound(_))
        ));
        store.close().await;

        // Everything that was committed is there after a restart.
        let store = open(&t, default_prefixes()).await;
        assert_eq!(
            store
                .list_users(&UserFilter::default())
                .await
                .unwrap()
                .len(),
            1
        );
        store.close().await;
    }
}

#[tokio::test]
async fn sqlite_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = target(&Db::Sqlite, dir.path()).await;
    let store = open(&t, default_prefixes()).await;
    let mode = std::fs::metadata(dir.path().join("db.sqlite"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    store.close().await;
}
