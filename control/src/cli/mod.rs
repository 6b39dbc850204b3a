//! The `meshscale` command line: `serve` and `configtest` for the server
//! itself, and the admin commands, which are clients of a running server's
//! admin API. Command names, aliases, flags and output follow Headscale's
//! CLI so that an admin's habits and scripts carry over with `meshscale` in
//! place of `headscale`.

mod apikeys;
mod client;
mod confirm;
mod debug;
mod nodes;
mod output;
mod policy;
mod preauthkeys;
mod times;
mod user_ref;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Config;
use output::{OutputFormat, Printer, parse_format, sanitize};

const AFTER_HELP: &str = "\
Admin commands talk to the server's local unix socket (`unix_socket` in the config). To
manage a remote server instead, set MESHSCALE_CLI_ADDRESS=host:port and MESHSCALE_CLI_API_KEY
(see --remote and --api-key); MESHSCALE_CLI_CA_CERT names the CA of its certificate, and
MESHSCALE_CLI_INSECURE=1 speaks plain HTTP to a TLS-terminating proxy in front of it.";

#[derive(Parser, Debug)]
#[command(
    name = "meshscale",
    version,
    about = "Meshscale: a self-hosted, Tailscale-compatible control server",
    after_help = AFTER_HELP,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Config file [default: /etc/meshscale/config.yaml when it exists]
    #[arg(
        short,
        long,
        global = true,
        env = "MESHSCALE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Output format: "" (human-readable), json, json-line or yaml
    #[arg(short, long, global = true, value_name = "FORMAT", default_value = "", hide_default_value = true, value_parser = parse_format)]
    output: OutputFormat,
    /// Do not ask for confirmation
    #[arg(long, global = true)]
    force: bool,
    #[command(flatten)]
    connection: client::ConnectionArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control server
    Serve,
    /// Check the configuration and exit
    Configtest,
    #[command(flatten)]
    Admin(AdminCommand),
    /// Print the version
    Version,
}

/// The commands that are clients of a running server.
#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Manage users
    #[command(subcommand, visible_alias = "user")]
    Users(users::UsersCommand),
    /// Manage pre-auth keys
    #[command(subcommand, visible_aliases = ["preauthkey", "authkey", "pre"])]
    Preauthkeys(preauthkeys::PreAuthKeysCommand),
    /// Manage nodes
    #[command(subcommand, visible_alias = "node")]
    Nodes(nodes::NodesCommand),
    /// Manage API keys for the remote admin API
    #[command(subcommand, visible_aliases = ["apikey", "api"])]
    Apikeys(apikeys::ApiKeysCommand),
    /// Debugging and testing commands
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Manage the access policy (get, set, check), or preview it (compile)
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// What every admin command needs besides its own arguments.
#[derive(Debug)]
pub(crate) struct Context {
    print: Printer,
    force: bool,
}

pub fn main() -> ExitCode {
    // Usage errors, --help and --version exit here, with clap's own codes.
    let cli = Cli::parse();
    // rustls needs one process-wide crypto provider; when a workspace build
    // also compiles another backend (aws-lc through a test peer), rustls
    // cannot pick one by itself and its default builders would panic.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the causes; sanitize keeps it one line whatever the server said.
            eprintln!("Error: {}", sanitize(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let print = Printer {
        format: cli.global.output,
    };
    match cli.command {
        Command::Version => print.object(
            &VersionView {
                version: env!("CARGO_PKG_VERSION"),
            },
            env!("CARGO_PKG_VERSION"),
        ),
        Command::Configtest => {
            load_config(&cli.global)?;
            print.result("Config OK")
        }
        Command::Serve => {
            let config = load_config(&cli.global)?;
            runtime()?.block_on(crate::server::run(config))
        }
        Command::Admin(command) => {
            let ctx = Context {
                print,
                force: cli.global.force,
            };
            runtime()?.block_on(admin(&cli.global, &ctx, command))
        }
    }
}

#[derive(Serialize)]
struct VersionView {
    version: &'static str,
}

fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    // The error's own text names the file and key; its source is already in it.
    Config::load(global.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

async fn admin(global: &GlobalArgs, ctx: &Context, command: AdminCommand) -> anyhow::Result<()> {
    if let AdminCommand::Policy(policy::PolicyCommand::Compile(args)) = &command {
        // Pure: no server, no config needed.
        return policy::compile(ctx, args);
    }
    let mut client = client::connect(&global.connection, || {
        Ok(PathBuf::from(load_config(global)?.unix_socket))
    })
    .await?;
    match command {
        AdminCommand::Users(c) => users::run(&mut client, ctx, c).await,
        AdminCommand::Preauthkeys(c) => preauthkeys::run(&mut client, ctx, c).await,
        AdminCommand::Nodes(c) => nodes::run(&mut client, ctx, c).await,
        AdminCommand::Apikeys(c) => apikeys::run(&mut client, ctx, c).await,
        AdminCommand::Debug(c) => debug::run(&mut client, ctx, c).await,
        AdminCommand::Policy(c) => policy::run(&mut client, ctx, c).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("meshscale").chain(args.iter().copied()))
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn headscale_aliases_and_global_flags_parse() {
        for args in [
            &["user", "c", "alice", "-d", "Alice", "-e", "a@example.com"][..],
            &["users", "ls", "-o", "json"],
            &["users", "mv", "-n", "alice", "-r", "bob"],
            &["users", "delete", "alice", "--force"],
            &["users", "destroy", "-i", "3"],
            &[
                "pre",
                "new",
                "-u",
                "alice",
                "--reusable",
                "--ephemeral",
                "-e",
                "24h",
                "--tags",
                "tag:a,tag:b",
            ],
            &["authkey", "ls", "-u", "2"],
            &["preauthkey", "revoke", "-i", "1"],
            &["preauthkeys", "rm", "-i", "1"],
            &["node", "ls", "-u", "alice", "-o", "json-line"],
            &["nodes", "register", "-u", "alice", "-k", "abc"],
            &["nodes", "logout", "-i", "1", "-e", "2030-01-01T00:00:00Z"],
            &["nodes", "e", "-i", "1", "-d"],
            &["nodes", "rename", "-i", "1", "newname"],
            &["nodes", "del", "-i", "1", "--force"],
            &["nodes", "mv", "-i", "1", "-u", "bob"],
            &["nodes", "t", "-i", "1", "-t", "tag:a,tag:b"],
            &["api", "c", "-e", "30d"],
            // Bad durations are the command's own errors (exit 1), so they must parse.
            &["pre", "create", "-u", "1", "-e", "-1h"],
            &["apikeys", "create", "--expiration", "soon"],
            &["apikey", "revoke", "-p", "msk_abc"],
            &["apikeys", "remove", "-i", "4"],
            &[
                "debug",
                "create-node",
                "--name",
                "n",
                "-u",
                "alice",
                "--route",
                "10.0.0.0/8",
                "--route",
                "10.1.0.0/16",
            ],
            &["-c", "/etc/meshscale/config.yaml", "version", "-o", "yaml"],
            &["policy", "get", "-o", "json"],
            &["policy", "set", "--file", "acl.hujson"],
            &["policy", "check", "-f", "acl.hujson"],
            &[
                "policy",
                "compile",
                "--policy",
                "acl.hujson",
                "--topology",
                "topo.json",
                "-o",
                "json",
            ],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        for args in [
            &["users", "destroy"][..],
            &["users", "destroy", "alice", "-i", "3"],
            &[
                "nodes",
                "expire",
                "-i",
                "1",
                "-d",
                "-e",
                "2030-01-01T00:00:00Z",
            ],
            &["apikeys", "expire"],
            &["apikeys", "expire", "-p", "x", "-i", "1"],
            &["users", "ls", "-o", "table"],
            &["nodes", "tag", "-i", "1"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn flags_land_where_expected() {
        let cli = parse(&[
            "nodes", "list", "--force", "-o", "yaml", "--remote", "mesh:443",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Yaml);
        assert!(cli.global.force);
        assert_eq!(cli.global.connection.remote.as_deref(), Some("mesh:443"));
    }
}
