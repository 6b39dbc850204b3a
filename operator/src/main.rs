//! `meshscale-operator`: the Kubernetes operator. Its controllers land with
//! the Kubernetes issue; until then the binary only answers `--version` and `--help`.

use clap::Parser;

/// Manages Meshscale users, nodes and pre-auth keys as Kubernetes resources.
#[derive(Parser)]
#[command(name = "meshscale-operator", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("meshscale-operator: no command yet; see --help");
    std::process::exit(2);
}
