-- The access policy in `policy.mode: database`, as Headscale keeps it: one row per
-- `policy set`, the newest (highest id) in force. The text is stored exactly as given
-- (comments and all); times are Unix milliseconds.
-- Kept column-for-column identical to migrations/postgres/0002_policies.sql.

CREATE TABLE policies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
