//! HTTP/2 with prior knowledge (h2c) over the Noise stream, as Go's
//! `ts2021.Client` does with `Protocols.SetUnencryptedHTTP2(true)` and one
//! connection per host.
//!
//! The connection task owns the Noise stream; [`Http2Conn`] holds the
//! request handle and ends the task when the last clone is gone.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes of response headers accepted per response; a control server sends
/// a handful.
const MAX_HEADER_LIST: u32 = 64 << 10;

/// Aborts the connection task (closing the socket) when dropped.
#[derive(Debug)]
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live HTTP/2 connection over Noise. Clones share the connection, so a
/// register long-poll and a map stream can run side by side.
#[derive(Debug, Clone)]
pub struct Http2Conn {
    sender: SendRequest<Full<Bytes>>,
    task: Arc<TaskGuard>,
}

/// Keeps the connection open while a response body (a map stream) is read,
/// even if every [`Http2Conn`] is dropped.
#[derive(Debug, Clone)]
pub struct ConnKeepAlive(#[allow(dead_code)] Arc<TaskGuard>);

impl Http2Conn {
    /// Runs the HTTP/2 client handshake (preface + SETTINGS) over `io` and
    /// spawns the connection task.
    pub async fn handshake<S>(io: S) -> Result<Self, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(TokioIo::new(io))
            .await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection to the control server ended");
            }
        });
        Ok(Self {
            sender,
            task: Arc::new(TaskGuard(task)),
        })
    }

    /// A handle for sending; wait on it with `ready()` first.
    pub fn sender(&self) -> SendRequest<Full<Bytes>> {
        self.sender.clone()
    }

    pub fn keep_alive(&self) -> ConnKeepAlive {
        ConnKeepAlive(self.task.clone())
    }

    /// Whether the connection has ended (server closed it, or an error).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.task.0.is_finished()
    }
}
