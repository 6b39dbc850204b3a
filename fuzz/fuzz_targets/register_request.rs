//! `/machine/register` body: tailcfg.RegisterRequest JSON; a value that
//! parses must serialize and parse again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshscale_wire::tailcfg::RegisterRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) {
        let out = serde_json::to_vec(&req).expect("a parsed RegisterRequest serializes");
        serde_json::from_slice::<RegisterRequest>(&out).expect("its own output parses");
    }
});
