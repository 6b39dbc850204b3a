//! `meshscale-sidecar`: the node agent. Its data plane lands with the sidecar
//! issue; until then the binary only answers `--version` and `--help`.

use clap::Parser;

/// Puts a pod or a Linux host on a Meshscale mesh.
#[derive(Parser)]
#[command(name = "meshscale-sidecar", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("meshscale-sidecar: no command yet; see --help");
    std::process::exit(2);
}
