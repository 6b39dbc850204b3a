//! Known-answer vectors, shared with the server: [`meshscale_ts2021::kat`].

pub use meshscale_ts2021::kat::*;
