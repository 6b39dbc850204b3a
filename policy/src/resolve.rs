//! Validation of a parsed policy and resolution of aliases to addresses.

use meshscale_wire::netip::IpPrefix;

use crate::model::PolicyFile;
use crate::{Node, PolicyError, TagOwner, Tailnet};

/// A policy that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) file: PolicyFile,
}

impl Checked {
    pub(crate) fn new(file: PolicyFile) -> Result<Self, PolicyError> {
        Ok(Self { file })
    }

    pub(crate) fn may_own_tag(&self, tag: &str, _owner: &TagOwner<'_>, _tailnet: &Tailnet) -> bool {
        self.file.tag_owners.contains_key(tag)
    }

    pub(crate) fn auto_approves(
        &self,
        _route: &IpPrefix,
        _node: &Node,
        _tailnet: &Tailnet,
    ) -> bool {
        false
    }
}
