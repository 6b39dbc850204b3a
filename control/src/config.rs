//! The server's configuration: a YAML file modelled on Headscale's
//! `config.yaml`, every key optional, each overridable by a `MESHSCALE_*`
//! environment variable named after its path (`database.sqlite.path` →
//! `MESHSCALE_DATABASE_SQLITE_PATH`).
//!
//! Loading is three steps so that every error can name the key at fault:
//! YAML → generic tree, environment overrides applied to the tree, tree →
//! typed [`Config`] (unknown keys refused), then [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::duration::parse_duration;
use crate::ipam::{IpPrefixes, Prefix4, Prefix6};
use crate::names::validate_dns_name;

/// A config file larger than this is refused before parsing; real ones are a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Where the server looks for a config file when none is named.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/meshscale/config.yaml"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Key { key: String, problem: String },
}

impl ConfigError {
    fn key(key: &str, problem: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The URL clients use to reach this server; announced in register URLs and the DERP map.
    pub server_url: String,
    /// Where the node protocol, `/health` and `/register/<id>` are served.
    pub listen_addr: String,
    /// Where `/metrics` is served.
    pub metrics_listen_addr: String,
    /// Remote admin API (gRPC over TLS, API key required).
    pub grpc_listen_addr: String,
    /// Serve the remote admin API without TLS (still behind an API key), for a TLS-terminating proxy in front.
    pub grpc_allow_insecure: bool,
    pub tls_cert_path: String,
    pub tls_key_path: String,
    /// Directory for the default SQLite file and key files.
    pub data_dir: String,
    /// The local admin API socket the CLI uses; owner-only by default.
    pub unix_socket: String,
    pub unix_socket_permission: String,
    pub noise: NoiseConfig,
    pub prefixes: PrefixesConfig,
    pub database: DatabaseConfig,
    pub derp: DerpConfig,
    pub ephemeral_node_inactivity_timeout: String,
    pub dns: DnsConfig,
    pub log: LogConfig,
    /// Per-connection deadlines against stalled and hostile clients.
    pub timeouts: TimeoutsConfig,
    /// The access policy (Headscale's `policy` keys).
    pub policy: PolicyConfig,
}

/// Where the access policy comes from, as Headscale's `policy.mode` /
/// `policy.path`. `file` with an empty path, or `database` with nothing
/// stored yet, means no policy: every node may reach every other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `file` (read `path`, reloaded on SIGHUP and when it changes) or
    /// `database` (set with `meshscale policy set`).
    pub mode: String,
    /// The HuJSON policy file, in `file` mode.
    pub path: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: "file".into(),
            path: String::new(),
        }
    }
}

/// [`PolicyConfig`], validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// No policy file: allow-all.
    None,
    File(PathBuf),
    Database,
}

/// Durations (`10s`, `1m`) after which the server gives up on a connection
/// that has not made progress; see `docs/reliability.md` for the full table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP accept to a finished TLS handshake on `listen_addr`.
    pub tls_handshake: String,
    /// TCP accept (or the end of the previous request) to complete request
    /// headers on `listen_addr`: stalled and slowloris connections.
    pub http_header_read: String,
    /// `/ts2021` upgrade to the client's HTTP/2 preface inside Noise.
    pub noise_handshake: String,
    /// `/derp` upgrade to the client's authenticated ClientInfo.
    pub derp_handshake: String,
    /// How often the DERP relay re-checks that each connected node key
    /// still belongs to a registered, unexpired node; connections of nodes
    /// deleted or expired since are closed.
    pub derp_verify_interval: String,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            tls_handshake: "10s".into(),
            http_header_read: "10s".into(),
            noise_handshake: "10s".into(),
            derp_handshake: "10s".into(),
            derp_verify_interval: "30s".into(),
        }
    }
}

/// [`TimeoutsConfig`], parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub http_header_read: Duration,
    pub noise_handshake: Duration,
    pub derp_handshake: Duration,
    pub derp_verify_interval: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    /// Empty: `<data_dir>/noise_private.key`.
    pub private_key_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixesConfig {
    pub v4: String,
    pub v6: String,
    /// Only `sequential` is implemented, Headscale's default.
    pub allocation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// Empty: `<data_dir>/db.sqlite`.
    pub path: String,
    pub write_ahead_log: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub pass: String,
    pub max_open_conns: u32,
    /// `disable`, `prefer` or `require`, as libpq's sslmode.
    pub ssl: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DerpConfig {
    pub server: DerpServerConfig,
    /// Extra DERP map files (JSON, tailcfg.DERPMap shape) merged with the embedded region.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DerpServerConfig {
    pub enabled: bool,
    pub region_id: u32,
    pub region_code: String,
    pub region_name: String,
    pub stun_listen_addr: String,
    /// Empty: `<data_dir>/derp_server_private.key`.
    pub private_key_path: String,
    pub ipv4: String,
    pub ipv6: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    pub magic_dns: bool,
    pub base_domain: String,
    pub nameservers: NameserversConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NameserversConfig {
    pub global: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `meshscale_control=debug,info`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_url: "http://127.0.0.1:8080".into(),
            listen_addr: "127.0.0.1:8080".into(),
            metrics_listen_addr: "127.0.0.1:9090".into(),
            grpc_listen_addr: "127.0.0.1:50443".into(),
            grpc_allow_insecure: false,
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
            data_dir: "/var/lib/meshscale".into(),
            unix_socket: "/var/run/meshscale/meshscale.sock".into(),
            unix_socket_permission: "0700".into(),
            noise: NoiseConfig::default(),
            prefixes: PrefixesConfig::default(),
            database: DatabaseConfig::default(),
            derp: DerpConfig::default(),
            ephemeral_node_inactivity_timeout: "30m".into(),
            dns: DnsConfig::default(),
            log: LogConfig::default(),
            timeouts: TimeoutsConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl Default for PrefixesConfig {
    fn default() -> Self {
        PrefixesConfig {
            v4: "100.64.0.0/10".into(),
            v6: "fd7a:115c:a1e0::/48".into(),
            allocation: "sequential".into(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            kind: "sqlite".into(),
            sqlite: SqliteConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: String::new(),
            write_ahead_log: true,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            host: "localhost".into(),
            port: 5432,
            name: "meshscale".into(),
            user: "meshscale".into(),
            pass: String::new(),
            max_open_conns: 10,
            ssl: "disable".into(),
        }
    }
}

impl Default for DerpServerConfig {
    fn default() -> Self {
        DerpServerConfig {
            enabled: true,
            region_id: 999,
            region_code: "meshscale".into(),
            region_name: "Meshscale Embedded DERP".into(),
            stun_listen_addr: "0.0.0.0:3478".into(),
            private_key_path: String::new(),
            ipv4: String::new(),
            ipv6: String::new(),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            magic_dns: true,
            base_domain: "mesh.internal".into(),
            nameservers: NameserversConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Which store to open, with everything needed to open it.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    Sqlite {
        path: PathBuf,
        write_ahead_log: bool,
    },
    Postgres {
        url: String,
        max_connections: u32,
    },
}

impl Config {
    /// Loads the named file, or the first default path that exists, or
    /// nothing; applies the environment; validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("MESHSCALE_"))
            .collect();
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        let text = match &file {
            Some(p) => Some(read_bounded(p)?),
            None => None,
        };
        Self::from_sources(file.as_deref(), text.as_deref(), &env)
    }

    /// The pure part of [`Config::load`]: file text (if any) plus environment.
    pub fn from_sources(
        file: Option<&Path>,
        text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let file_name = file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<none>"));
        let mut tree = match text {
            Some(t) if !t.trim().is_empty() => {
                serde_yaml::from_str::<Value>(t).map_err(|e| ConfigError::Yaml {
                    path: file_name.clone(),
                    message: e.to_string(),
                })?
            }
            _ => Value::Mapping(Mapping::new()),
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        if !tree.is_mapping() {
            return Err(ConfigError::Yaml {
                path: file_name,
                message: "the top level must be a mapping".into(),
            });
        }
        apply_env(&mut tree, env)?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::key(
                if key == "." { "<root>" } else { &key },
                e.into_inner().to_string(),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value whose type alone does not make it valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = parse_server_url(&self.server_url)?;
        for (key, value) in [
            ("listen_addr", &self.listen_addr),
            ("metrics_listen_addr", &self.metrics_listen_addr),
        ] {
            parse_addr(key, value)?;
        }
        if !self.grpc_listen_addr.is_empty() {
            parse_addr("grpc_listen_addr", &self.grpc_listen_addr)?;
        }
        if self.tls_cert_path.is_empty() != self.tls_key_path.is_empty() {
            return Err(ConfigError::key(
                "tls_cert_path",
                "tls_cert_path and tls_key_path must be set together",
            ));
        }
        if self.unix_socket.is_empty() {
            return Err(ConfigError::key("unix_socket", "must not be empty"));
        }
        self.socket_mode()?;
        self.ip_prefixes()?;
        if self.prefixes.allocation != "sequential" {
            return Err(ConfigError::key(
                "prefixes.allocation",
                "only `sequential` is supported",
            ));
        }
        self.database_target()?;
        self.ephemeral_inactivity_timeout()?;
        self.timeouts()?;
        self.policy_source()?;
        if self.derp.server.enabled {
            parse_addr(
                "derp.server.stun_listen_addr",
                &self.derp.server.stun_listen_addr,
            )?;
            if self.derp.server.region_code.is_empty() {
                return Err(ConfigError::key(
                    "derp.server.region_code",
                    "must not be empty",
                ));
            }
        }
        if self.dns.magic_dns {
            let base = &self.dns.base_domain;
            validate_dns_name(base).map_err(|e| ConfigError::key("dns.base_domain", e))?;
            let host = url.host.to_ascii_lowercase();
            if host == *base || host.ends_with(&format!(".{base}")) {
                return Err(ConfigError::key(
                    "dns.base_domain",
                    format!(
                        "must not be {host} or a parent of it: clients would resolve the control server inside the mesh"
                    ),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::key("log.level", e.to_string()))?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::key("log.format", "must be `text` or `json`"));
        }
        Ok(())
    }

    pub fn ip_prefixes(&self) -> Result<IpPrefixes, ConfigError> {
        let v4: Prefix4 = self
            .prefixes
            .v4
            .parse()
            .map_err(|e| ConfigError::key("prefixes.v4", e))?;
        let v6: Prefix6 = self
            .prefixes
            .v6
            .parse()
            .map_err(|e| ConfigError::key("prefixes.v6", e))?;
        IpPrefixes::new(v4, v6).map_err(|(key, e)| ConfigError::key(key, e))
    }

    pub fn ephemeral_inactivity_timeout(&self) -> Result<Duration, ConfigError> {
        parse_duration(&self.ephemeral_node_inactivity_timeout)
            .map_err(|e| ConfigError::key("ephemeral_node_inactivity_timeout", e.to_string()))
    }

    pub fn timeouts(&self) -> Result<Timeouts, ConfigError> {
        let t = &self.timeouts;
        let parse = |key: &str, value: &str| {
            let d = parse_duration(value)
                .map_err(|e| ConfigError::key(&format!("timeouts.{key}"), e.to_string()))?;
            // Zero would close every connection at once, not disable the check.
            if d.is_zero() {
                return Err(ConfigError::key(
                    &format!("timeouts.{key}"),
                    "must be longer than zero",
                ));
            }
            Ok(d)
        };
        Ok(Timeouts {
            tls_handshake: parse("tls_handshake", &t.tls_handshake)?,
            http_header_read: parse("http_header_read", &t.http_header_read)?,
            noise_handshake: parse("noise_handshake", &t.noise_handshake)?,
            derp_handshake: parse("derp_handshake", &t.derp_handshake)?,
            derp_verify_interval: parse("derp_verify_interval", &t.derp_verify_interval)?,
        })
    }

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let text = self.unix_socket_permission.trim_start_matches("0o");
        u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ConfigError::key(
                    "unix_socket_permission",
                    "must be an octal mode such as 0700",
                )
            })
    }

    pub fn policy_source(&self) -> Result<PolicySource, ConfigError> {
        match self.policy.mode.as_str() {
            "file" if self.policy.path.is_empty() => Ok(PolicySource::None),
            "file" => Ok(PolicySource::File(PathBuf::from(&self.policy.path))),
            "database" if self.policy.path.is_empty() => Ok(PolicySource::Database),
            "database" => Err(ConfigError::key(
                "policy.path",
                "must be empty in `database` mode (the policy is set with `meshscale policy set`)",
            )),
            _ => Err(ConfigError::key(
                "policy.mode",
                "must be `file` or `database`",
            )),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.data_dir)
    }

    /// A path key that may be empty, meaning "this file in the data dir".
    fn in_data_dir(&self, value: &str, default_name: &str) -> PathBuf {
        if value.is_empty() {
            self.data_dir().join(default_name)
        } else {
            PathBuf::from(value)
        }
    }

    pub fn noise_private_key_path(&self) -> PathBuf {
        self.in_data_dir(&self.noise.private_key_path, "noise_private.key")
    }

    pub fn derp_private_key_path(&self) -> PathBuf {
        self.in_data_dir(
            &self.derp.server.private_key_path,
            "derp_server_private.key",
        )
    }

    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        match self.database.kind.as_str() {
            "sqlite" | "sqlite3" => Ok(DatabaseTarget::Sqlite {
                path: self.in_data_dir(&self.database.sqlite.path, "db.sqlite"),
                write_ahead_log: self.database.sqlite.write_ahead_log,
            }),
            "postgres" | "postgresql" => {
                let pg = &self.database.postgres;
                if pg.host.is_empty() {
                    return Err(ConfigError::key(
                        "database.postgres.host",
                        "must not be empty",
                    ));
                }
                if !matches!(
                    pg.ssl.as_str(),
                    "disable" | "prefer" | "require" | "false" | "true"
                ) {
                    return Err(ConfigError::key(
                        "database.postgres.ssl",
                        "must be disable, prefer or require",
                    ));
                }
                if pg.max_open_conns == 0 {
                    return Err(ConfigError::key(
                        "database.postgres.max_open_conns",
                        "must be at least 1",
                    ));
                }
                let sslmode = match pg.ssl.as_str() {
                    "false" => "disable",
                    "true" => "require",
                    other => other,
                };
                let auth = if pg.pass.is_empty() {
                    percent_encode(&pg.user)
                } else {
                    format!("{}:{}", percent_encode(&pg.user), percent_encode(&pg.pass))
                };
                // A host starting with '/' is a unix socket directory, which URLs carry as a query parameter.
                let url = if pg.host.starts_with('/') {
                    format!(
                        "postgres://{auth}@localhost:{}/{}?host={}&sslmode={sslmode}",
                        pg.port,
                        percent_encode(&pg.name),
                        percent_encode(&pg.host)
                    )
                } else {
                    format!(
                        "postgres://{auth}@{}:{}/{}?sslmode={sslmode}",
                        pg.host,
                        pg.port,
                        percent_encode(&pg.name)
                    )
                };
                Ok(DatabaseTarget::Postgres {
                    url,
                    max_connections: pg.max_open_conns,
                })
            }
            other => Err(ConfigError::key(
                "database.type",
                format!("`{other}` is not one of sqlite, postgres"),
            )),
        }
    }

    pub fn listen_socket_addr(&self) -> SocketAddr {
        // validate() has checked it; the fallback keeps this total.
        self.listen_addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn metrics_socket_addr(&self) -> SocketAddr {
        self.metrics_listen_addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090)))
    }
}

fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path: path.into() });
    }
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })
}

struct ServerUrl {
    host: String,
}

fn parse_server_url(url: &str) -> Result<ServerUrl, ConfigError> {
    let bad = |p: &str| ConfigError::key("server_url", format!("{url:?} {p}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_string()
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok(ServerUrl { host })
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::key(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every leaf key path of the config, as the environment variable that overrides it.
fn env_overridable_keys() -> Vec<(String, Vec<String>, Value)> {
    fn walk(prefix: &mut Vec<String>, v: &Value, out: &mut Vec<(String, Vec<String>, Value)>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    if let Some(k) = k.as_str() {
                        prefix.push(k.to_string());
                        walk(prefix, child, out);
                        prefix.pop();
                    }
                }
            }
            leaf => {
                let env = format!("MESHSCALE_{}", prefix.join("_").to_ascii_uppercase());
                out.push((env, prefix.clone(), leaf.clone()));
            }
        }
    }
    let mut out = Vec::new();
    // Serializing the defaults cannot fail: every field is a plain string, number, bool or list.
    if let Ok(defaults) = serde_yaml::to_value(Config::default()) {
        walk(&mut Vec::new(), &defaults, &mut out);
    }
    out
}

/// Environment variables that are not config keys (CLI settings, test knobs).
const NON_CONFIG_ENV: &[&str] = &[
    "MESHSCALE_CONFIG",
    "MESHSCALE_CLI_",
    "MESHSCALE_TEST_",
    "MESHSCALE_LOG",
];

fn apply_env(tree: &mut Value, env: &[(String, String)]) -> Result<(), ConfigError> {
    let keys = env_overridable_keys();
    for (name, raw) in env {
        if NON_CONFIG_ENV.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Some((_, path, default)) = keys.iter().find(|(env_name, _, _)| env_name == name) else {
            continue;
        };
        let dotted = path.join(".");
        // Strings stay strings ("0700" must not become the number 700); other
        // types take the YAML reading of the text ("true", "8080", "[a, b]").
        let value = if default.is_string() {
            Value::String(raw.clone())
        } else {
            serde_yaml::from_str(raw).map_err(|e| {
                ConfigError::key(&dotted, format!("environment variable {name}: {e}"))
            })?
        };
        set_path(tree, path, value);
    }
    Ok(())
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = node else { return };
        node = m
            .entry(Value::String(p.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(m) = node {
        m.insert(Value::String(last.clone()), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(Some(Path::new("test.yaml")), Some(text), &env)
    }

    #[test]
    fn empty_config_gives_documented_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        assert_eq!(c.database.kind, "sqlite");
        assert!(
            matches!(c.database_target().unwrap(), DatabaseTarget::Sqlite { path, .. } if path == Path::new("/var/lib/meshscale/db.sqlite"))
        );
        assert_eq!(
            c.ephemeral_inactivity_timeout().unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(c.socket_mode().unwrap(), 0o700);
        let t = c.timeouts().unwrap();
        assert_eq!(t.http_header_read, Duration::from_secs(10));
        assert_eq!(t.derp_verify_interval, Duration::from_secs(30));
        assert_eq!(c.policy_source().unwrap(), PolicySource::None);
    }

    #[test]
    fn policy_modes() {
        let c = load("policy:\n  path: /etc/meshscale/acl.hujson\n", &[]).unwrap();
        assert_eq!(
            c.policy_source().unwrap(),
            PolicySource::File("/etc/meshscale/acl.hujson".into())
        );
        let c = load("", &[("MESHSCALE_POLICY_MODE", "database")]).unwrap();
        assert_eq!(c.policy_source().unwrap(), PolicySource::Database);
    }

    #[test]
    fn file_values_and_env_overrides() {
        let c = load(
            "listen_addr: 0.0.0.0:9000\ndatabase:\n  type: postgres\n  postgres:\n    host: db\n    pass: 'p@ss'\n",
            &[("MESHSCALE_DATABASE_POSTGRES_PORT", "6543"), ("MESHSCALE_UNIX_SOCKET_PERMISSION", "0770")],
        )
        .unwrap();
        assert_eq!(c.listen_addr, "0.0.0.0:9000");
        assert_eq!(c.unix_socket_permission, "0770");
        match c.database_target().unwrap() {
            DatabaseTarget::Postgres { url, .. } => {
                assert_eq!(
                    url,
                    "postgres://meshscale:p%40ss@db:6543/meshscale?sslmode=disable"
                )
            }
            other => panic!("expected postgres, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("listen_addr: nope", &[], "`listen_addr`"),
            ("prefixes:\n  v4: 10.0.0.0/8", &[], "`prefixes.v4`"),
            ("database:\n  type: mysql", &[], "`database.type`"),
            (
                "database:\n  sqlite:\n    write_ahead_log: maybe",
                &[],
                "`database.sqlite.write_ahead_log`",
            ),
            ("bogus_key: 1", &[], "bogus_key"),
            (
                "",
                &[("MESHSCALE_DATABASE_POSTGRES_PORT", "many")],
                "`database.postgres.port`",
            ),
            (
                "ephemeral_node_inactivity_timeout: -5m",
                &[],
                "`ephemeral_node_inactivity_timeout`",
            ),
            (
                "server_url: https://mesh.internal",
                &[],
                "`dns.base_domain`",
            ),
            (
                "unix_socket_permission: rwx",
                &[],
                "`unix_socket_permission`",
            ),
            (
                "timeouts:\n  http_header_read: 0s",
                &[],
                "`timeouts.http_header_read`",
            ),
            ("policy:\n  mode: git", &[], "`policy.mode`"),
            (
                "policy:\n  mode: database\n  path: /etc/acl.hujson",
                &[],
                "`policy.path`",
            ),
            (
                "",
                &[("MESHSCALE_TIMEOUTS_NOISE_HANDSHAKE", "soon")],
                "`timeouts.noise_handshake`",
            ),
        ];
        for (text, env, want) in cases {
            let err = load(text, env).expect_err(text).to_string();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should mention {want}"
            );
        }
    }

    #[test]
    fn non_mapping_yaml_is_refused() {
        assert!(matches!(
            load("- a\n- b", &[]),
            Err(ConfigError::Yaml { .. })
        ));
        assert!(matches!(load("a: [", &[]), Err(ConfigError::Yaml { .. })));
    }
}
