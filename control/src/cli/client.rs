//! The admin API connection: the server's local unix socket by default
//! (trusted: whoever can open the socket is an admin), or a remote server's
//! gRPC port over TLS with an API key sent on every request.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use hyper_util::rt::TokioIo;
use meshscale_api::MeshscaleServiceClient;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use super::times::timeout_arg;

pub(super) type Client = MeshscaleServiceClient<InterceptedService<Channel, Auth>>;

/// The port of the server's `grpc_listen_addr` default, used when `--remote` names none.
const DEFAULT_GRPC_PORT: u16 = 50443;
/// Upper bound for establishing a connection, whatever `--timeout` says.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A CA bundle larger than this is not a CA bundle.
const MAX_CA_BYTES: u64 = 1024 * 1024;
/// Node lists of large tailnets exceed tonic's 4 MiB default.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Args, Clone)]
#[cfg_attr(test, derive(Default))]
#[command(next_help_heading = "Connection")]
pub(super) struct ConnectionArgs {
    /// Admin API of a remote server, HOST:PORT (TLS; default port 50443). Without it the
    /// local unix socket from the config (`unix_socket`) is used
    #[arg(
        long,
        global = true,
        env = "MESHSCALE_CLI_ADDRESS",
        value_name = "HOST:PORT"
    )]
    pub remote: Option<String>,

    /// PEM file of the CA that signed the remote server's certificate [default: the system's trusted roots]
    #[arg(
        long,
        global = true,
        env = "MESHSCALE_CLI_CA_CERT",
        value_name = "FILE"
    )]
    pub ca_cert: Option<PathBuf>,

    /// Name the remote server's certificate must be valid for [default: the host of --remote]
    #[arg(
        long,
        global = true,
        env = "MESHSCALE_CLI_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,

    /// API key for --remote (create one with `meshscale apikeys create`). Prefer the
    /// environment variable: a command-line flag is visible to every local user in `ps`
    #[arg(
        long,
        global = true,
        env = "MESHSCALE_CLI_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// Talk plain HTTP/2, without TLS, to --remote: only for a TLS-terminating proxy in
    /// front of the server (`grpc_allow_insecure: true`). The API key is still sent, in clear
    /// text on the way to the proxy, so use it only on a trusted network path
    #[arg(
        long,
        global = true,
        env = "MESHSCALE_CLI_INSECURE",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new(),
    )]
    pub insecure: bool,

    /// Give up on a request that takes longer than this
    #[arg(long, global = true, env = "MESHSCALE_CLI_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = timeout_arg)]
    pub timeout: Duration,
}

impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("remote", &self.remote)
            .field("ca_cert", &self.ca_cert)
            .field("tls_server_name", &self.tls_server_name)
            // Debug output ends up in panics and logs; the key must not.
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error(
        "cannot reach the meshscale server at {path}: {reason} (is `meshscale serve` running?)"
    )]
    LocalUnreachable { path: String, reason: String },
    #[error(
        "cannot reach the meshscale server at {path}: permission denied (run the command as the user that runs `meshscale serve`, or as root)"
    )]
    LocalPermission { path: String },
    #[error("cannot reach the meshscale server at {address}: {reason}")]
    RemoteUnreachable { address: String, reason: String },
    #[error("invalid remote address {address:?}: {problem}")]
    BadAddress { address: String, problem: String },
    #[error(
        "a remote server needs an API key: set MESHSCALE_CLI_API_KEY (create a key on the server with `meshscale apikeys create`)"
    )]
    MissingApiKey,
    #[error("the API key contains characters that cannot be sent in a request header")]
    BadApiKey,
    #[error(
        "{address} is plain http: set MESHSCALE_CLI_INSECURE=1 to connect without TLS (only behind a TLS-terminating proxy)"
    )]
    PlainHttpNotAllowed { address: String },
    #[error("MESHSCALE_CLI_INSECURE asks for plain http but {address} says https://")]
    InsecureHttps { address: String },
    #[error("cannot use the CA certificate {path}: {problem}")]
    CaCert { path: String, problem: String },
}

/// Adds `authorization: Bearer <key>` to every request of a remote connection.
#[derive(Clone)]
pub(super) struct Auth(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself, should an error ever format this.
        f.write_str(if self.0.is_some() {
            "Auth(bearer)"
        } else {
            "Auth(none)"
        })
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn bearer(api_key: &str) -> Result<MetadataValue<Ascii>, ConnectError> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {api_key}")
        .parse()
        .map_err(|_| ConnectError::BadApiKey)?;
    value.set_sensitive(true);
    Ok(value)
}

/// An RPC failure, shown as the server's message alone: the message is
/// written for admins, the status code and metadata are not.
#[derive(Debug)]
pub(super) struct ApiError(pub tonic::Status);

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self.0.message() {
            "" => self.0.code().description(),
            message => message,
        };
        // Statuses made on this side from a broken connection carry a generic
        // message ("transport error"); the cause is in their source.
        match self.0.source() {
            Some(cause) => f.write_str(&describe(Some(message), Some(cause))),
            None => f.write_str(message),
        }
    }
}

impl StdError for ApiError {}

/// Awaits an RPC and unwraps its answer.
pub(super) async fn call<T>(
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    rpc.await
        .map(tonic::Response::into_inner)
        .map_err(|status| ApiError(status).into())
}

/// Connects as the flags and environment say; `local_socket` is only
/// consulted (it loads the config) when no remote server is named.
pub(super) async fn connect(
    args: &ConnectionArgs,
    local_socket: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Client> {
    let (channel, auth) = match args
        .remote
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        Some(address) => connect_remote(address, args).await?,
        None => (
            connect_local(&local_socket()?, args.timeout).await?,
            Auth(None),
        ),
    };
    Ok(MeshscaleServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_RESPONSE_BYTES))
}

async fn connect_local(path: &Path, timeout: Duration) -> Result<Channel, ConnectError> {
    let shown = path.display().to_string();
    let unreachable = |reason: String| ConnectError::LocalUnreachable {
        path: shown.clone(),
        reason,
    };
    // Dialling once up front gives the io error itself (missing socket,
    // refused, permission), which tonic would bury under "transport error".
    let first = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => return Err(unreachable("timed out".into())),
        Ok(Err(e)) => return Err(local_io_error(&shown, &e)),
        Ok(Ok(stream)) => stream,
    };
    let first = Arc::new(Mutex::new(Some(first)));
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let first = Arc::clone(&first);
        let socket = socket.clone();
        async move {
            // The first connection is the probe's; any reconnection dials again.
            let ready = first.lock().ok().and_then(|mut slot| slot.take());
            let stream = match ready {
                Some(stream) => stream,
                None => UnixStream::connect(&socket).await?,
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://localhost")
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .connect_with_connector(connector)
        .await
        .map_err(|e| unreachable(error_chain(&e)))
}

fn local_io_error(path: &str, e: &std::io::Error) -> ConnectError {
    use std::io::ErrorKind;
    let reason = match e.kind() {
        ErrorKind::PermissionDenied => {
            return ConnectError::LocalPermission {
                path: path.to_string(),
            };
        }
        ErrorKind::NotFound => "no such socket".to_string(),
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => e.to_string(),
    };
    ConnectError::LocalUnreachable {
        path: path.to_string(),
        reason,
    }
}

async fn connect_remote(
    address: &str,
    args: &ConnectionArgs,
) -> Result<(Channel, Auth), ConnectError> {
    let remote = parse_remote(address).map_err(|problem| ConnectError::BadAddress {
        address: address.to_string(),
        problem,
    })?;
    // Checked before dialling: without a key the server would refuse every call anyway.
    let api_key = args
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let auth = Auth(Some(bearer(api_key.ok_or(ConnectError::MissingApiKey)?)?));
    let tls = match (remote.scheme, args.insecure) {
        (Scheme::Https, true) => {
            return Err(ConnectError::InsecureHttps {
                address: address.to_string(),
            });
        }
        (Scheme::Http, false) => {
            return Err(ConnectError::PlainHttpNotAllowed {
                address: address.to_string(),
            });
        }
        (_, insecure) => !insecure,
    };
    let uri = remote.uri(tls);
    let bad = |problem: String| ConnectError::BadAddress {
        address: address.to_string(),
        problem,
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| bad(error_chain(&e)))?
        .timeout(args.timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(args.timeout));
    if tls {
        let server_name = args
            .tls_server_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&remote.host)
            .to_string();
        let config = ClientTlsConfig::new().domain_name(server_name);
        // An exported but empty MESHSCALE_CLI_CA_CERT means "no CA file", like an unset one.
        let ca_cert = args
            .ca_cert
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let config = match ca_cert {
            Some(path) => config.ca_certificate(read_ca(path)?),
            None => config.with_enabled_roots(),
        };
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| bad(error_chain(&e)))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut reason = error_chain(&e);
        if reason.contains("certificate") {
            reason.push_str(" (check --ca-cert / MESHSCALE_CLI_CA_CERT and --tls-server-name)");
        } else if tls && reason.contains("InvalidContentType") {
            reason.push_str(" (the server answered without TLS; behind a TLS-terminating proxy set MESHSCALE_CLI_INSECURE=1)");
        }
        ConnectError::RemoteUnreachable { address: address.to_string(), reason }
    })?;
    Ok((channel, auth))
}

fn read_ca(path: &Path) -> Result<Certificate, ConnectError> {
    let failed = |problem: String| ConnectError::CaCert {
        path: path.display().to_string(),
        problem,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_end(&mut pem))
        .map_err(|e| failed(e.to_string()))?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(failed(format!("larger than {MAX_CA_BYTES} bytes")));
    }
    // rustls skips what it cannot parse, which would surface much later as an
    // unknown-issuer handshake failure; a file without a certificate is caught here.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(failed(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(Certificate::from_pem(pem))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Unspecified,
    Https,
    Http,
}

#[derive(Debug, PartialEq, Eq)]
struct RemoteAddress {
    scheme: Scheme,
    /// Without brackets, also for IPv6: it is the TLS server name as well.
    host: String,
    port: u16,
}

impl RemoteAddress {
    fn uri(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `host:port`, `[v6]:port`, `host` (default port), optionally after `https://` or `http://`.
fn parse_remote(address: &str) -> Result<RemoteAddress, String> {
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if address.contains("://") {
        return Err("only https:// and http:// are supported".into());
    } else {
        (Scheme::Unspecified, address)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?', '#']) || rest.chars().any(char::is_whitespace) {
        return Err("expected HOST:PORT".into());
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("missing ] after the IPv6 address")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("expected :PORT after ]")?),
            ),
        }
    } else if rest.matches(':').count() > 1 {
        // A bare IPv6 address; a port needs the [v6]:port form.
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => DEFAULT_GRPC_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port"))?,
    };
    Ok(RemoteAddress {
        scheme,
        host: host.to_string(),
        port,
    })
}

/// One line from an error and its causes, without tonic's and hyper's
/// generic wrappers and without repeating a cause already quoted by its parent.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    describe(None, Some(err))
}

fn describe(first: Option<&str>, mut current: Option<&(dyn StdError + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(text) = first {
        push_cause(&mut parts, text.to_string());
    }
    while let Some(e) = current {
        push_cause(&mut parts, e.to_string());
        current = e.source();
    }
    if parts.is_empty() {
        "connection failed".to_string()
    } else {
        parts.join(": ")
    }
}

fn push_cause(parts: &mut Vec<String>, text: String) {
    const GENERIC: &[&str] = &["transport error", "client error (Connect)"];
    if text.is_empty()
        || GENERIC.contains(&text.as_str())
        || parts.iter().any(|p| p.contains(&text))
    {
        return;
    }
    // "h2 protocol error: http2 error" followed by "http2 error: frame too big":
    // the parent's tail is the child's head, keep it once.
    if let Some(last) = parts.last_mut() {
        let overlap = last
            .match_indices(": ")
            .map(|(i, _)| i)
            .find(|&i| text.starts_with(&last[i + 2..]));
        if let Some(i) = overlap {
            last.truncate(i);
        }
    }
    parts.push(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(scheme: Scheme, host: &str, port: u16) -> RemoteAddress {
        RemoteAddress {
            scheme,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn remote_addresses() {
        use Scheme::*;
        assert_eq!(
            parse_remote("mesh.example.com:443"),
            Ok(remote(Unspecified, "mesh.example.com", 443))
        );
        assert_eq!(
            parse_remote("mesh.example.com"),
            Ok(remote(Unspecified, "mesh.example.com", 50443))
        );
        assert_eq!(
            parse_remote("https://mesh.example.com/"),
            Ok(remote(Https, "mesh.example.com", 50443))
        );
        assert_eq!(
            parse_remote("http://10.0.0.1:8443"),
            Ok(remote(Http, "10.0.0.1", 8443))
        );
        assert_eq!(
            parse_remote("[fd00::1]:50443"),
            Ok(remote(Unspecified, "fd00::1", 50443))
        );
        assert_eq!(
            parse_remote("fd00::1"),
            Ok(remote(Unspecified, "fd00::1", 50443))
        );
        for bad in [
            "",
            ":443",
            "host:",
            "host:0",
            "host:99999",
            "grpc://host",
            "host:1/path",
            "u@host:1",
            "[::1",
        ] {
            assert!(parse_remote(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn remote_uris_bracket_ipv6() {
        assert_eq!(
            remote(Scheme::Unspecified, "fd00::1", 1).uri(true),
            "https://[fd00::1]:1"
        );
        assert_eq!(remote(Scheme::Http, "h", 2).uri(false), "http://h:2");
    }

    #[tokio::test]
    async fn remote_without_api_key_fails_before_dialling() {
        let args = ConnectionArgs {
            remote: Some("192.0.2.1:1".into()),
            ..Default::default()
        };
        let err = connect(&args, || unreachable!("no config for a remote"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(ConnectError::MissingApiKey)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn plain_http_needs_the_insecure_switch() {
        let args = ConnectionArgs {
            remote: Some("http://192.0.2.1:1".into()),
            api_key: Some("k".into()),
            ..Default::default()
        };
        let err = connect(&args, || unreachable!()).await.unwrap_err();
        assert!(
            matches!(
                err.downcast_ref(),
                Some(ConnectError::PlainHttpNotAllowed { .. })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_socket_names_path_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let args = ConnectionArgs {
            timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let err = connect(&args, || Ok(path.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach the meshscale server at {}: no such socket (is `meshscale serve` running?)",
                path.display()
            )
        );
    }

    #[test]
    fn bearer_values_are_sensitive_and_checked() {
        let value = bearer("abc.def").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer abc.def");
        assert!(matches!(bearer("bad\nkey"), Err(ConnectError::BadApiKey)));
        assert!(!format!("{:?}", Auth(Some(value))).contains("abc"));
        let args = ConnectionArgs {
            api_key: Some("mskey-api-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{args:?}").contains("secret"));
    }

    #[test]
    fn ca_files_without_certificates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(read_ca(&path), Err(ConnectError::CaCert { .. })));
        assert!(matches!(
            read_ca(&dir.path().join("absent.pem")),
            Err(ConnectError::CaCert { .. })
        ));
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Chain {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|c| c as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn error_chains_are_one_line_without_repeats() {
        let chain = Chain(
            "transport error",
            Some(Box::new(Chain(
                "h2 protocol error: http2 error",
                Some(Box::new(Chain(
                    "http2 error: frame with invalid size",
                    Some(Box::new(Chain("frame with invalid size", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&chain),
            "h2 protocol error: http2 error: frame with invalid size"
        );
        assert_eq!(
            error_chain(&Chain("transport error", None)),
            "connection failed"
        );
    }

    #[test]
    fn api_errors_show_the_server_message() {
        let err = ApiError(tonic::Status::not_found("user \"bob\" not found"));
        assert_eq!(err.to_string(), "user \"bob\" not found");
        assert_eq!(
            ApiError(tonic::Status::unavailable("")).to_string(),
            tonic::Code::Unavailable.description()
        );
    }
}
