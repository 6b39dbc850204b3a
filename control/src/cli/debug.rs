//! `meshscale debug`: commands for tests and for scripting a join by hand.

use clap::{Args, Subcommand};
use meshscale_api::v1;
use serde::Serialize;

use super::Context;
use super::client::{Client, call};
use super::output::NodeView;

#[derive(Subcommand, Debug)]
pub(super) enum DebugCommand {
    /// Put a node in the pending-registration table, as a client waiting on an
    /// interactive login would; admit it with `meshscale nodes register --key <id>`.
    /// Prints the registration id
    CreateNode(CreateNodeArgs),
}

#[derive(Args, Debug)]
pub(super) struct CreateNodeArgs {
    /// Hostname of the node
    #[arg(long)]
    name: String,
    /// User the node is for (name or id)
    #[arg(short, long, value_name = "USER")]
    user: String,
    /// Machine key of the node (mkey:<64 hex>); the server makes one up when omitted
    #[arg(short, long, value_name = "KEY")]
    key: Option<String>,
    /// Route the node advertises; repeat the flag or separate with commas
    #[arg(short, long = "route", value_name = "PREFIX", value_delimiter = ',')]
    routes: Vec<String>,
}

#[derive(Serialize)]
struct CreatedNodeView {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeView>,
    registration_id: String,
}

pub(super) async fn run(
    client: &mut Client,
    ctx: &Context,
    command: DebugCommand,
) -> anyhow::Result<()> {
    match command {
        DebugCommand::CreateNode(args) => {
            let request = v1::DebugCreateNodeRequest {
                user: args.user,
                key: args.key.unwrap_or_default(),
                name: args.name,
                routes: args
                    .routes
                    .into_iter()
                    .filter(|r| !r.trim().is_empty())
                    .collect(),
            };
            let response = call(client.debug_create_node(request)).await?;
            let view = CreatedNodeView {
                node: response.node.as_ref().map(NodeView::from),
                registration_id: response.registration_id,
            };
            ctx.print.object(&view, &view.registration_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{AdminCommand, Cli, Command};
    use super::*;

    #[test]
    fn routes_repeat_or_split_on_commas() {
        let cli = Cli::try_parse_from([
            "meshscale",
            "debug",
            "create-node",
            "--name",
            "n",
            "-u",
            "a",
            "-r",
            "10.0.0.0/8,10.1.0.0/16",
            "--route",
            "10.2.0.0/16",
        ])
        .unwrap();
        let Command::Admin(AdminCommand::Debug(DebugCommand::CreateNode(args))) = cli.command
        else {
            panic!("not create-node");
        };
        assert_eq!(args.routes, ["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"]);
        assert_eq!(args.key, None);
    }
}
