//! The local API: newline-delimited JSON over a unix socket, one request
//! and one response per connection. `status`, `ping`, `ip` and `down` are
//! thin clients of it. The socket is 0600: only the node's owner may ask.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::engine::{Command, PingResult, StatusReport};

const MAX_REQUEST: u64 = 4096;
const MAX_RESPONSE: u64 = 4 << 20;
const PING_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Ping { target: String },
    Down,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Status(StatusReport),
    Pong(PingResult),
    Ok,
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("local API socket {path}: {source} (is `meshscale-sidecar up` running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local API: {0}")]
    Io(#[from] std::io::Error),
    #[error("local API: bad message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serves until the process ends. `down` flips `shutdown`.
pub async fn serve(
    path: &Path,
    engine: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
) -> Result<(), LocalApiError> {
    // A socket left by a crashed run would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| LocalApiError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        LocalApiError::Bind {
            path: path.into(),
            source,
        }
    })?;
    loop {
        let (conn, _) = listener.accept().await?;
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, engine, shutdown).await {
                debug!(error = %e, "local API connection");
            }
        });
    }
}

async fn handle(
    conn: UnixStream,
    engine: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
) -> Result<(), LocalApiError> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(format!("bad request: {e}")),
        Ok(Request::Down) => {
            let _ = shutdown.send(true);
            Response::Ok
        }
        Ok(Request::Status) => {
            let (tx, rx) = oneshot::channel();
            match engine.send(Command::Status(tx)).await {
                Ok(()) => rx
                    .await
                    .map(Response::Status)
                    .unwrap_or_else(|_| Response::Error("engine stopped".into())),
                Err(_) => Response::Error("engine stopped".into()),
            }
        }
        Ok(Request::Ping { target }) => {
            let (tx, rx) = oneshot::channel();
            if engine
                .send(Command::Ping { target, reply: tx })
                .await
                .is_err()
            {
                Response::Error("engine stopped".into())
            } else {
                match tokio::time::timeout(PING_TIMEOUT, rx).await {
                    Ok(Ok(Ok(p))) => Response::Pong(p),
                    Ok(Ok(Err(e))) => Response::Error(e),
                    Ok(Err(_)) | Err(_) => Response::Error("timeout waiting for pong".into()),
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

/// One request from a CLI command.
pub async fn call(path: &Path, req: &Request) -> Result<Response, LocalApiError> {
    let conn = UnixStream::connect(path)
        .await
        .map_err(|source| LocalApiError::Connect {
            path: path.into(),
            source,
        })?;
    let (r, mut w) = conn.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(r.take(MAX_RESPONSE))
        .read_line(&mut line)
        .await?;
    Ok(serde_json::from_str(&line)?)
}

/// `/healthz` for the Kubernetes startup probe: 200 only once the tunnel
/// carries the node's addresses, 503 before. `/metrics` on the same
/// listener: the packet filter's verdicts in Prometheus text format.
pub async fn serve_healthz(
    listener: tokio::net::TcpListener,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    filter: std::sync::Arc<meshscale_packetfilter::Filter>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        let filter = filter.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let is = |path: &str| {
                req.starts_with(&format!("GET {path} "))
                    || req.starts_with(&format!("HEAD {path} "))
            };
            let (status, body) = if is("/metrics") {
                ("200 OK", metrics(&filter))
            } else if !is("/healthz") {
                ("404 Not Found", "not found\n".to_string())
            } else if ready.load(std::sync::atomic::Ordering::Relaxed) {
                ("200 OK", "ok\n".to_string())
            } else {
                ("503 Service Unavailable", "tunnel not up\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// The filter's counters in Prometheus text exposition format.
pub fn metrics(filter: &meshscale_packetfilter::Filter) -> String {
    use std::fmt::Write;
    let c = filter.counters();
    let mut out = String::new();
    out.push_str("# HELP meshscale_sidecar_filter_accepted_packets_total Packets from the tunnel the packet filter let through.\n");
    out.push_str("# TYPE meshscale_sidecar_filter_accepted_packets_total counter\n");
    let _ = writeln!(
        out,
        "meshscale_sidecar_filter_accepted_packets_total {}",
        c.accepted()
    );
    out.push_str("# HELP meshscale_sidecar_filter_dropped_packets_total Packets from the tunnel the packet filter dropped, by reason.\n");
    out.push_str("# TYPE meshscale_sidecar_filter_dropped_packets_total counter\n");
    for (reason, n) in c.drops() {
        let _ = writeln!(
            out,
            "meshscale_sidecar_filter_dropped_packets_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_reason() {
        use meshscale_packetfilter::{DropReason, Filter, Policy};
        let f = Filter::new(Policy::default());
        f.inbound(&[0x45; 10]);
        let m = metrics(&f);
        assert!(
            m.contains("meshscale_sidecar_filter_dropped_packets_total{reason=\"too_short\"} 1\n")
        );
        for r in DropReason::ALL {
            assert!(m.contains(&format!("{{reason=\"{}\"}}", r.as_str())), "{m}");
        }
        assert!(m.contains("meshscale_sidecar_filter_accepted_packets_total 0\n"));
    }

    #[test]
    fn request_json_shape() {
        let j = serde_json::to_string(&Request::Ping {
            target: "nodo2".into(),
        })
        .unwrap();
        assert_eq!(j, r#"{"cmd":"ping","target":"nodo2"}"#);
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"cmd":"down"}"#).unwrap(),
            Request::Down
        ));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
    }
}
