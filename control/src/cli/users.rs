//! `meshscale users`: create, list, rename and destroy users.

use clap::{Args, Subcommand};
use meshscale_api::v1;

use super::Context;
use super::client::{Client, call};
use super::confirm::{self, Decision, Unattended};
use super::output::{Table, UserView};
use super::times::table_time;
use super::user_ref::{UserRef, find_user};

#[derive(Subcommand, Debug)]
pub(super) enum UsersCommand {
    /// Create a user
    #[command(visible_aliases = ["c", "new"])]
    Create(CreateArgs),
    /// List users
    #[command(visible_aliases = ["ls", "show"])]
    List(ListArgs),
    /// Rename a user
    #[command(visible_alias = "mv")]
    Rename(RenameArgs),
    /// Destroy a user with its pre-auth keys and nodes
    #[command(visible_alias = "delete")]
    Destroy(DestroyArgs),
}

#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    /// User name (what `-u/--user` and node names refer to)
    // A name like "-x" is the server's to refuse, with its naming rules in the message.
    #[arg(value_name = "NAME", allow_hyphen_values = true)]
    name: String,
    #[arg(short = 'd', long)]
    display_name: Option<String>,
    #[arg(short, long)]
    email: Option<String>,
    /// Profile picture URL
    #[arg(short = 'p', long)]
    picture_url: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct ListArgs {
    /// Only the user with this id
    #[arg(short, long, value_name = "ID")]
    identifier: Option<u64>,
    /// Only the user with this name
    #[arg(short, long)]
    name: Option<String>,
    /// Only users with this email
    #[arg(short, long)]
    email: Option<String>,
}

/// `-i ID` or `-n NAME`, exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(super) struct UserSelector {
    /// User id
    #[arg(short, long, value_name = "ID")]
    identifier: Option<u64>,
    /// User name
    #[arg(short, long)]
    name: Option<String>,
}

impl UserSelector {
    fn user_ref(&self) -> UserRef {
        match (&self.identifier, &self.name) {
            (Some(id), _) => UserRef::Id(*id),
            (None, name) => UserRef::Name(name.clone().unwrap_or_default()),
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct RenameArgs {
    #[command(flatten)]
    user: UserSelector,
    /// The new user name
    #[arg(short = 'r', long, value_name = "NAME")]
    new_name: String,
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false)]
pub(super) struct DestroyArgs {
    /// User name
    #[arg(value_name = "NAME")]
    user_name: Option<String>,
    /// User name
    #[arg(short, long)]
    name: Option<String>,
    /// User id
    #[arg(short, long, value_name = "ID")]
    identifier: Option<u64>,
}

impl DestroyArgs {
    fn user_ref(&self) -> UserRef {
        match (&self.identifier, &self.name, &self.user_name) {
            (Some(id), _, _) => UserRef::Id(*id),
            (None, Some(name), _) | (None, None, Some(name)) => UserRef::Name(name.clone()),
            (None, None, None) => UserRef::Name(String::new()),
        }
    }
}

pub(super) async fn run(
    client: &mut Client,
    ctx: &Context,
    command: UsersCommand,
) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create(args) => create(client, ctx, args).await,
        UsersCommand::List(args) => list(client, ctx, args).await,
        UsersCommand::Rename(args) => rename(client, ctx, args).await,
        UsersCommand::Destroy(args) => destroy(client, ctx, args).await,
    }
}

async fn create(client: &mut Client, ctx: &Context, args: CreateArgs) -> anyhow::Result<()> {
    let request = v1::CreateUserRequest {
        name: args.name,
        display_name: args.display_name.unwrap_or_default(),
        email: args.email.unwrap_or_default(),
        picture_url: args.picture_url.unwrap_or_default(),
    };
    let response = call(client.create_user(request)).await?;
    match response.user {
        Some(user) => ctx.print.object(&UserView::from(&user), "User created"),
        None => ctx.print.result("User created"),
    }
}

async fn list(client: &mut Client, ctx: &Context, args: ListArgs) -> anyhow::Result<()> {
    let request = v1::ListUsersRequest {
        id: args.identifier.unwrap_or(0),
        name: args.name.unwrap_or_default(),
        email: args.email.unwrap_or_default(),
    };
    let users = call(client.list_users(request)).await?.users;
    let views: Vec<UserView> = users.iter().map(UserView::from).collect();
    ctx.print.list(&views, || users_table(&users))
}

fn users_table(users: &[v1::User]) -> Table {
    let mut table = Table::new(&["ID", "Name", "Username", "Email", "Created"]);
    for u in users {
        table.row(vec![
            u.id.to_string(),
            u.display_name.clone(),
            u.name.clone(),
            u.email.clone(),
            table_time(u.created_at.as_ref()),
        ]);
    }
    table
}

async fn rename(client: &mut Client, ctx: &Context, args: RenameArgs) -> anyhow::Result<()> {
    let user = find_user(client, &args.user.user_ref()).await?;
    let request = v1::RenameUserRequest {
        old_id: user.id,
        new_name: args.new_name,
    };
    let response = call(client.rename_user(request)).await?;
    match response.user {
        Some(user) => ctx.print.object(&UserView::from(&user), "User renamed"),
        None => ctx.print.result("User renamed"),
    }
}

async fn destroy(client: &mut Client, ctx: &Context, args: DestroyArgs) -> anyhow::Result<()> {
    let user = find_user(client, &args.user_ref()).await?;
    match confirm::decide(
        ctx.force,
        confirm::stdin_is_terminal(),
        Unattended::RequireForce,
    ) {
        Decision::Proceed => {}
        Decision::Refuse => {
            anyhow::bail!(
                "refusing to destroy user {:?} without confirmation; pass --force",
                user.name
            )
        }
        Decision::Ask => {
            let question = format!(
                "Do you want to remove the user {:?} and any associated preauthkeys and nodes?",
                user.name
            );
            if !confirm::ask(&question)? {
                return ctx.print.result("User not destroyed");
            }
        }
    }
    call(client.delete_user(v1::DeleteUserRequest { id: user.id })).await?;
    ctx.print.result("User destroyed")
}

#[cfg(test)]
mod tests {
    use super::super::{AdminCommand, Cli, Command};
    use super::*;
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateArgs {
        let cli = Cli::try_parse_from(["meshscale", "users", "create"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Admin(AdminCommand::Users(UsersCommand::Create(args))) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_takes_flags_anywhere_and_leaves_odd_names_to_the_server() {
        let a = create_args(&["-d", "Alice", "alice"]);
        assert_eq!(
            (a.name.as_str(), a.display_name.as_deref()),
            ("alice", Some("Alice"))
        );
        let a = create_args(&["alice", "-e", "a@example.com", "-p", "https://x/p.png"]);
        assert_eq!(
            (a.name.as_str(), a.email.as_deref()),
            ("alice", Some("a@example.com"))
        );
        assert_eq!(a.picture_url.as_deref(), Some("https://x/p.png"));
        assert_eq!(create_args(&["-bad"]).name, "-bad");
        assert_eq!(create_args(&["--force", "-bad"]).name, "-bad");
    }
    use prost_types::Timestamp;

    #[test]
    fn users_table_columns() {
        let users = vec![
            v1::User {
                id: 1,
                name: "alice".into(),
                display_name: "Alice".into(),
                email: "alice@example.com".into(),
                created_at: Some(Timestamp {
                    seconds: 1_136_214_245,
                    nanos: 0,
                }),
                ..Default::default()
            },
            v1::User {
                id: 12,
                name: "bob".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            users_table(&users).render(),
            "\
ID | Name  | Username | Email             | Created
1  | Alice | alice    | alice@example.com | 2006-01-02 15:04:05
12 |       | bob      |                   |"
        );
    }
}
