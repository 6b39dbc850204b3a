//! No secret in any log line, error message or listing (issue 7): a full
//! run (server logging at trace, an official client and two
//! `meshscale-sidecar` nodes logging at trace, the admin CLI locally and
//! remotely) creates pre-auth keys and API keys, registers nodes, provokes
//! every refusal it can (used, expired and wrong pre-auth keys; expired,
//! wrong and made-up API keys), then searches everything our processes
//! wrote for every secret it knows, in every encoding it could take:
//!   - the server's log, every sidecar's log, the stdout and stderr of every
//!     CLI command (except the one `create` output that shows a key once),
//!     `-o json` of every list command after creation, and what
//!     `tailscale up` printed (it carries the server's refusal messages);
//!   - pre-auth and API keys (whole, and their secret part), including the
//!     wrong ones presented; private keys read from the key files (server
//!     Noise and DERP keys, each sidecar's machine and node keys) as
//!     `privkey:` text, hex (both cases), base64 (standard and URL, padded
//!     or not) and Rust's `Debug` of a byte array.
//!
//! The sidecar's disco key lives only in memory, so it is not checked here.
//! Needs root and the official client like the other e2e tests;
//! `MESHSCALE_E2E_SKIP=1` skips. The sidecar binary is taken from next to
//! `meshscale` (`cargo build --workspace --bins` builds both).

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshscale_e2e::cmd::{self, Output, SHORT};
use meshscale_e2e::poll::eventually;
use meshscale_e2e::process::Proc;
use meshscale_e2e::{Lab, Ns, Server, Tools, TsNode};

const SERVER_IP: &str = "10.1.0.1";
const GRPC_ADDR: &str = "10.1.0.1:50443";
const CONVERGE: Duration = Duration::from_secs(40);

fn tools() -> Option<Tools> {
    Tools::detect().unwrap_or_else(|e| panic!("e2e prerequisites missing: {e:#}"))
}

/// Everything our processes printed that must hold no secret, by source.
#[derive(Default)]
struct Transcript {
    texts: Vec<(String, String)>,
}

impl Transcript {
    fn add(&mut self, source: &str, out: &Output) {
        self.texts
            .push((format!("{source} (stdout)"), out.stdout.clone()));
        self.texts
            .push((format!("{source} (stderr)"), out.stderr.clone()));
    }
}

/// The admin CLI, on the server's unix socket from the host.
fn cli(s: &Server, args: &[&str]) -> Output {
    s.cli_output(args).expect("run meshscale")
}

/// The admin CLI over remote gRPC (TLS + API key), run inside the server's
/// namespace where the admin port listens.
fn remote_cli(tools: &Tools, srv: &Ns, ca: &Path, api_key: &str, args: &[&str]) -> Output {
    let mut c = srv.command(&tools.meshscale);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MESHSCALE_CLI_ADDRESS", GRPC_ADDR)
        .env("MESHSCALE_CLI_CA_CERT", ca)
        .env("MESHSCALE_CLI_API_KEY", api_key)
        .env("MESHSCALE_UNIX_SOCKET", "/nonexistent/meshscale.sock")
        .args(args);
    cmd::run(&mut c, SHORT).expect("run remote meshscale")
}

/// `create -o json`: the one output allowed to show the key.
fn create_json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli(s, &all);
    assert!(out.success(), "meshscale {all:?}: {}", out.combined());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{all:?}: {e}: {}", out.stdout))
}

fn sidecar_bin(tools: &Tools) -> PathBuf {
    let p = tools.meshscale.with_file_name("meshscale-sidecar");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn start_sidecar(
    lab: &Lab,
    tools: &Tools,
    ns: &Ns,
    s: &Server,
    key: &str,
    hostname: &str,
) -> (Proc, PathBuf) {
    let state = lab.subdir(hostname).expect("state dir");
    let log = state.join("sidecar.log");
    lab.register_log(&log);
    let mut c = ns.command(sidecar_bin(tools));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MESHSCALE_LOG", "trace")
        .env("MESHSCALE_AUTHKEY", key)
        .arg("--state-dir")
        .arg(&state)
        .arg("up")
        .arg("--login-server")
        .arg(s.url())
        .arg("--hostname")
        .arg(hostname)
        .arg("--ca-file")
        .arg(s.ca());
    let proc = Proc::spawn(&format!("sidecar {hostname}"), c, &log).expect("spawn sidecar");
    (proc, state)
}

/// A secret and the forms it may take in text.
struct Secret {
    what: String,
    forms: Vec<String>,
}

fn key_secret(what: &str, key: &str) -> Secret {
    let mut forms = vec![key.to_string()];
    // `<kind>-<prefix>-<secret>`: the prefix is public, the secret is not.
    if let Some(secret) = key.rsplit('-').next().filter(|s| s.len() >= 32) {
        forms.push(secret.to_string());
        forms.push(secret.to_uppercase());
    }
    Secret {
        what: what.to_string(),
        forms,
    }
}

fn private_key_secret(what: &str, bytes: &[u8; 32]) -> Secret {
    let hex = hex(bytes);
    let b64 = base64(bytes);
    let b64_url = b64.replace('+', "-").replace('/', "_");
    Secret {
        what: what.to_string(),
        forms: vec![
            format!("privkey:{hex}"),
            hex.clone(),
            hex.to_uppercase(),
            // Padded and unpadded forms both contain the unpadded text.
            b64.trim_end_matches('=').to_string(),
            b64_url.trim_end_matches('=').to_string(),
            format!("{bytes:?}"),
            format!("{bytes:x?}"),
        ],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648), written out to keep the
/// harness's dependencies as they are.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every `privkey:<64 hex>` file under `dir` (key files are that text).
fn private_keys_under(dir: &Path, label: &str, out: &mut Vec<Secret>) -> usize {
    let mut found = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let Some(h) = text.trim().strip_prefix("privkey:") else {
                continue;
            };
            if let Some(bytes) = unhex32(h) {
                out.push(private_key_secret(
                    &format!("{label} private key {}", p.display()),
                    &bytes,
                ));
                found += 1;
            }
        }
    }
    found
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut f, &mut b).expect("random bytes");
    hex(&b)
}

#[test]
fn no_secret_in_logs_errors_or_listings() {
    let Some(tools) = tools() else { return };
    let lab = Lab::new("secrets").expect("lab");
    let lan = lab.switch("lan").expect("LAN switch");
    let srv = lab
        .host("srv", &lan, &format!("{SERVER_IP}/24"))
        .expect("server namespace");
    let hosts: Vec<Ns> = (0..4)
        .map(|i| {
            lab.host(
                &format!("n{}", i + 1),
                &lan,
                &format!("10.1.0.{}/24", 11 + i),
            )
            .expect("node namespace")
        })
        .collect();
    let mut s = Server::start(&lab, &tools, &srv, SERVER_IP, "").expect("start meshscale");
    // The harness's config logs at debug with no remote admin API; this
    // test wants every level and the remote API too: restart with both.
    s.stop().expect("stop for reconfiguration");
    let config = std::fs::read_to_string(s.config_path()).expect("read config");
    assert!(config.contains("level: debug") && config.contains("grpc_listen_addr: \"\""));
    let config = config.replace("level: debug", "level: trace").replace(
        "grpc_listen_addr: \"\"",
        &format!("grpc_listen_addr: {GRPC_ADDR}"),
    );
    std::fs::write(s.config_path(), config).expect("write config");
    s.spawn().expect("restart meshscale at trace");

    let mut said = Transcript::default();
    let mut secrets = Vec::new();
    let out = cli(&s, &["users", "create", "vpn1"]);
    assert!(out.success(), "{}", out.combined());
    said.add("users create", &out);

    // Pre-auth keys: one for the nodes that join, one single-use (used by
    // a sidecar, then presented again), one expired before any use.
    let reusable = create_json(
        &s,
        &["preauthkeys", "create", "--user", "vpn1", "--reusable"],
    );
    let single = create_json(&s, &["preauthkeys", "create", "--user", "vpn1"]);
    let expired = create_json(
        &s,
        &["preauthkeys", "create", "--user", "vpn1", "--reusable"],
    );
    let key_of = |v: &serde_json::Value| v["key"].as_str().expect("key").to_string();
    let (reusable_key, single_key, expired_key) =
        (key_of(&reusable), key_of(&single), key_of(&expired));
    let out = cli(
        &s,
        &[
            "preauthkeys",
            "expire",
            "--id",
            &expired["id"].as_u64().expect("id").to_string(),
        ],
    );
    assert!(out.success(), "{}", out.combined());
    said.add("preauthkeys expire", &out);
    // A key with a real prefix and a wrong secret, and one made up whole.
    let prefix_of = |k: &str| k.rsplit_once('-').expect("key prefix").0.to_string();
    let wrong_key = format!("{}-{}", prefix_of(&reusable_key), random_hex(32));
    let made_up_key = format!("mskey-auth-{}-{}", random_hex(6), random_hex(32));
    for (what, k) in [
        ("reusable pre-auth key", &reusable_key),
        ("single-use pre-auth key", &single_key),
        ("expired pre-auth key", &expired_key),
        ("wrong pre-auth key", &wrong_key),
        ("made-up pre-auth key", &made_up_key),
    ] {
        secrets.push(key_secret(what, k));
    }

    // API keys: one live, one expired; plus wrong and made-up ones.
    let api_out = cli(&s, &["apikeys", "create", "-e", "1d"]);
    assert!(api_out.success(), "{}", api_out.combined());
    let api_key = api_out.stdout.trim().to_string();
    assert!(api_key.starts_with("mskey-api-"), "{api_key}");
    let api_old_out = cli(&s, &["apikeys", "create", "-e", "1d"]);
    assert!(api_old_out.success(), "{}", api_old_out.combined());
    let api_old = api_old_out.stdout.trim().to_string();
    let api_old_prefix = prefix_of(&api_old)
        .strip_prefix("mskey-api-")
        .expect("API key prefix")
        .to_string();
    let out = cli(&s, &["apikeys", "expire", "--prefix", &api_old_prefix]);
    assert!(out.success(), "{}", out.combined());
    said.add("apikeys expire", &out);
    let api_wrong = format!("{}-{}", prefix_of(&api_key), random_hex(32));
    let api_made_up = format!("mskey-api-{}-{}", random_hex(6), random_hex(32));
    for (what, k) in [
        ("API key", &api_key),
        ("expired API key", &api_old),
        ("wrong API key", &api_wrong),
        ("made-up API key", &api_made_up),
    ] {
        secrets.push(key_secret(what, k));
    }

    // Nodes that join: an official client and a sidecar (the single-use key).
    let ts1 = TsNode::start(&lab, &tools, &hosts[0], "nodo1", &s).expect("tailscaled 1");
    ts1.join(&s, &reusable_key).expect("nodo1 joins");
    let (mut side1, side1_state) = start_sidecar(&lab, &tools, &hosts[1], &s, &single_key, "side1");
    eventually("both nodes online", CONVERGE, || {
        let nodes = s.nodes()?;
        anyhow::ensure!(
            nodes.len() == 2 && nodes.iter().all(|n| n.online),
            "{nodes:?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", side1.log_text()));

    // Refusals: a used key, an expired key, a wrong secret, a made-up key.
    let ts3 = TsNode::start(&lab, &tools, &hosts[2], "nodo3", &s).expect("tailscaled 3");
    for (k, reason) in [
        (&single_key, "already used"),
        (&expired_key, "expired"),
        (&wrong_key, ""),
        (&made_up_key, ""),
    ] {
        let out = ts3.up_with_key(&s, k).expect("tailscale up");
        assert!(
            !out.success(),
            "a bad key admitted a node: {}",
            out.combined()
        );
        assert!(out.combined().contains(reason), "{}", out.combined());
        said.add("tailscale up (refused)", &out);
    }
    // A sidecar refused with an expired key logs why; then it is stopped.
    let (mut side2, side2_state) =
        start_sidecar(&lab, &tools, &hosts[3], &s, &expired_key, "side2");
    eventually("side2 to log its refusal", CONVERGE, || {
        let log = side2.log_text();
        anyhow::ensure!(log.contains("expired"), "{log}");
        Ok(())
    })
    .expect("the refused sidecar says why");
    side2.stop(Duration::from_secs(10)).expect("side2 stops");

    // The remote admin API: a live key works, the others are refused.
    let ca = s.ca().to_path_buf();
    let ok = remote_cli(
        &tools,
        &srv,
        &ca,
        &api_key,
        &["users", "list", "-o", "json"],
    );
    assert!(ok.success(), "{}", ok.combined());
    said.add("remote users list", &ok);
    for bad in [&api_old, &api_wrong, &api_made_up] {
        let out = remote_cli(&tools, &srv, &ca, bad, &["users", "list", "-o", "json"]);
        assert!(
            !out.success(),
            "a bad API key was accepted: {}",
            out.combined()
        );
        said.add("remote users list (refused)", &out);
    }
    // Local mistakes that produce error messages.
    for args in [
        &["preauthkeys", "expire", "--id", "999999"][..],
        &["apikeys", "expire", "--prefix", "000000000000"][..],
        &["preauthkeys", "create", "--user", "nobody"][..],
    ] {
        let out = cli(&s, args);
        assert!(!out.success(), "{args:?}: {}", out.combined());
        said.add(&format!("meshscale {}", args.join(" ")), &out);
    }
    // Listings after creation.
    for args in [
        &["preauthkeys", "list", "--user", "vpn1", "-o", "json"][..],
        &["apikeys", "list", "-o", "json"][..],
        &["nodes", "list", "-o", "json"][..],
        &["users", "list", "-o", "json"][..],
        &["preauthkeys", "list", "--user", "vpn1"][..],
        &["apikeys", "list"][..],
    ] {
        let out = cli(&s, args);
        assert!(out.success(), "{args:?}: {}", out.combined());
        assert!(!out.stdout.trim().is_empty(), "{args:?} printed nothing");
        said.add(&format!("meshscale {}", args.join(" ")), &out);
    }

    // Private keys from their files.
    let data_dir = s.config_path().parent().expect("server dir").to_path_buf();
    let server_keys = private_keys_under(&data_dir, "server", &mut secrets);
    assert!(
        server_keys >= 2,
        "expected the Noise and DERP key files under {}",
        data_dir.display()
    );
    let side1_keys = private_keys_under(&side1_state, "side1", &mut secrets);
    assert!(side1_keys >= 2, "side1's machine and node keys");
    private_keys_under(&side2_state, "side2", &mut secrets);

    // Stop everything so shutdown logging is included, then read the logs.
    side1.stop(Duration::from_secs(10)).expect("side1 stops");
    drop(ts1);
    drop(ts3);
    s.stop().expect("server stops");
    let server_log = s.log_text();
    assert!(
        server_log.lines().count() > 100 && server_log.contains("TRACE"),
        "the server should have logged at trace level"
    );
    assert!(
        server_log.contains("already used") || server_log.contains("expired"),
        "the server's log should hold the refusals"
    );
    said.texts.push(("server log".into(), server_log));
    for (name, p) in [
        ("side1 log", side1.log_text()),
        ("side2 log", side2.log_text()),
    ] {
        assert!(!p.is_empty(), "{name} is empty");
        said.texts.push((name.into(), p));
    }

    let mut leaks = Vec::new();
    let mut lines = 0usize;
    for (source, text) in &said.texts {
        for (i, line) in text.lines().enumerate() {
            lines += 1;
            for secret in &secrets {
                for form in &secret.forms {
                    if line.contains(form.as_str()) {
                        leaks.push(format!(
                            "{source} line {}: {} ({} chars of it)",
                            i + 1,
                            secret.what,
                            form.len()
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "secrets: searched {lines} lines from {} sources for {} secrets ({} forms)",
        said.texts.len(),
        secrets.len(),
        secrets.iter().map(|s| s.forms.len()).sum::<usize>()
    );
    assert!(
        leaks.is_empty(),
        "secrets found in output:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn secret_forms_are_the_real_encodings() {
    // RFC 4648 test vectors.
    for (plain, want) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain), want);
    }
    let key: [u8; 32] = std::array::from_fn(|i| (i * 8 + 0xfb) as u8);
    let s = private_key_secret("k", &key);
    assert_eq!(unhex32(&s.forms[1]), Some(key));
    assert!(s.forms[0].starts_with("privkey:") && s.forms[0].ends_with(&s.forms[1]));
    assert!(s.forms.iter().any(|f| f.contains('-') || f.contains('_')));
    let api = key_secret(
        "api",
        &format!("mskey-api-0123456789ab-{}", "cd".repeat(32)),
    );
    assert_eq!(api.forms[1], "cd".repeat(32));
}
