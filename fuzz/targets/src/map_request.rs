//! `/machine/map` body: tailcfg.MapRequest JSON; a value that parses must
//! serialize and parse again.
use meshscale_wire::tailcfg::MapRequest;

pub fn run(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<MapRequest>(data) {
        let out = serde_json::to_vec(&req).expect("a parsed MapRequest serializes");
        serde_json::from_slice::<MapRequest>(&out).expect("its own output parses");
    }
}
