//! Shared by the integration tests: real databases to run against.
//!
//! SQLite always; PostgreSQL from `MESHSCALE_TEST_POSTGRES_URL` (the test
//! command starts one). Without that variable the PostgreSQL half fails,
//! unless `MESHSCALE_TEST_SKIP_POSTGRES=1` says to skip it on purpose.

#![allow(dead_code)]

use std::path::Path;

pub mod server;

use meshscale_control::config::DatabaseTarget;
use rand::RngCore;
use sqlx::Executor;

pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

pub fn postgres_url() -> Option<String> {
    match std::env::var("MESHSCALE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("MESHSCALE_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
                eprintln!("PostgreSQL tests skipped: MESHSCALE_TEST_SKIP_POSTGRES=1");
                None
            } else {
                panic!(
                    "MESHSCALE_TEST_POSTGRES_URL is not set: run the tests through e2e/test-all.sh, \
                     or set MESHSCALE_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL half on purpose"
                )
            }
        }
    }
}

/// The backends this run covers.
pub fn backends() -> Vec<Db> {
    let mut v = vec![Db::Sqlite];
    if postgres_url().is_some() {
        v.push(Db::Postgres);
    }
    v
}

/// A fresh, empty database of the given kind, private to one test.
pub struct FreshDb {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// Creates an empty PostgreSQL database on the test server and returns how to reach it.
pub async fn fresh_postgres() -> FreshDb {
    let url = postgres_url().expect("postgres url");
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&url)
        .await
        .expect("connect to the test PostgreSQL server");
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    let name = format!("meshscale_test_{}", hex::encode(b));
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    admin.close().await;
    // postgres://user@host:port/db
    let rest = url.split("://").nth(1).expect("url scheme");
    let (auth, hostpart) = rest.split_once('@').expect("url user");
    let user = auth.split(':').next().unwrap_or("postgres").to_string();
    let hostport = hostpart.split('/').next().expect("url host");
    let (host, port) = hostport.rsplit_once(':').expect("url port");
    FreshDb {
        name,
        host: host.to_string(),
        port: port.parse().expect("port"),
        user,
    }
}

pub fn postgres_target(db: &FreshDb) -> DatabaseTarget {
    DatabaseTarget::Postgres {
        url: format!(
            "postgres://{}@{}:{}/{}?sslmode=disable",
            db.user, db.host, db.port, db.name
        ),
        max_connections: 10,
    }
}

pub async fn target(kind: &Db, dir: &Path) -> DatabaseTarget {
    match kind {
        Db::Sqlite => DatabaseTarget::Sqlite {
            path: dir.join("db.sqlite"),
            write_ahead_log: true,
        },
        Db::Postgres => postgres_target(&fresh_postgres().await),
    }
}
