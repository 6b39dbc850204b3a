//! Everything the admin commands print on stdout: Headscale-style tables for
//! people, and JSON / JSON lines / YAML for scripts.
//!
//! The machine formats serialise small views of the protobuf messages defined
//! here rather than the generated types, so the printed shape (snake_case
//! names as in Headscale's JSON, RFC 3339 times) is a decision of this file
//! and not a side effect of code generation.

use std::io::{ErrorKind, Write};

use anyhow::Context;
use meshscale_api::v1;
use serde::Serialize;

use super::times::{rfc3339, table_time};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutputFormat {
    Human,
    Json,
    JsonLine,
    Yaml,
}

/// Clap value parser for `-o/--output`; the empty string is Headscale's "human".
pub(super) fn parse_format(text: &str) -> Result<OutputFormat, String> {
    match text {
        "" => Ok(OutputFormat::Human),
        "json" => Ok(OutputFormat::Json),
        "json-line" => Ok(OutputFormat::JsonLine),
        "yaml" => Ok(OutputFormat::Yaml),
        other => Err(format!(
            "{other:?} is not one of \"\" (human-readable), json, json-line, yaml"
        )),
    }
}

/// Prints command results in the format chosen with `-o`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    /// A command that produced an object: the object for scripts, `human` for people.
    pub(super) fn object<T: Serialize + ?Sized>(
        &self,
        value: &T,
        human: &str,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Human => write_stdout(&sanitize(human)),
            format => write_stdout(&render_machine(format, value)?),
        }
    }

    /// A command whose only outcome is a confirmation sentence.
    pub(super) fn result(&self, human: &str) -> anyhow::Result<()> {
        self.object(&ResultView { result: human }, human)
    }

    /// A list: a table for people, an array for scripts.
    pub(super) fn list<T: Serialize>(
        &self,
        items: &[T],
        table: impl FnOnce() -> Table,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Human => write_stdout(&table().render()),
            format => write_stdout(&render_machine(format, items)?),
        }
    }
}

/// The text for a machine format, without a trailing newline.
pub(super) fn render_machine<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
) -> anyhow::Result<String> {
    let text = match format {
        OutputFormat::Json | OutputFormat::Human => {
            serde_json::to_string_pretty(value).context("encoding JSON")?
        }
        OutputFormat::JsonLine => serde_json::to_string(value).context("encoding JSON")?,
        OutputFormat::Yaml => serde_yaml::to_string(value).context("encoding YAML")?,
    };
    Ok(text.trim_end().to_string())
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) is not a failure of the command.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Makes text from the server safe for a terminal and for one-line output:
/// hostnames and names are chosen by clients and could otherwise carry
/// newlines that break a table or escape sequences that rewrite the screen.
pub(super) fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A table like Headscale's pterm tables without colours: a header row,
/// columns left-aligned and padded to the widest cell, ` | ` between them.
#[derive(Debug, Clone, Default)]
pub(super) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| sanitize(c)).collect());
    }

    /// Lines joined by `\n`, none with trailing spaces, no final newline.
    pub(super) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut lines = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                if i > 0 {
                    line.push_str(" | ");
                }
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
                }
            }
            lines.push(line.trim_end().to_string());
        }
        lines.join("\n")
    }
}

/// Headscale's short form of a key: `[` + the first 6 characters after the
/// type prefix (`mkey:`, `nodekey:`) + `]`; empty when there is no key.
pub(super) fn short_key(key: &str) -> String {
    let body = key.split_once(':').map(|(_, rest)| rest).unwrap_or(key);
    if body.is_empty() {
        return String::new();
    }
    format!("[{}]", body.chars().take(6).collect::<String>())
}

pub(super) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

#[derive(Serialize)]
struct ResultView<'a> {
    result: &'a str,
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct UserView {
    pub id: u64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub display_name: String,
    pub email: String,
    pub provider_id: String,
    pub provider: String,
    pub profile_pic_url: String,
}

impl From<&v1::User> for UserView {
    fn from(u: &v1::User) -> Self {
        UserView {
            id: u.id,
            name: u.name.clone(),
            created_at: rfc3339(u.created_at.as_ref()),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            provider_id: u.provider_id.clone(),
            provider: u.provider.clone(),
            profile_pic_url: u.profile_pic_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct PreAuthKeyView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserView>,
    pub id: u64,
    pub key: String,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub acl_tags: Vec<String>,
}

impl From<&v1::PreAuthKey> for PreAuthKeyView {
    fn from(k: &v1::PreAuthKey) -> Self {
        PreAuthKeyView {
            user: k.user.as_ref().map(UserView::from),
            id: k.id,
            key: k.key.clone(),
            reusable: k.reusable,
            ephemeral: k.ephemeral,
            used: k.used,
            expiration: rfc3339(k.expiration.as_ref()),
            created_at: rfc3339(k.created_at.as_ref()),
            acl_tags: k.acl_tags.clone(),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct NodeView {
    pub id: u64,
    pub machine_key: String,
    pub node_key: String,
    pub disco_key: String,
    pub ip_addresses: Vec<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_auth_key: Option<PreAuthKeyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub register_method: &'static str,
    pub tags: Vec<String>,
    pub given_name: String,
    pub online: bool,
    pub ephemeral: bool,
    pub expired: bool,
}

impl From<&v1::Node> for NodeView {
    fn from(n: &v1::Node) -> Self {
        NodeView {
            id: n.id,
            machine_key: n.machine_key.clone(),
            node_key: n.node_key.clone(),
            disco_key: n.disco_key.clone(),
            ip_addresses: n.ip_addresses.clone(),
            name: n.name.clone(),
            user: n.user.as_ref().map(UserView::from),
            last_seen: rfc3339(n.last_seen.as_ref()),
            expiry: rfc3339(n.expiry.as_ref()),
            pre_auth_key: n.pre_auth_key.as_ref().map(PreAuthKeyView::from),
            created_at: rfc3339(n.created_at.as_ref()),
            register_method: n.register_method().as_str_name(),
            tags: n.tags.clone(),
            given_name: n.given_name.clone(),
            online: n.online,
            ephemeral: n.ephemeral,
            expired: n.expired,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct ApiKeyView {
    pub id: u64,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

impl From<&v1::ApiKey> for ApiKeyView {
    fn from(k: &v1::ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            prefix: k.prefix.clone(),
            expiration: rfc3339(k.expiration.as_ref()),
            created_at: rfc3339(k.created_at.as_ref()),
            last_seen: rfc3339(k.last_seen.as_ref()),
        }
    }
}

/// Table cell for an optional time that Headscale shows as a placeholder when unset.
pub(super) fn time_or(ts: Option<&prost_types::Timestamp>, placeholder: &str) -> String {
    match table_time(ts) {
        t if t.is_empty() => placeholder.to_string(),
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn table_pads_columns_and_separates_with_bars() {
        let mut t = Table::new(&["ID", "Name", "Email"]);
        t.row(vec!["1".into(), "alice".into(), "a@example.com".into()]);
        t.row(vec!["10".into(), "bob-the-builder".into(), String::new()]);
        let want = "\
ID | Name            | Email
1  | alice           | a@example.com
10 | bob-the-builder |";
        assert_eq!(t.render(), want);
        assert!(t.render().lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn empty_table_is_its_header_and_short_rows_are_padded() {
        assert_eq!(Table::new(&["ID", "Prefix"]).render(), "ID | Prefix");
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A | B | C\nx |   |");
    }

    #[test]
    fn table_counts_characters_not_bytes_and_neutralises_control_characters() {
        let mut t = Table::new(&["Name", "X"]);
        t.row(vec!["zoë".into(), "1".into()]);
        t.row(vec!["evil\n\u{1b}[2J".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "Name            | X\nzoë             | 1\nevil\\n\\u{1b}[2J | 2"
        );
    }

    #[test]
    fn keys_are_shortened_like_headscale() {
        assert_eq!(short_key("mkey:0123456789abcdef"), "[012345]");
        assert_eq!(short_key("nodekey:fedcba9876543210"), "[fedcba]");
        assert_eq!(short_key("abc"), "[abc]");
        assert_eq!(short_key(""), "");
        assert_eq!(short_key("nodekey:"), "");
    }

    #[test]
    fn output_format_names() {
        assert_eq!(parse_format(""), Ok(OutputFormat::Human));
        assert_eq!(parse_format("json"), Ok(OutputFormat::Json));
        assert_eq!(parse_format("json-line"), Ok(OutputFormat::JsonLine));
        assert_eq!(parse_format("yaml"), Ok(OutputFormat::Yaml));
        assert!(parse_format("table").is_err());
    }

    fn alice() -> v1::User {
        v1::User {
            id: 3,
            name: "alice".into(),
            created_at: Some(Timestamp {
                seconds: 1_136_214_245,
                nanos: 0,
            }),
            display_name: "Alice A.".into(),
            email: "alice@example.com".into(),
            ..Default::default()
        }
    }

    #[test]
    fn user_json_and_yaml_shapes() {
        let view = UserView::from(&alice());
        let json: serde_json::Value =
            serde_json::from_str(&render_machine(OutputFormat::Json, &view).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": 3,
                "name": "alice",
                "created_at": "2006-01-02T15:04:05Z",
                "display_name": "Alice A.",
                "email": "alice@example.com",
                "provider_id": "",
                "provider": "",
                "profile_pic_url": "",
            })
        );
        let line = render_machine(OutputFormat::JsonLine, &[view]).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"[{"id":3,"name":"alice","created_at":"2006-01-02T15:04:05Z""#),
            "{line}"
        );
        let yaml = render_machine(OutputFormat::Yaml, &UserView::from(&alice())).unwrap();
        assert!(
            yaml.starts_with("id: 3\nname: alice\ncreated_at: 2006-01-02T15:04:05Z\n"),
            "{yaml}"
        );
    }

    #[test]
    fn node_json_shape_omits_unset_times_and_names_the_register_method() {
        let node = v1::Node {
            id: 7,
            machine_key: "mkey:00".into(),
            ip_addresses: vec!["100.64.0.1".into(), "fd7a:115c:a1e0::1".into()],
            name: "laptop".into(),
            user: Some(alice()),
            register_method: v1::RegisterMethod::Cli as i32,
            given_name: "laptop".into(),
            online: true,
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_str(
            &render_machine(OutputFormat::Json, &NodeView::from(&node)).unwrap(),
        )
        .unwrap();
        assert_eq!(json["register_method"], "REGISTER_METHOD_CLI");
        assert_eq!(json["user"]["name"], "alice");
        assert_eq!(json["ip_addresses"][1], "fd7a:115c:a1e0::1");
        assert!(json.get("expiry").is_none() && json.get("last_seen").is_none());
        assert_eq!(json["online"], true);
        assert_eq!(json["expired"], false);
    }

    #[test]
    fn result_messages_become_objects_for_scripts() {
        let text = render_machine(
            OutputFormat::JsonLine,
            &ResultView {
                result: "User destroyed",
            },
        )
        .unwrap();
        assert_eq!(text, r#"{"result":"User destroyed"}"#);
        let text = render_machine(
            OutputFormat::Yaml,
            &ResultView {
                result: "Key expired",
            },
        )
        .unwrap();
        assert_eq!(text, "result: Key expired");
    }
}
