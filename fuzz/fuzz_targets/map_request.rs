//! `/machine/map` body: tailcfg.MapRequest JSON; a value that parses must
//! serialize and parse again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshscale_wire::tailcfg::MapRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<MapRequest>(data) {
        let out = serde_json::to_vec(&req).expect("a parsed MapRequest serializes");
        serde_json::from_slice::<MapRequest>(&out).expect("its own output parses");
    }
});
