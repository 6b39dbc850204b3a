//! The body of every Meshscale fuzz target: `<target>::run(&[u8])` must
//! never panic, whatever the bytes (a panic or a failed assertion is a
//! finding). Two callers: the libFuzzer binaries in `fuzz/fuzz_targets/`
//! (one line each, built by `fuzz/run.sh` for fuzzing sessions) and
//! `tests/replay.rs`, which runs every checked-in seed and kept crash
//! through the same code under plain `cargo test`.
#![forbid(unsafe_code)]

pub mod config_yaml;
pub mod derp_frames;
pub mod disco;
pub mod map_request;
pub mod map_stream;
pub mod noise_h2;
pub mod noise_initiation;
pub mod packetfilter;
pub mod register_request;
pub mod sidecar_localapi;
pub mod stun_binding;
pub mod wire_framing;

#[cfg(feature = "operator")]
pub mod admission_review;

/// A target's name (its directory under `fuzz/corpus/` and
/// `fuzz/regressions/`, its file under `fuzz/fuzz_targets/`) and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target this build has (`admission_review` needs `operator`).
pub const TARGETS: &[Target] = &[
    #[cfg(feature = "operator")]
    ("admission_review", admission_review::run),
    ("config_yaml", config_yaml::run),
    ("derp_frames", derp_frames::run),
    ("disco", disco::run),
    ("map_request", map_request::run),
    ("map_stream", map_stream::run),
    ("noise_h2", noise_h2::run),
    ("noise_initiation", noise_initiation::run),
    ("packetfilter", packetfilter::run),
    ("register_request", register_request::run),
    ("sidecar_localapi", sidecar_localapi::run),
    ("stun_binding", stun_binding::run),
    ("wire_framing", wire_framing::run),
];
