//! `meshscale preauthkeys`: keys that let a node join without an interactive login.

use clap::{Args, Subcommand};
use meshscale_api::v1;

use super::Context;
use super::client::{Client, call};
use super::output::{PreAuthKeyView, Table, time_or};
use super::times::{expiration_flag, table_time};
use super::user_ref::{UserRef, resolve_id};

#[derive(Subcommand, Debug)]
pub(super) enum PreAuthKeysCommand {
    /// Create a pre-auth key; prints the key, which cannot be shown again
    #[command(visible_aliases = ["c", "new"])]
    Create(CreateArgs),
    /// List pre-auth keys (their prefixes, never the secrets)
    #[command(visible_aliases = ["ls", "show"])]
    List(ListArgs),
    /// Expire a pre-auth key so that it can no longer be used
    #[command(visible_aliases = ["revoke", "exp", "e"])]
    Expire(IdArgs),
    /// Delete a pre-auth key
    #[command(visible_aliases = ["del", "rm", "d"])]
    Delete(IdArgs),
}

#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    /// Owner of the key and of the nodes that join with it: a user name or id
    #[arg(short, long, value_name = "USER")]
    user: Option<UserRef>,
    /// The key can register more than one node
    #[arg(long)]
    reusable: bool,
    /// Nodes that join with the key are removed once they go offline
    #[arg(long)]
    ephemeral: bool,
    /// How long the key stays valid (e.g. 30m, 24h, 90d)
    #[arg(
        short,
        long,
        value_name = "DURATION",
        default_value = "1h",
        allow_hyphen_values = true
    )]
    expiration: String,
    /// Tags given to nodes that join with the key, comma-separated (tag:a,tag:b)
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    tags: Vec<String>,
}

#[derive(Args, Debug)]
pub(super) struct ListArgs {
    /// Only the keys of this user (name or id)
    #[arg(short, long, value_name = "USER")]
    user: Option<UserRef>,
}

#[derive(Args, Debug)]
pub(super) struct IdArgs {
    /// Pre-auth key id (see `meshscale preauthkeys list`)
    #[arg(short, long)]
    id: u64,
}

pub(super) async fn run(
    client: &mut Client,
    ctx: &Context,
    command: PreAuthKeysCommand,
) -> anyhow::Result<()> {
    match command {
        PreAuthKeysCommand::Create(args) => create(client, ctx, args).await,
        PreAuthKeysCommand::List(args) => list(client, ctx, args).await,
        PreAuthKeysCommand::Expire(args) => {
            call(client.expire_pre_auth_key(v1::ExpirePreAuthKeyRequest { id: args.id })).await?;
            ctx.print.result("Key expired")
        }
        PreAuthKeysCommand::Delete(args) => {
            call(client.delete_pre_auth_key(v1::DeletePreAuthKeyRequest { id: args.id })).await?;
            ctx.print.result("Key deleted")
        }
    }
}

async fn create(client: &mut Client, ctx: &Context, args: CreateArgs) -> anyhow::Result<()> {
    let expiration = expiration_flag(chrono::Utc::now(), &args.expiration)?;
    let user = match &args.user {
        Some(user) => resolve_id(client, user).await?,
        None => 0,
    };
    let request = v1::CreatePreAuthKeyRequest {
        user,
        reusable: args.reusable,
        ephemeral: args.ephemeral,
        expiration: Some(expiration),
        acl_tags: clean_tags(args.tags),
    };
    let key = call(client.create_pre_auth_key(request))
        .await?
        .pre_auth_key
        .ok_or_else(|| anyhow::anyhow!("the server created a key but did not return it"))?;
    ctx.print.object(&PreAuthKeyView::from(&key), &key.key)
}

/// `--tags a,,b` and `--tags ""` leave no empty tags behind.
pub(super) fn clean_tags(tags: Vec<String>) -> Vec<String> {
    tags.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

async fn list(client: &mut Client, ctx: &Context, args: ListArgs) -> anyhow::Result<()> {
    let user = match &args.user {
        Some(user) => resolve_id(client, user).await?,
        None => 0,
    };
    let keys = call(client.list_pre_auth_keys(v1::ListPreAuthKeysRequest { user }))
        .await?
        .pre_auth_keys;
    let views: Vec<PreAuthKeyView> = keys.iter().map(PreAuthKeyView::from).collect();
    ctx.print.list(&views, || keys_table(&keys))
}

fn keys_table(keys: &[v1::PreAuthKey]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "Key/Prefix",
        "Reusable",
        "Ephemeral",
        "Used",
        "Expiration",
        "Created",
        "Owner",
    ]);
    for k in keys {
        table.row(vec![
            k.id.to_string(),
            k.key.clone(),
            k.reusable.to_string(),
            k.ephemeral.to_string(),
            k.used.to_string(),
            time_or(k.expiration.as_ref(), "-"),
            table_time(k.created_at.as_ref()),
            owner(k),
        ]);
    }
    table
}

/// The user that owns the key, or for a tags-only key its tags.
fn owner(key: &v1::PreAuthKey) -> String {
    match &key.user {
        Some(user) if !user.name.is_empty() => user.name.clone(),
        _ if !key.acl_tags.is_empty() => key.acl_tags.join(","),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn keys_table_columns_and_owner() {
        let keys = vec![
            v1::PreAuthKey {
                id: 1,
                key: "hskey-auth-abc***".into(),
                user: Some(v1::User {
                    id: 1,
                    name: "alice".into(),
                    ..Default::default()
                }),
                reusable: true,
                expiration: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                created_at: Some(Timestamp {
                    seconds: 1_136_210_645,
                    nanos: 0,
                }),
                ..Default::default()
            },
            v1::PreAuthKey {
                id: 2,
                key: "hskey-auth-def***".into(),
                acl_tags: vec!["tag:a".into(), "tag:b".into()],
                used: true,
                ..Default::default()
            },
        ];
        assert_eq!(
            keys_table(&keys).render(),
            "\
ID | Key/Prefix        | Reusable | Ephemeral | Used  | Expiration          | Created             | Owner
1  | hskey-auth-abc*** | true     | false     | false | 2006-01-02 15:04:05 | 2006-01-02 14:04:05 | alice
2  | hskey-auth-def*** | false    | false     | true  | -                   |                     | tag:a,tag:b"
        );
    }

    #[test]
    fn tags_are_cleaned() {
        assert_eq!(
            clean_tags(vec!["tag:a".into(), "".into(), " tag:b ".into()]),
            vec!["tag:a", "tag:b"]
        );
        assert!(clean_tags(vec!["".into()]).is_empty());
    }
}
