//! `-u/--user` values: a user name or a numeric user id, as Headscale admins
//! pass them, resolved to the one user they mean.

use std::fmt;
use std::str::FromStr;

use meshscale_api::v1;

use super::client::{Client, call};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum UserRef {
    Id(u64),
    Name(String),
}

impl FromStr for UserRef {
    type Err = String;

    /// All digits is an id; anything else is a name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a user name or id is required".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(UserRef::Id)
                .map_err(|_| format!("user id {text} is too large"));
        }
        Ok(UserRef::Name(text.to_string()))
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Id(id) => write!(f, "with id {id}"),
            UserRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// The id to put in a request. An id is taken as given: the server checks it
/// and says so if it does not exist, which saves a round trip.
pub(super) async fn resolve_id(client: &mut Client, user: &UserRef) -> anyhow::Result<u64> {
    match user {
        UserRef::Id(id) => Ok(*id),
        UserRef::Name(_) => Ok(find_user(client, user).await?.id),
    }
}

/// The single user the reference names.
pub(super) async fn find_user(client: &mut Client, user: &UserRef) -> anyhow::Result<v1::User> {
    let request = match user {
        UserRef::Id(id) => v1::ListUsersRequest {
            id: *id,
            ..Default::default()
        },
        UserRef::Name(name) => v1::ListUsersRequest {
            name: name.clone(),
            ..Default::default()
        },
    };
    let users = call(client.list_users(request)).await?.users;
    pick_user(users, user)
}

fn pick_user(users: Vec<v1::User>, user: &UserRef) -> anyhow::Result<v1::User> {
    // The filter is the server's; matching again here keeps a looser server
    // filter (prefix, case-insensitive) from picking the wrong user.
    let mut matching: Vec<v1::User> = users
        .into_iter()
        .filter(|u| match user {
            UserRef::Id(id) => u.id == *id,
            UserRef::Name(name) => u.name == *name,
        })
        .collect();
    match matching.len() {
        0 => anyhow::bail!("user {user} not found"),
        1 => Ok(matching.remove(0)),
        _ => anyhow::bail!("more than one user is named {user}; use the user id instead"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_ids_and_everything_else_is_a_name() {
        assert_eq!("42".parse(), Ok(UserRef::Id(42)));
        assert_eq!(" 7 ".parse(), Ok(UserRef::Id(7)));
        assert_eq!("alice".parse(), Ok(UserRef::Name("alice".into())));
        assert_eq!("user1".parse(), Ok(UserRef::Name("user1".into())));
        assert_eq!("-1".parse(), Ok(UserRef::Name("-1".into())));
        assert_eq!(
            "alice@example.com".parse(),
            Ok(UserRef::Name("alice@example.com".into()))
        );
        assert!("".parse::<UserRef>().is_err());
        assert!("99999999999999999999999".parse::<UserRef>().is_err());
    }

    fn user(id: u64, name: &str) -> v1::User {
        v1::User {
            id,
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn picking_needs_exactly_one_exact_match() {
        let alice = UserRef::Name("alice".into());
        assert_eq!(
            pick_user(vec![user(1, "alice"), user(2, "alice2")], &alice)
                .unwrap()
                .id,
            1
        );
        assert_eq!(
            pick_user(vec![user(2, "alice2")], &alice)
                .unwrap_err()
                .to_string(),
            "user \"alice\" not found"
        );
        assert!(pick_user(vec![user(1, "alice"), user(3, "alice")], &alice).is_err());
        assert_eq!(
            pick_user(vec![user(5, "bob")], &UserRef::Id(5))
                .unwrap()
                .name,
            "bob"
        );
        assert_eq!(
            pick_user(vec![], &UserRef::Id(5)).unwrap_err().to_string(),
            "user with id 5 not found"
        );
    }
}
