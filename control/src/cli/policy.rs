//! `meshscale policy`: get, set and check the access policy on a server
//! (Headscale's `headscale policy` commands), and `compile`, which runs the
//! server's compiler on a topology file without any server.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use meshscale_api::v1;
use meshscale_policy::{MAX_POLICY_BYTES, Policy, Topology, compile_report};
use serde::Serialize;

use super::Context;
use super::client::{Client, call};
use super::output::OutputFormat;
use super::times::table_time;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy in force
    Get,
    /// Replace the policy (policy.mode: database); a refused policy changes nothing
    Set(FileArgs),
    /// Check a policy (syntax, references, its tests against the live tailnet) without setting it
    Check(FileArgs),
    /// Compile a policy for a topology file and print what every node would receive (no server needed)
    Compile(CompileArgs),
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// The policy file (HuJSON or JSON)
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The policy file (HuJSON or JSON)
    #[arg(short, long, value_name = "FILE")]
    policy: PathBuf,
    /// The tailnet: users and nodes (the conformance topology format)
    #[arg(short, long, value_name = "FILE")]
    topology: PathBuf,
}

#[derive(Serialize)]
struct PolicyView {
    policy: String,
    updated_at: Option<String>,
}

fn read_bounded(path: &Path, max: usize) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::new();
    file.take(max as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        text.len() <= max,
        "{} is larger than {max} bytes",
        path.display()
    );
    Ok(text)
}

/// Prints `text` as is: a policy keeps its lines and comments.
fn write_raw(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let end = if text.ends_with('\n') { "" } else { "\n" };
    match write!(out, "{text}{end}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn view(policy: String, updated_at: Option<&prost_types::Timestamp>) -> PolicyView {
    PolicyView {
        policy,
        updated_at: updated_at.map(|t| table_time(Some(t))),
    }
}

pub async fn run(client: &mut Client, ctx: &Context, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Get => {
            let r = call(client.get_policy(v1::GetPolicyRequest {})).await?;
            match ctx.print.format {
                OutputFormat::Human => write_raw(&r.policy),
                _ => ctx.print.object(&view(r.policy, r.updated_at.as_ref()), ""),
            }
        }
        PolicyCommand::Set(args) => {
            let policy = read_bounded(&args.file, MAX_POLICY_BYTES)?;
            let r = call(client.set_policy(v1::SetPolicyRequest { policy })).await?;
            ctx.print
                .object(&view(r.policy, r.updated_at.as_ref()), "Policy updated.")
        }
        PolicyCommand::Check(args) => {
            let policy = read_bounded(&args.file, MAX_POLICY_BYTES)?;
            call(client.check_policy(v1::CheckPolicyRequest { policy })).await?;
            ctx.print.result("Policy is valid")
        }
        PolicyCommand::Compile(args) => compile(ctx, &args),
    }
}

/// `policy compile`: pure, the same compiler the server runs.
pub fn compile(ctx: &Context, args: &CompileArgs) -> anyhow::Result<()> {
    let text = read_bounded(&args.policy, MAX_POLICY_BYTES)?;
    let topology = read_bounded(&args.topology, 4 * MAX_POLICY_BYTES)?;
    let policy = Policy::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topo = Topology::parse(&topology)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.topology.display()))?;
    policy
        .check(&topo.tailnet)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = compile_report(&policy, &topo);
    match ctx.print.format {
        OutputFormat::Human => {
            write_raw(&serde_json::to_string_pretty(&report).context("encoding JSON")?)
        }
        _ => ctx.print.object(&report, ""),
    }
}
