//! End-to-end harness: the real `meshscale` server and the official Tailscale
//! client (`tailscaled` + `tailscale`), each in its own network namespace,
//! wired together with veth pairs, bridges and NAT routers that live in
//! namespaces too. Nothing here touches the host namespace's interfaces,
//! routes, sysctls or firewall, and no namespace gets a route off the machine.
//!
//! - [`env`]: what the tests need (root, the binaries) and the skip switch.
//! - [`cmd`]: run a short command with a timeout and keep its output.
//! - [`process`]: a long-running process guard with a log file, killed on drop.
//! - [`netns`]: network namespaces, and the clean-up of what killed runs left.
//! - [`lab`]: a test's world: its temp dir, namespaces, links, switches and
//!   routers; tears everything down on drop and prints the logs on failure.
//! - [`certs`]: a throwaway CA and server certificate.
//! - [`server`]: `meshscale serve` in a namespace, and its CLI.
//! - [`tailscale`]: `tailscaled` in a namespace, and its CLI and status.
//! - [`traffic`]: ICMP and TCP checks between namespaces.
//! - [`poll`]: wait for a condition with a deadline.
//!
//! Run (as root): `cargo build --workspace --bins && cargo test -p meshscale-e2e`.
//! `MESHSCALE_BIN` names the `meshscale` binary (default: the workspace's
//! `debug/meshscale`), `MESHSCALE_TOOLS_DIR` the tailscale tools (see
//! `e2e/setup.sh`), `MESHSCALE_E2E_SKIP=1` skips the scenarios and
//! `MESHSCALE_E2E_KEEP=1` keeps a failed test's directory for a post-mortem
//! (`always`: every test's).

pub mod certs;
pub mod cmd;
pub mod env;
pub mod lab;
pub mod netns;
pub mod poll;
pub mod process;
pub mod server;
pub mod tailscale;
pub mod traffic;

pub use env::Tools;
pub use lab::{Lab, Switch};
pub use netns::Ns;
pub use server::Server;
pub use tailscale::TsNode;
