//! The Curve25519 keys a node holds (Tailscale `types/key`): the machine key
//! (its Noise static key, the device identity), the node key (its WireGuard
//! key and DERP address) and the disco key (NAT-traversal messages,
//! regenerated on every start).
//!
//! X25519 comes from snow's default resolver, already needed for the Noise
//! handshake, so no second curve implementation is pulled in. The text forms
//! (`privkey:`, `mkey:`, `nodekey:`, `discokey:`) are `meshscale-wire`'s.

use meshscale_wire::key::KEY_LEN;
use meshscale_wire::{DiscoPublic, MachinePrivate, MachinePublic, NodePrivate, NodePublic};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// A key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no Curve25519 implementation or random source is available")]
    Unavailable,
    #[error("the operating system's random source failed")]
    Random,
}

/// 32 random bytes clamped like Go's `key.NewMachine`/`NewNode`/`NewDisco`,
/// so that the stored private key is byte-for-byte what Go would keep.
fn random_private() -> Result<[u8; KEY_LEN], KeyError> {
    let mut rng = DefaultResolver.resolve_rng().ok_or(KeyError::Unavailable)?;
    let mut k = [0u8; KEY_LEN];
    rng.try_fill_bytes(&mut k).map_err(|_| KeyError::Random)?;
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    Ok(k)
}

/// X25519(private, basepoint).
pub(crate) fn public_of(private: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], KeyError> {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .ok_or(KeyError::Unavailable)?;
    dh.set(private);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(dh.pubkey());
    Ok(out)
}

/// Whether X25519 of `point` with a fixed scalar is zero: a small-order
/// point, which Go's `curve25519.X25519` refuses and snow silently accepts.
pub(crate) fn is_low_order(point: &[u8; KEY_LEN]) -> bool {
    let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) else {
        return true; // cannot check: refuse
    };
    dh.set(&[0x5a; KEY_LEN]);
    let mut out = [0u8; KEY_LEN];
    match dh.dh(point, &mut out) {
        Ok(()) => out == [0u8; KEY_LEN],
        Err(_) => true,
    }
}

/// A machine key pair. Persist [`MachineKey::private`] (its `Display` is the
/// `privkey:<hex>` file format); losing it makes the device a new machine.
#[derive(Clone, PartialEq, Eq)]
pub struct MachineKey {
    private: MachinePrivate,
    public: MachinePublic,
}

impl MachineKey {
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_private(MachinePrivate::from_bytes(random_private()?))
    }

    pub fn from_private(private: MachinePrivate) -> Result<Self, KeyError> {
        let public = MachinePublic::from_bytes(public_of(private.as_bytes())?);
        Ok(Self { private, public })
    }

    pub fn private(&self) -> &MachinePrivate {
        &self.private
    }

    pub fn public(&self) -> MachinePublic {
        self.public
    }
}

impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A node key pair: the WireGuard key, rotated by re-registering with
/// `OldNodeKey` set to the previous public key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    private: NodePrivate,
    public: NodePublic,
}

impl NodeKey {
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_private(NodePrivate::from_bytes(random_private()?))
    }

    pub fn from_private(private: NodePrivate) -> Result<Self, KeyError> {
        let public = NodePublic::from_bytes(public_of(private.as_bytes())?);
        Ok(Self { private, public })
    }

    pub fn private(&self) -> &NodePrivate {
        &self.private
    }

    pub fn public(&self) -> NodePublic {
        self.public
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A disco key pair. Never persisted (clients make a new one per start), so
/// there is no text form for the private half.
#[derive(Clone)]
pub struct DiscoKey {
    private: [u8; KEY_LEN],
    public: DiscoPublic,
}

impl DiscoKey {
    pub fn generate() -> Result<Self, KeyError> {
        let private = random_private()?;
        let public = DiscoPublic::from_bytes(public_of(&private)?);
        Ok(Self { private, public })
    }

    /// The raw private scalar, for the NaCl box of disco messages.
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    pub fn public(&self) -> DiscoPublic {
        self.public
    }
}

impl std::fmt::Debug for DiscoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Drop for DiscoKey {
    fn drop(&mut self) {
        // Best effort, as for meshscale-wire's private keys.
        self.private = [0u8; KEY_LEN];
        std::hint::black_box(&self.private);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 §6.1, Alice.
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let key = MachineKey::from_private(MachinePrivate::from_bytes(private)).unwrap();
        assert_eq!(
            key.public().to_string(),
            "mkey:8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn generated_keys_are_clamped_distinct_and_round_trip() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::generate().unwrap();
        assert_ne!(a.public(), b.public());
        let raw = a.private().as_bytes();
        assert_eq!(raw[0] & 7, 0);
        assert_eq!(raw[31] & 0xc0, 0x40);
        let text = a.private().to_string();
        assert!(text.starts_with("privkey:") && text.len() == 8 + 64);
        let again = NodeKey::from_private(text.parse().unwrap()).unwrap();
        assert_eq!(again, a);
        assert!(a.public().to_string().starts_with("nodekey:"));
        assert!(
            DiscoKey::generate()
                .unwrap()
                .public()
                .to_string()
                .starts_with("discokey:")
        );
    }

    #[test]
    fn debug_hides_private_halves() {
        let k = MachineKey::generate().unwrap();
        let hex_priv = k.private().to_string()[8..].to_string();
        assert!(!format!("{k:?}").contains(&hex_priv));
        let d = DiscoKey::generate().unwrap();
        let hex_d: String = d
            .private_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!format!("{d:?}").contains(&hex_d));
    }

    #[test]
    fn low_order_points() {
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(is_low_order(&[0; 32]));
        assert!(is_low_order(&one));
        let real = *MachineKey::generate().unwrap().public().as_bytes();
        assert!(!is_low_order(&real));
    }
}
