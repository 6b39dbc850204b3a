//! `meshscale nodes`: list, register, expire, rename, delete, move and tag nodes.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use meshscale_api::v1;

use super::Context;
use super::client::{Client, call};
use super::confirm::{self, Decision, Unattended};
use super::output::{NodeView, Table, short_key, time_or, yes_no};
use super::preauthkeys::clean_tags;
use super::times::{rfc3339_arg, table_time, to_timestamp};
use super::user_ref::{UserRef, resolve_id};

#[derive(Subcommand, Debug)]
pub(super) enum NodesCommand {
    /// List nodes
    #[command(visible_aliases = ["ls", "show"])]
    List(ListArgs),
    /// Admit a node waiting for registration (the id its login URL shows)
    Register(RegisterArgs),
    /// Expire a node (log it out) or change or disable its expiry
    #[command(visible_aliases = ["logout", "exp", "e"])]
    Expire(ExpireArgs),
    /// Rename a node (its DNS label in the tailnet)
    Rename(RenameArgs),
    /// Delete a node
    #[command(visible_alias = "del")]
    Delete(NodeIdArgs),
    /// Move a node to another user
    #[command(visible_alias = "mv")]
    Move(MoveArgs),
    /// Set the tags of a node
    #[command(visible_aliases = ["tags", "t"])]
    Tag(TagArgs),
}

#[derive(Args, Debug)]
pub(super) struct ListArgs {
    /// Only the nodes of this user (name or id)
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct RegisterArgs {
    /// User to own the node (name or id)
    #[arg(short, long, value_name = "USER")]
    user: String,
    /// Registration id of the waiting node
    #[arg(short, long, value_name = "KEY")]
    key: String,
}

#[derive(Args, Debug)]
pub(super) struct NodeIdArgs {
    /// Node id
    #[arg(short, long, value_name = "ID")]
    identifier: u64,
}

#[derive(Args, Debug)]
pub(super) struct ExpireArgs {
    /// Node id
    #[arg(short, long, value_name = "ID")]
    identifier: u64,
    /// Expire at this time (RFC 3339, e.g. 2025-08-27T10:00:00Z) instead of now
    #[arg(short, long, value_name = "TIME")]
    expiry: Option<String>,
    /// Disable key expiry: the node never expires
    #[arg(short, long, conflicts_with = "expiry")]
    disable: bool,
}

#[derive(Args, Debug)]
pub(super) struct RenameArgs {
    /// Node id
    #[arg(short, long, value_name = "ID")]
    identifier: u64,
    /// New name; without it the server derives one from the hostname again
    #[arg(value_name = "NEW_NAME")]
    new_name: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct MoveArgs {
    /// Node id
    #[arg(short, long, value_name = "ID")]
    identifier: u64,
    /// The new owner (name or id)
    #[arg(short, long, value_name = "USER")]
    user: UserRef,
}

#[derive(Args, Debug)]
pub(super) struct TagArgs {
    /// Node id
    #[arg(short, long, value_name = "ID")]
    identifier: u64,
    /// The node's tags, comma-separated (tag:a,tag:b); replaces the current ones, "" clears them
    #[arg(
        short,
        long,
        value_name = "TAGS",
        value_delimiter = ',',
        required = true,
        num_args = 1
    )]
    tags: Vec<String>,
}

pub(super) async fn run(
    client: &mut Client,
    ctx: &Context,
    command: NodesCommand,
) -> anyhow::Result<()> {
    match command {
        NodesCommand::List(args) => list(client, ctx, args).await,
        NodesCommand::Register(args) => {
            let request = v1::RegisterNodeRequest {
                user: args.user,
                key: args.key,
            };
            let node = call(client.register_node(request)).await?.node;
            print_node(ctx, node.as_ref(), "Node registered")
        }
        NodesCommand::Expire(args) => expire(client, ctx, args).await,
        NodesCommand::Rename(args) => {
            let request = v1::RenameNodeRequest {
                node_id: args.identifier,
                new_name: args.new_name.unwrap_or_default(),
            };
            let node = call(client.rename_node(request)).await?.node;
            print_node(ctx, node.as_ref(), "Node renamed")
        }
        NodesCommand::Delete(args) => delete(client, ctx, args).await,
        NodesCommand::Move(args) => {
            let user = resolve_id(client, &args.user).await?;
            let request = v1::MoveNodeRequest {
                node_id: args.identifier,
                user,
            };
            let node = call(client.move_node(request)).await?.node;
            print_node(ctx, node.as_ref(), "Node moved to another user")
        }
        NodesCommand::Tag(args) => {
            let request = v1::SetTagsRequest {
                node_id: args.identifier,
                tags: clean_tags(args.tags),
            };
            let node = call(client.set_tags(request)).await?.node;
            print_node(ctx, node.as_ref(), "Node updated")
        }
    }
}

fn print_node(ctx: &Context, node: Option<&v1::Node>, message: &str) -> anyhow::Result<()> {
    match node {
        Some(node) => ctx.print.object(&NodeView::from(node), message),
        None => ctx.print.result(message),
    }
}

async fn list(client: &mut Client, ctx: &Context, args: ListArgs) -> anyhow::Result<()> {
    let user = args.user.map(|u| u.trim().to_string()).unwrap_or_default();
    let nodes = call(client.list_nodes(v1::ListNodesRequest { user }))
        .await?
        .nodes;
    let views: Vec<NodeView> = nodes.iter().map(NodeView::from).collect();
    ctx.print.list(&views, || nodes_table(&nodes))
}

fn nodes_table(nodes: &[v1::Node]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "Hostname",
        "Name",
        "MachineKey",
        "NodeKey",
        "User",
        "Tags",
        "IP addresses",
        "Ephemeral",
        "Last seen",
        "Expiration",
        "Connected",
        "Expired",
    ]);
    for n in nodes {
        table.row(vec![
            n.id.to_string(),
            n.name.clone(),
            n.given_name.clone(),
            short_key(&n.machine_key),
            short_key(&n.node_key),
            n.user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
            n.tags.join(","),
            n.ip_addresses.join(", "),
            n.ephemeral.to_string(),
            table_time(n.last_seen.as_ref()),
            time_or(n.expiry.as_ref(), "N/A"),
            if n.online { "online" } else { "offline" }.to_string(),
            yes_no(n.expired),
        ]);
    }
    table
}

async fn expire(client: &mut Client, ctx: &Context, args: ExpireArgs) -> anyhow::Result<()> {
    let expiry = match args.expiry.as_deref() {
        Some(text) => {
            Some(rfc3339_arg(text).map_err(|e| anyhow::anyhow!("invalid --expiry: {e}"))?)
        }
        None => None,
    };
    let request = v1::ExpireNodeRequest {
        node_id: args.identifier,
        expiry: expiry.map(to_timestamp),
        disable_expiry: args.disable,
    };
    let node = call(client.expire_node(request)).await?.node;
    print_node(
        ctx,
        node.as_ref(),
        expire_message(args.disable, expiry, Utc::now()),
    )
}

/// Headscale's wording, which tells an immediate logout from a rescheduled one.
fn expire_message(
    disable: bool,
    expiry: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> &'static str {
    match expiry {
        _ if disable => "Node expiry disabled",
        Some(at) if at > now => "Node expiration updated",
        _ => "Node expired",
    }
}

async fn delete(client: &mut Client, ctx: &Context, args: NodeIdArgs) -> anyhow::Result<()> {
    let node_id = args.identifier;
    if confirm::decide(ctx.force, confirm::stdin_is_terminal(), Unattended::Proceed)
        == Decision::Ask
    {
        // Only a person needs the name; scripts go straight to the deletion.
        let node = call(client.get_node(v1::GetNodeRequest { node_id }))
            .await?
            .node
            .ok_or_else(|| anyhow::anyhow!("node {node_id} not found"))?;
        let name = if node.given_name.is_empty() {
            &node.name
        } else {
            &node.given_name
        };
        if !confirm::ask(&format!("Do you want to remove the node {name:?}?"))? {
            return ctx.print.result("Node not deleted");
        }
    }
    call(client.delete_node(v1::DeleteNodeRequest { node_id })).await?;
    ctx.print.result("Node deleted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn nodes_table_columns() {
        let nodes = vec![
            v1::Node {
                id: 1,
                machine_key: "mkey:0123456789abcdef".into(),
                node_key: "nodekey:fedcba9876543210".into(),
                ip_addresses: vec!["100.64.0.1".into(), "fd7a:115c:a1e0::1".into()],
                name: "laptop".into(),
                given_name: "laptop-1".into(),
                user: Some(v1::User {
                    id: 1,
                    name: "alice".into(),
                    ..Default::default()
                }),
                last_seen: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                tags: vec!["tag:a".into(), "tag:b".into()],
                online: true,
                ..Default::default()
            },
            v1::Node {
                id: 2,
                name: "srv".into(),
                given_name: "srv".into(),
                expiry: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                ephemeral: true,
                expired: true,
                ..Default::default()
            },
        ];
        let rendered = nodes_table(&nodes).render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ID | Hostname | Name     | MachineKey | NodeKey  | User  | Tags        | IP addresses                  \
             | Ephemeral | Last seen           | Expiration          | Connected | Expired"
        );
        assert_eq!(
            lines[1],
            "1  | laptop   | laptop-1 | [012345]   | [fedcba] | alice | tag:a,tag:b | 100.64.0.1, fd7a:115c:a1e0::1 \
             | false     | 2006-01-02 15:04:05 | N/A                 | online    | no"
        );
        assert_eq!(
            lines[2],
            "2  | srv      | srv      |            |          |       |             |                               \
             | true      |                     | 2006-01-02 15:04:05 | offline   | yes"
        );
    }

    #[test]
    fn expire_wording() {
        let now = rfc3339_arg("2025-01-01T00:00:00Z").unwrap();
        let later = rfc3339_arg("2025-02-01T00:00:00Z").unwrap();
        assert_eq!(expire_message(false, None, now), "Node expired");
        assert_eq!(expire_message(false, Some(now), now), "Node expired");
        assert_eq!(
            expire_message(false, Some(later), now),
            "Node expiration updated"
        );
        assert_eq!(expire_message(true, None, now), "Node expiry disabled");
    }
}
