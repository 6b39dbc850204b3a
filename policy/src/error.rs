//! Why a policy (or a topology file) was refused.

/// A refused policy. `Display` is one line naming the offending entry, e.g.
/// `acls[2].dst[0]: unknown group "group:eng"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is larger than [`crate::MAX_POLICY_BYTES`].
    #[error("policy is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    /// Not HuJSON/JSON, or not the shape of a policy (unknown key, wrong type).
    #[error("policy syntax: {0}")]
    Syntax(String),
    /// Structurally valid JSON whose content Tailscale refuses.
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
    /// A `tests` or `sshTests` entry does not hold.
    #[error("{at}: test failed: {reason}")]
    TestFailed { at: String, reason: String },
    /// A conformance topology file could not be read.
    #[error("topology: {0}")]
    Topology(String),
}

impl PolicyError {
    pub(crate) fn invalid(at: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            at: at.into(),
            reason: reason.into(),
        }
    }
}
