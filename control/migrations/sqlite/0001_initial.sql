-- Times are Unix milliseconds (UTC); flags are 0/1 integers; lists are JSON text.
-- Kept column-for-column identical to migrations/postgres/0001_initial.sql.

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    display_name    TEXT    NOT NULL DEFAULT '',
    email           TEXT    NOT NULL DEFAULT '',
    profile_pic_url TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL
);

CREATE TABLE pre_auth_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix     TEXT    NOT NULL UNIQUE,
    hash       TEXT    NOT NULL,
    user_id    INTEGER REFERENCES users (id) ON DELETE CASCADE,
    reusable   INTEGER NOT NULL,
    ephemeral  INTEGER NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0,
    tags       TEXT    NOT NULL DEFAULT '[]',
    expiration INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX pre_auth_keys_user ON pre_auth_keys (user_id);

CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix     TEXT    NOT NULL UNIQUE,
    hash       TEXT    NOT NULL,
    expiration INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER
);

CREATE TABLE nodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_key     TEXT    NOT NULL UNIQUE,
    node_key        TEXT    NOT NULL,
    disco_key       TEXT    NOT NULL DEFAULT '',
    hostname        TEXT    NOT NULL,
    given_name      TEXT    NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    ipv4            TEXT UNIQUE,
    ipv6            TEXT UNIQUE,
    tags            TEXT    NOT NULL DEFAULT '[]',
    ephemeral       INTEGER NOT NULL DEFAULT 0,
    auth_key_id     INTEGER REFERENCES pre_auth_keys (id) ON DELETE SET NULL,
    register_method INTEGER NOT NULL,
    hostinfo        TEXT    NOT NULL DEFAULT '{}',
    endpoints       TEXT    NOT NULL DEFAULT '[]',
    expiry          INTEGER,
    last_seen       INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX nodes_user ON nodes (user_id);
CREATE INDEX nodes_node_key ON nodes (node_key);

-- The last address handed out per family: allocation walks forward from here,
-- so a deleted node's address is reused only once the range has wrapped.
CREATE TABLE ip_cursors (
    family TEXT PRIMARY KEY,
    last   TEXT NOT NULL
);
INSERT INTO ip_cursors (family, last) VALUES ('v4', ''), ('v6', '');
