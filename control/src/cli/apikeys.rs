//! `meshscale apikeys`: keys for the remote admin API (`--remote`).

use clap::{Args, Subcommand};
use meshscale_api::v1;

use super::Context;
use super::client::{Client, call};
use super::output::{ApiKeyView, Table, time_or};
use super::times::{expiration_flag, table_time};

#[derive(Subcommand, Debug)]
pub(super) enum ApiKeysCommand {
    /// Create an API key; prints the key, which cannot be shown again.
    /// If a key is lost, create a new one and expire the old one
    #[command(visible_aliases = ["c", "new"])]
    Create(CreateArgs),
    /// List API keys (their prefixes, never the secrets)
    #[command(visible_aliases = ["ls", "show"])]
    List,
    /// Expire an API key so that it is no longer accepted
    #[command(visible_aliases = ["revoke", "exp", "e"])]
    Expire(KeySelector),
    /// Delete an API key
    #[command(visible_aliases = ["remove", "del"])]
    Delete(KeySelector),
}

#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    /// How long the key stays valid (e.g. 30m, 24h, 90d)
    #[arg(
        short,
        long,
        value_name = "DURATION",
        default_value = "90d",
        allow_hyphen_values = true
    )]
    expiration: String,
}

/// `-p PREFIX` or `-i ID`, exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(super) struct KeySelector {
    /// API key prefix (see `meshscale apikeys list`)
    #[arg(short, long)]
    prefix: Option<String>,
    /// API key id
    #[arg(short, long)]
    id: Option<u64>,
}

pub(super) async fn run(
    client: &mut Client,
    ctx: &Context,
    command: ApiKeysCommand,
) -> anyhow::Result<()> {
    match command {
        ApiKeysCommand::Create(args) => {
            let expiration = expiration_flag(chrono::Utc::now(), &args.expiration)?;
            let request = v1::CreateApiKeyRequest {
                expiration: Some(expiration),
            };
            let key = call(client.create_api_key(request)).await?.api_key;
            // As Headscale: the key alone, a bare string in the machine formats too.
            ctx.print.object(&key, &key)
        }
        ApiKeysCommand::List => {
            let keys = call(client.list_api_keys(v1::ListApiKeysRequest {}))
                .await?
                .api_keys;
            let views: Vec<ApiKeyView> = keys.iter().map(ApiKeyView::from).collect();
            ctx.print.list(&views, || keys_table(&keys))
        }
        ApiKeysCommand::Expire(key) => {
            let request = v1::ExpireApiKeyRequest {
                prefix: key.prefix.unwrap_or_default(),
                id: key.id.unwrap_or(0),
            };
            call(client.expire_api_key(request)).await?;
            ctx.print.result("Key expired")
        }
        ApiKeysCommand::Delete(key) => {
            let request = v1::DeleteApiKeyRequest {
                prefix: key.prefix.unwrap_or_default(),
                id: key.id.unwrap_or(0),
            };
            call(client.delete_api_key(request)).await?;
            ctx.print.result("Key deleted")
        }
    }
}

fn keys_table(keys: &[v1::ApiKey]) -> Table {
    let mut table = Table::new(&["ID", "Prefix", "Expiration", "Created"]);
    for k in keys {
        table.row(vec![
            k.id.to_string(),
            k.prefix.clone(),
            time_or(k.expiration.as_ref(), "-"),
            table_time(k.created_at.as_ref()),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn keys_table_columns() {
        let keys = vec![
            v1::ApiKey {
                id: 1,
                prefix: "msk_abc".into(),
                expiration: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                created_at: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                last_seen: None,
            },
            v1::ApiKey {
                id: 2,
                prefix: "msk_defgh".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            keys_table(&keys).render(),
            "\
ID | Prefix    | Expiration          | Created
1  | msk_abc   | 2006-01-02 15:04:05 | 2006-01-02 15:04:05
2  | msk_defgh | -                   |"
        );
    }
}
