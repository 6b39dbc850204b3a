//! The sidecar injection webhook: `patch` decides and builds the JSON patch,
//! `review` speaks AdmissionReview, `server` serves it over reloadable TLS.

pub mod certs;
pub mod patch;
pub mod podsecurity;
pub mod review;
pub mod server;
pub mod tls;
