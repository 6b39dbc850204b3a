//! `/machine/register` body: tailcfg.RegisterRequest JSON; a value that
//! parses must serialize and parse again.
use meshscale_wire::tailcfg::RegisterRequest;

pub fn run(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) {
        let out = serde_json::to_vec(&req).expect("a parsed RegisterRequest serializes");
        serde_json::from_slice::<RegisterRequest>(&out).expect("its own output parses");
    }
}
