//! STUN on UDP 3478: the server's request parser and the client's
//! response parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshscale_control::stun;

fuzz_target!(|data: &[u8]| {
    let _ = stun::is_stun(data);
    let _ = stun::parse_binding_request(data);
    let _ = stun::parse_binding_response(data);
});
