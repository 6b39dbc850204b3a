//! The control server's URL (`--login-server`), taken apart once.
//!
//! Unlike Go's `controlhttp` this client does not race port 80 against 443:
//! `http://` dials plain TCP and `https://` dials TLS, each on the URL's port
//! (default 80/443). That is what a self-hosted server with one listener
//! needs, and it keeps a test's connection on the port the test chose.

use std::fmt;
use std::str::FromStr;

use hyper::Uri;

/// Why a server URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid server URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("server URL scheme must be http or https, not {0:?}")]
    UnsupportedScheme(String),
    #[error("server URL {0:?} has no host")]
    MissingHost(String),
}

/// A parsed `http://` or `https://` control server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    tls: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    explicit_port: bool,
    /// Path prefix without a trailing slash ("" for none). Go appends
    /// `/key` to the whole server URL but dials `/ts2021` at the root.
    base_path: String,
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| UrlError::Invalid {
            url: s.to_string(),
            reason,
        };
        let uri: Uri = s.trim().parse().map_err(|e| invalid(format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(UrlError::UnsupportedScheme(other.to_string())),
            None => return Err(UrlError::UnsupportedScheme(String::new())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| UrlError::MissingHost(s.to_string()))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported".into()));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(UrlError::MissingHost(s.to_string()));
        }
        // Parsed here: `Authority::port` turns an out-of-range port into
        // "no port", which would silently dial the default one.
        let port_text = authority
            .as_str()
            .strip_prefix(authority.host())
            .and_then(|rest| rest.strip_prefix(':'));
        let explicit_port = port_text.is_some();
        let port = match port_text {
            None if tls => 443,
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(invalid("invalid port".into())),
            },
        };
        Ok(Self {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            explicit_port,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.base_path)
    }
}

impl ServerUrl {
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host name or address, IPv6 without brackets (for DNS, TLS SNI).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]` as written in a `Host` header or `:authority`: IPv6 in
    /// brackets, the port only if the URL had one (as Go's `url.Host`).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }

    /// Where to connect: `(host, port)`.
    pub fn socket_target(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// `GET` path of the server key for a capability version.
    pub fn key_path(&self, capability_version: u16) -> String {
        format!("{}/key?v={capability_version}", self.base_path)
    }

    /// Path of the Noise upgrade (`controlhttp`'s `serverUpgradePath`).
    pub fn upgrade_path(&self) -> &'static str {
        "/ts2021"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_login_servers_look_like() {
        let u: ServerUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert!(!u.is_tls());
        assert_eq!(u.socket_target(), ("127.0.0.1", 8080));
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        assert_eq!(u.key_path(133), "/key?v=133");
        assert_eq!(u.to_string(), "http://127.0.0.1:8080");

        let u: ServerUrl = "https://Mesh.Example.com/".parse().unwrap();
        assert!(u.is_tls());
        assert_eq!(u.socket_target(), ("mesh.example.com", 443));
        assert_eq!(u.host_header(), "mesh.example.com");

        let u: ServerUrl = "https://[::1]:8443/prefix/".parse().unwrap();
        assert_eq!(u.host(), "::1");
        assert_eq!(u.host_header(), "[::1]:8443");
        assert_eq!(u.key_path(130), "/prefix/key?v=130");
        assert_eq!(u.upgrade_path(), "/ts2021");

        let u: ServerUrl = "https://h:65535".parse().unwrap();
        assert_eq!(u.port(), 65535);
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http://user@host",
            "http://host:0",
            "http://host:99999",
            "http://host:",
            "http://[::1",
            "not a url",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad:?}");
        }
    }
}
