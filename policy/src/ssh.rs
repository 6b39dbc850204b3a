//! SSH rules → per-node `SSHPolicy`.
