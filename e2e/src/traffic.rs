//! Data-plane checks between namespaces: ICMP with the system `ping`, and a
//! TCP stream through our own echo tool (`meshscale-e2e-tcp`), which checks
//! every byte that comes back.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cmd::{self, SHORT};
use crate::lab::Lab;
use crate::netns::Ns;
use crate::poll::{Fatal, eventually};
use crate::process::Proc;

/// Port the echo server listens on, inside its namespace.
pub const ECHO_PORT: u16 = 7777;

/// `count` ICMP echo requests from `from` to `addr` (IPv4 or IPv6); all must
/// be answered.
pub fn ping(from: &Ns, addr: &str, count: u32) -> anyhow::Result<String> {
    let mut c = from.command("ping");
    c.args(["-n", "-c", &count.to_string(), "-i", "0.2", "-W", "2"]);
    c.arg(addr);
    let out = cmd::run_ok(&mut c, SHORT)?;
    let all_answered = out.contains(&format!("{count} received"));
    anyhow::ensure!(
        all_answered,
        "ping {addr} from {} lost packets:\n{out}",
        from.name()
    );
    Ok(out)
}

/// Polls until one ping goes through (the first packets may race the path
/// set-up), then sends `count` that must all be answered.
pub fn ping_eventually(
    from: &Ns,
    addr: &str,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<String> {
    eventually(
        &format!("ICMP from {} to {addr}", from.name()),
        timeout,
        || ping(from, addr, 1),
    )?;
    ping(from, addr, count)
}

/// Starts the echo server in `ns` on `[::]:ECHO_PORT` (IPv4 and IPv6) and
/// waits until it listens. Its log is `<lab>/<name>.log`.
pub fn start_echo(lab: &Lab, tool: &Path, ns: &Ns, name: &str) -> anyhow::Result<Proc> {
    let log = lab.dir().join(format!("{name}.log"));
    lab.register_log(&log);
    let mut c = ns.command(tool);
    c.arg("serve").arg(format!("[::]:{ECHO_PORT}"));
    let mut proc = Proc::spawn(name, c, &log)?;
    eventually("the echo server to listen", SHORT, || {
        if let Some(status) = proc.exited()? {
            return Err(Fatal(format!(
                "the echo server exited ({status}): {}",
                proc.log_text()
            ))
            .into());
        }
        anyhow::ensure!(proc.log_text().contains("listening"), "not listening yet");
        Ok(())
    })?;
    Ok(proc)
}

/// Streams `bytes` through the echo server at `addr` (an IP) from `from` and
/// checks that every byte came back unchanged. Returns the tool's summary.
pub fn tcp_echo(tool: &Path, from: &Ns, addr: &str, bytes: u64) -> anyhow::Result<String> {
    let target = if addr.contains(':') {
        format!("[{addr}]:{ECHO_PORT}")
    } else {
        format!("{addr}:{ECHO_PORT}")
    };
    let mut c = from.command(tool);
    c.arg("check").arg(&target).arg(bytes.to_string());
    cmd::run_ok(&mut c, Duration::from_secs(90))
        .with_context(|| format!("TCP echo of {bytes} bytes to {target} from {}", from.name()))
}
