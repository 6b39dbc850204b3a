//! Scenario 4: interactive login. `tailscale up` without a key prints the
//! server's `/register/<id>` URL and waits; the page names the admin command;
//! the admin runs it, and the waiting client goes to Running by itself.

use std::time::Duration;

use meshscale_e2e::TsNode;
use meshscale_e2e::poll::eventually;

use crate::common::{CONVERGE, Clock, LanWorld, node, tools};

/// The `/register/<id>` URL in `text`, if any.
fn register_url(text: &str, server_url: &str) -> Option<String> {
    let prefix = format!("{server_url}/register/");
    let start = text.find(&prefix)?;
    let url: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (url.len() > prefix.len()).then_some(url)
}

/// The command the page tells the admin to run, as arguments after `meshscale`.
fn admin_command(page: &str) -> Option<Vec<String>> {
    let start = page.find("meshscale nodes register")?;
    let line = page[start..].lines().next()?;
    // Drop markup that may close the command on the same line.
    let line = line.split('<').next()?;
    Some(line.split_whitespace().skip(1).map(String::from).collect())
}

#[test]
fn interactive_login_is_admitted_by_the_admin() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = LanWorld::new("login", &tools, 1, "");
    let s = &w.server;
    s.create_user("vpn1").expect("users create");
    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled");

    // `up` without a key waits for the login; it runs in the background.
    let mut up = n1.spawn_interactive_up(&w.lab, s).expect("tailscale up");
    let url = eventually("the login URL", CONVERGE, || {
        // The command prints it; the status JSON carries it too.
        let printed = register_url(&up.log_text(), &s.url());
        let in_status = register_url(&n1.status()?.auth_url, &s.url());
        printed
            .or(in_status)
            .ok_or_else(|| anyhow::anyhow!("no URL yet; up printed: {}", up.log_text()))
    })
    .expect("login URL");
    let id = url.rsplit('/').next().expect("id").to_string();
    clock.mark(&format!("login URL {url}"));
    assert_eq!(
        n1.status().expect("status").backend_state,
        "NeedsLogin",
        "waiting for the admin"
    );

    // The page, fetched from the node's namespace like a user's browser would.
    let page = s
        .https_get_from(n1.ns(), &format!("/register/{id}"))
        .expect("GET register page");
    let mut command = admin_command(&page)
        .unwrap_or_else(|| panic!("no `meshscale nodes register` command on the page:\n{page}"));
    assert_eq!(
        command,
        [
            "nodes",
            "register",
            "--key",
            id.as_str(),
            "--user",
            "USERNAME"
        ],
        "{page}"
    );
    *command.last_mut().expect("USERNAME") = "vpn1".to_string();
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let said = s.cli(&args).expect("nodes register");
    clock.mark(&format!(
        "admin ran `meshscale {}`: {}",
        args.join(" "),
        said.trim()
    ));

    // The same `up` finishes on its own, and the node is in.
    let status = n1
        .wait_state("Running", CONVERGE)
        .expect("Running after approval");
    assert_eq!(
        status.self_ips(),
        ["100.64.0.1", "fd7a:115c:a1e0::1"],
        "{status:?}"
    );
    let exit = up.wait_exit(Duration::from_secs(20)).expect("`up` returns");
    assert!(
        exit.success(),
        "`tailscale up` ended with {exit}: {}",
        up.log_text()
    );
    let nodes = s.nodes().expect("nodes list");
    let n = node(&nodes, "nodo1").unwrap_or_else(|| panic!("nodo1 not listed: {nodes:?}"));
    assert_eq!(n.user.as_ref().map(|u| u.name.as_str()), Some("vpn1"));
    assert!(n.online, "{n:?}");
    clock.mark("Running, `up` exited 0, listed under vpn1");

    // The page no longer offers the id.
    let after = s
        .https_get_from(n1.ns(), &format!("/register/{id}"))
        .expect("GET again");
    assert!(!after.contains("is waiting to join"), "{after}");
}

#[test]
fn register_url_and_command_parsing() {
    let out = "\nTo authenticate, visit:\n\n\thttps://10.1.0.1:8443/register/AbC-123\n\n";
    assert_eq!(
        register_url(out, "https://10.1.0.1:8443").as_deref(),
        Some("https://10.1.0.1:8443/register/AbC-123")
    );
    assert_eq!(register_url("nothing", "https://x"), None);
    let page = "<pre><code>meshscale nodes register --key AbC --user USERNAME</code></pre>";
    assert_eq!(
        admin_command(page).expect("found"),
        ["nodes", "register", "--key", "AbC", "--user", "USERNAME"]
    );
}
