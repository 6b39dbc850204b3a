//! The Meshscale admin API (`meshscale.v1`): generated protobuf types and the
//! gRPC client and server stubs. The control server implements the service;
//! the `meshscale` CLI and the operator are its clients.
#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("meshscale.v1");
}

pub use v1::meshscale_service_client::MeshscaleServiceClient;
pub use v1::meshscale_service_server::{MeshscaleService, MeshscaleServiceServer};
