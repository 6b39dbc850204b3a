//! Map building and distribution: what each node is told about the tailnet.
//!
//! - `view`: pure builders from store records to `tailcfg` values.
//! - `frame`: one encoded message shared by all its receivers.
//! - `hub`: the in-memory tailnet and the fan-out of deltas to sessions.

pub mod access;
pub mod frame;
pub mod hub;
pub mod view;

pub use frame::{Frame, KEEP_ALIVE};
pub use hub::{Hub, Subscription};
pub use view::{Live, Tailnet};
