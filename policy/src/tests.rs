//! The policy's own `tests` and `sshTests`.

use crate::resolve::Checked;
use crate::{PolicyError, Tailnet};

pub(crate) fn run(_checked: &Checked, _tailnet: &Tailnet) -> Result<(), PolicyError> {
    Ok(())
}
