//! Known-answer vectors, shared with the client: [`meshscale_ts2021::kat`].

pub(super) use meshscale_ts2021::kat::*;
