//! See `fuzz/targets/src/packetfilter.rs`: the body lives there, so that
//! `cargo test` replays this target's corpus through the same code.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshscale_fuzz_targets::packetfilter::run(data));
