//! STUN on UDP 3478: the server's request parser and the client's
//! response parser.
use meshscale_control::stun;

pub fn run(data: &[u8]) {
    let _ = stun::is_stun(data);
    let _ = stun::parse_binding_request(data);
    let _ = stun::parse_binding_response(data);
}
