//! Text and JSON forms of every key type.

use meshscale_wire::key::{KEY_LEN, KeyParseError};
use meshscale_wire::{
    ChallengePublic, DiscoPublic, MachinePrivate, MachinePublic, NlPublic, NodePrivate, NodePublic,
};

fn sample_bytes() -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
    }
    b
}

/// Runs the same checks for each key type: (type, prefix, one wrong prefix).
macro_rules! key_suite {
    ($($test:ident: $ty:ty, $prefix:literal, $wrong:literal;)+) => {$(
        #[test]
        fn $test() {
            let bytes = sample_bytes();
            let key = <$ty>::from_bytes(bytes);
            let text = key.to_string();
            assert_eq!(text, format!("{}{}", $prefix, hex::encode(bytes)));
            assert_eq!(<$ty>::PREFIX, $prefix);
            assert_eq!(key.as_bytes(), &bytes);
            assert!(!key.is_zero());

            // Text round trip, and upper-case hex is accepted.
            assert_eq!(text.parse::<$ty>().unwrap(), key);
            let upper = format!("{}{}", $prefix, hex::encode_upper(bytes));
            assert_eq!(upper.parse::<$ty>().unwrap(), key);

            // JSON is the quoted text form.
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<$ty>(&json).unwrap(), key);

            // Zero key: prefix + 64 zeros, never "".
            let zero = <$ty>::zero();
            assert!(zero.is_zero());
            assert_eq!(zero.to_string(), format!("{}{}", $prefix, "0".repeat(64)));
            assert_eq!(zero.to_string().parse::<$ty>().unwrap(), zero);

            // Refusals, none of which may panic.
            let hex64 = hex::encode(bytes);
            let cases: Vec<(String, KeyParseError)> = vec![
                (String::new(), KeyParseError::Empty),
                (hex64.clone(), KeyParseError::WrongPrefix { expected: $prefix }),
                (format!("{}{}", $wrong, hex64), KeyParseError::WrongPrefix { expected: $prefix }),
                (format!("{}{}", $prefix.to_uppercase(), hex64), KeyParseError::WrongPrefix { expected: $prefix }),
                ($prefix.to_string(), KeyParseError::WrongLength { got: 0 }),
                (format!("{}{}", $prefix, &hex64[..63]), KeyParseError::WrongLength { got: 63 }),
                (format!("{}{}0", $prefix, hex64), KeyParseError::WrongLength { got: 65 }),
                (format!("{}{}", $prefix, "g".repeat(64)), KeyParseError::InvalidHex),
                (format!("{}{}zz", $prefix, &hex64[..62]), KeyParseError::InvalidHex),
                (format!(" {}{}", $prefix, hex64), KeyParseError::WrongPrefix { expected: $prefix }),
                (format!("{}{} ", $prefix, &hex64[..63]), KeyParseError::InvalidHex),
                // 64 bytes but not 64 characters: multi-byte UTF-8.
                (format!("{}{}é", $prefix, &hex64[..62]), KeyParseError::InvalidHex),
            ];
            for (input, want) in cases {
                assert_eq!(input.parse::<$ty>().unwrap_err(), want, "{input:?}");
                let json = serde_json::to_string(&input).unwrap();
                assert!(serde_json::from_str::<$ty>(&json).is_err(), "{json}");
            }
            for json in ["null", "0", "[]", "{}", "\"\""] {
                assert!(serde_json::from_str::<$ty>(json).is_err(), "{json}");
            }
        }
    )+};
}

key_suite! {
    machine_public: MachinePublic, "mkey:", "nodekey:";
    node_public: NodePublic, "nodekey:", "mkey:";
    disco_public: DiscoPublic, "discokey:", "nodekey:";
    nl_public: NlPublic, "nlpub:", "nlpriv:";
    challenge_public: ChallengePublic, "chalpub:", "nodekey:";
    machine_private: MachinePrivate, "privkey:", "mkey:";
    node_private: NodePrivate, "privkey:", "nodekey:";
}

#[test]
fn nl_public_accepts_cli_spelling_but_writes_nlpub() {
    let hex64 = hex::encode(sample_bytes());
    let k: NlPublic = format!("tlpub:{hex64}").parse().unwrap();
    assert_eq!(k.to_string(), format!("nlpub:{hex64}"));
}

#[test]
fn public_keys_order_and_hash() {
    use std::collections::{BTreeSet, HashSet};
    let a = NodePublic::from_bytes([1; KEY_LEN]);
    let b = NodePublic::from_bytes([2; KEY_LEN]);
    assert!(a < b);
    let set: BTreeSet<_> = [b, a, a].into_iter().collect();
    assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![a, b]);
    let hs: HashSet<_> = [a, b, a].into_iter().collect();
    assert_eq!(hs.len(), 2);
    // Debug of a public key is its text form.
    assert_eq!(format!("{a:?}"), a.to_string());
}

#[test]
fn private_key_debug_is_redacted() {
    let k = NodePrivate::from_bytes(sample_bytes());
    let dbg = format!("{k:?}");
    assert_eq!(dbg, "privkey:<redacted>");
    assert!(!dbg.contains(&hex::encode(sample_bytes())[..16]));
    // Display is the key-file form.
    assert!(k.to_string().starts_with("privkey:"));
}
