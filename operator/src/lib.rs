//! The Meshscale Kubernetes operator: CRDs, reconcilers into the control
//! server's admin API, pod cleanup, leader election and the injection webhook.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod bootstrap;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod duration;
pub mod injectkey;
pub mod kubeops;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod webhook;

#[cfg(test)]
mod fake;
// Also compiled into the integration tests (by path), which use the rest.
#[cfg(test)]
#[allow(dead_code)]
mod fake_apiserver;
