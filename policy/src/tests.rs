//! The policy's own `tests` and `sshTests`, and the checks that need a
//! tailnet (`user:*@domain` / `localpart:*@domain` must name the
//! tailnet's domain). A failing test refuses the policy, as in Tailscale.

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshscale_wire::tailcfg::{FilterRule, SshPolicy};

use crate::alias::{Alias, Proto, parse_ports, split_dst_ports};
use crate::compile::allows;
use crate::resolve::{Checked, Ctx, node_ips};
use crate::{Compiled, PolicyError, Tailnet};

fn failed(at: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::TestFailed {
        at: at.into(),
        reason: reason.into(),
    }
}

/// The tailnet's own email domain: the one most users have (ties: the
/// domain of the lowest user id). `None` when no user has an email.
pub(crate) fn tailnet_domain(tailnet: &Tailnet) -> Option<String> {
    let mut users: Vec<_> = tailnet.users.iter().collect();
    users.sort_by_key(|u| u.id);
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (rank, u) in users.iter().enumerate() {
        if let Some((_, d)) = u.email.as_deref().and_then(|e| e.rsplit_once('@')) {
            let entry = counts.entry(d).or_insert((0, rank));
            entry.0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(d, _)| d.to_string())
}

pub(crate) fn run(checked: &Checked, tailnet: &Tailnet) -> Result<(), PolicyError> {
    if !checked.domains.is_empty() {
        let own = tailnet_domain(tailnet);
        for (at, domain) in &checked.domains {
            if own.as_deref().is_some_and(|own| own != domain) {
                return Err(PolicyError::invalid(
                    at,
                    format!(
                        "{domain} is not associated with this Tailnet and cannot be used in user:*@<domain> expressions"
                    ),
                ));
            }
        }
    }
    if checked.tests.is_empty() && checked.ssh_tests.is_empty() {
        return Ok(());
    }
    let compiled = crate::compile::compile(checked, tailnet);
    let unreduced = crate::compile::unreduced(checked, tailnet);
    let ctx = Ctx::new(checked, tailnet);
    let owner: BTreeMap<IpAddr, u64> = tailnet
        .nodes
        .iter()
        .flat_map(|n| node_ips(n).into_iter().map(move |ip| (ip, n.id)))
        .collect();
    for (i, t) in checked.tests.iter().enumerate() {
        let at = format!("tests[{i}]");
        let srcs = source_ips(&ctx, &at, &t.src)?;
        let proto = match &t.proto {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Proto::parse(s).map_err(|e| failed(&at, e))?.0,
            Some(other) => {
                Proto::parse(&other.to_string())
                    .map_err(|e| failed(&at, e))?
                    .0
            }
        };
        for (want, list) in [(true, &t.accept), (false, &t.deny)] {
            for dst in list {
                let (alias, ports) = split_dst_ports(dst).map_err(|e| failed(&at, e))?;
                let alias = Alias::parse(&alias).map_err(|e| failed(&at, e))?;
                let ports = parse_ports(&ports).map_err(|e| failed(&at, e))?;
                let dst_ips = alias_ips(&ctx, &alias);
                if dst_ips.is_empty() {
                    return Err(failed(
                        &at,
                        format!("destination {dst:?} matches no address"),
                    ));
                }
                for src in &srcs {
                    for d in &dst_ips {
                        let filter = filter_at(&compiled, &unreduced, &owner, *d);
                        for p in &ports {
                            let got = allows(&filter, *src, *d, p.first, proto);
                            if got != want {
                                let verb = if want { "accept" } else { "deny" };
                                return Err(failed(
                                    &at,
                                    format!("expected {} to {verb} {dst} from {src}", t.src),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    for (i, t) in checked.ssh_tests.iter().enumerate() {
        let at = format!("sshTests[{i}]");
        let srcs = source_ips(&ctx, &at, &t.src)?;
        for dst in &t.dst {
            // Tailscale accepts a bare IPv6 address here but never matches
            // it, so such a test cannot pass there either.
            if matches!(dst.trim().parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
                return Err(failed(
                    &at,
                    format!(
                        "destination {dst:?}: bare IPv6 addresses are not supported in sshTests"
                    ),
                ));
            }
            let alias = Alias::parse(dst).map_err(|e| failed(&at, e))?;
            let dst_ips = alias_ips(&ctx, &alias);
            for d in dst_ips {
                let Some(id) = owner.get(&d) else { continue };
                let policy = compiled.nodes.get(id).and_then(|v| v.ssh_policy.clone());
                for src in &srcs {
                    for (want, users) in [
                        (SshOutcome::Accept, &t.accept),
                        (SshOutcome::Check, &t.check),
                        (SshOutcome::Deny, &t.deny),
                    ] {
                        for user in users {
                            let got = ssh_outcome(policy.as_ref(), *src, user);
                            // `accept` holds through a check rule too.
                            let holds = got == want
                                || (want == SshOutcome::Accept && got == SshOutcome::Check);
                            if !holds {
                                return Err(failed(
                                    &at,
                                    format!(
                                        "expected {} as {user:?} to {d}: {want:?}, policy gives {got:?}",
                                        t.src
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn source_ips(ctx: &Ctx<'_>, at: &str, src: &str) -> Result<Vec<IpAddr>, PolicyError> {
    let alias = Alias::parse(src).map_err(|e| failed(at, e))?;
    let ips = alias_ips(ctx, &alias);
    if ips.is_empty() {
        return Err(failed(at, format!("source {src:?} matches no node")));
    }
    Ok(ips)
}

/// Node addresses an alias covers; a literal address stands for itself.
fn alias_ips(ctx: &Ctx<'_>, alias: &Alias) -> Vec<IpAddr> {
    let set = ctx.resolve(alias);
    let mut out: Vec<IpAddr> = ctx
        .tailnet
        .nodes
        .iter()
        .flat_map(node_ips)
        .filter(|ip| set.contains(*ip))
        .collect();
    // A literal address (or a host alias naming one) outside the tailnet
    // stands for itself, e.g. a server behind a subnet router.
    if out.is_empty()
        && matches!(alias, Alias::Addr { .. } | Alias::Host(_))
        && let Some(p) = set.prefixes().first()
    {
        out.push(p.addr());
    }
    out
}

/// The filter that guards `ip`: its node's, or the whole policy's when the
/// address is not a node (a host behind a subnet router).
fn filter_at(
    compiled: &Compiled,
    unreduced: &[FilterRule],
    owner: &BTreeMap<IpAddr, u64>,
    ip: IpAddr,
) -> Vec<FilterRule> {
    match owner.get(&ip).and_then(|id| compiled.nodes.get(id)) {
        Some(view) => view.packet_filter.clone(),
        None => unreduced.to_vec(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SshOutcome {
    Accept,
    Check,
    Deny,
}

/// The first rule matching the source and a mapping for `user` decides.
fn ssh_outcome(policy: Option<&SshPolicy>, src: IpAddr, user: &str) -> SshOutcome {
    let Some(policy) = policy else {
        return SshOutcome::Deny;
    };
    let src = src.to_string();
    for rule in &policy.rules {
        if !rule.principals.iter().any(|p| p.any || p.node_ip == src) {
            continue;
        }
        let mapped = rule.ssh_users.get(user).or_else(|| rule.ssh_users.get("*"));
        match mapped {
            None => continue,
            Some(local) if local.is_empty() => return SshOutcome::Deny,
            Some(_) => {}
        }
        return match &rule.action {
            Some(a) if !a.hold_and_delegate.is_empty() => SshOutcome::Check,
            Some(a) if a.accept => SshOutcome::Accept,
            _ => SshOutcome::Deny,
        };
    }
    SshOutcome::Deny
}
