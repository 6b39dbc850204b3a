//! The admin API (`meshscale.v1.MeshscaleService`) over gRPC: served on the
//! local unix socket for the CLI and, with TLS and an API key, on
//! `grpc_listen_addr` for the operator and remote CLIs.

mod auth;
pub(crate) mod bootstrap;
mod convert;
mod serve;
mod service;

pub(crate) use auth::ApiKeyLayer;
pub(crate) use serve::{bind_unix, serve_tcp, serve_unix};
pub(crate) use service::AdminService;
