//! What every request handler shares.

use std::sync::Arc;

use crate::acl::Acl;
use crate::config::Config;
use crate::mapper::Hub;
use crate::metrics::Metrics;
use crate::pending::PendingRegistrations;
use crate::store::Store;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    /// The tailnet as live map sessions see it; also who is online.
    pub hub: Arc<Hub>,
    pub pending: PendingRegistrations,
    pub metrics: Metrics,
    /// Where the access policy comes from; the hub holds the one in force.
    pub acl: Acl,
}

pub type SharedState = Arc<AppState>;
