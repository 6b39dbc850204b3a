//! Byte layout of controlbase messages; shared with the server, see
//! [`meshscale_ts2021::wire`].

pub use meshscale_ts2021::wire::*;
