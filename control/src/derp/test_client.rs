//! A minimal DERP client for tests, written against the protocol as
//! Tailscale's `derp.Client` speaks it, independent of the server code
//! except for the shared framing and crypto helpers.

use std::time::Duration;

use bytes::BytesMut;
use crypto_box::SecretKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::crypto;
use super::frame::{self, Frame, FrameDecoder, FrameType, NodeKey, ServerMessage};

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct TestClient<IO> {
    io: IO,
    buf: BytesMut,
    decoder: FrameDecoder,
    secret: SecretKey,
    pub public: NodeKey,
    pub server_key: NodeKey,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TestClient<IO> {
    pub(super) async fn handshake(io: IO) -> Result<Self, String> {
        Self::handshake_with_key(io, crypto::generate_private_key()).await
    }

    pub(super) async fn handshake_with_key(io: IO, private: [u8; 32]) -> Result<Self, String> {
        Self::handshake_buffered(io, private, BytesMut::new()).await
    }

    /// `buf` holds bytes already read from `io` (e.g. past an HTTP
    /// response head).
    pub(super) async fn handshake_buffered(
        io: IO,
        private: [u8; 32],
        buf: BytesMut,
    ) -> Result<Self, String> {
        let mut c = TestClient {
            io,
            buf,
            decoder: FrameDecoder::default(),
            secret: SecretKey::from_bytes(private),
            public: crypto::public_key(&private),
            server_key: [0; 32],
        };
        let first = c.recv_frame().await?;
        c.server_key = frame::parse_server_key(&first).map_err(|e| e.to_string())?;
        c.send_client_info().await?;
        let info = c.recv_frame().await?;
        if info.frame_type != FrameType::SERVER_INFO {
            return Err(format!("expected ServerInfo, got {}", info.frame_type));
        }
        let json = crypto::open(&c.secret, &c.server_key, &info.payload)
            .ok_or("ServerInfo box does not open")?;
        let v: serde_json::Value = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        if v["version"] != 2 {
            return Err(format!("unexpected ServerInfo {v}"));
        }
        Ok(c)
    }

    /// Fast start: the server key is known, ClientInfo goes out before
    /// anything is read; the server's ServerKey frame then arrives first
    /// and is skipped, as Tailscale's client skips it.
    pub(super) async fn fast_start(
        io: IO,
        private: [u8; 32],
        server_key: NodeKey,
    ) -> Result<Self, String> {
        let mut c = TestClient {
            io,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
            secret: SecretKey::from_bytes(private),
            public: crypto::public_key(&private),
            server_key,
        };
        c.send_client_info().await?;
        loop {
            let f = c.recv_frame().await?;
            match f.frame_type {
                FrameType::SERVER_KEY => continue,
                FrameType::SERVER_INFO => break,
                t => return Err(format!("unexpected frame {t} during fast start")),
            }
        }
        Ok(c)
    }

    async fn send_client_info(&mut self) -> Result<(), String> {
        let json = br#"{"version":2,"CanAckPings":true}"#;
        let sealed = crypto::seal(&self.secret, &self.server_key, json);
        let mut out = BytesMut::new();
        frame::client_info_frame(&mut out, &self.public, &sealed).map_err(|e| e.to_string())?;
        self.write_raw(&out).await.map_err(|e| e.to_string())
    }

    pub(super) async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    pub(super) async fn send_packet(&mut self, to: &NodeKey, packet: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::send_packet_frame(&mut out, to, packet).map_err(std::io::Error::other)?;
        self.write_raw(&out).await
    }

    pub(super) async fn note_preferred(&mut self, preferred: bool) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::note_preferred_frame(&mut out, preferred);
        self.write_raw(&out).await
    }

    pub(super) async fn ping(&mut self, data: [u8; 8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::ping_frame(&mut out, &data);
        self.write_raw(&out).await
    }

    async fn recv_frame(&mut self) -> Result<Frame, String> {
        tokio::time::timeout(RECV_TIMEOUT, async {
            loop {
                if let Some(f) = self
                    .decoder
                    .decode(&mut self.buf)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(f);
                }
                self.buf.reserve(16 << 10);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) => return Err("connection closed by server".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("connection closed: {e}")),
                }
            }
        })
        .await
        .map_err(|_| "timed out waiting for a frame".to_string())?
    }

    /// The next message from the server, whatever it is.
    pub(super) async fn recv_data(&mut self) -> Result<ServerMessage, String> {
        let f = self.recv_frame().await?;
        Ok(ServerMessage::parse(&f))
    }
}
