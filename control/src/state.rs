//! What every request handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pending::PendingRegistrations;
use crate::presence::Presence;
use crate::store::Store;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub presence: Presence,
    pub pending: PendingRegistrations,
    pub metrics: Metrics,
}

pub type SharedState = Arc<AppState>;
