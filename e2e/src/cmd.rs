//! Short-lived commands (`ip`, `nft`, the CLIs): run with a deadline so a hung
//! command fails the test instead of hanging CI, and keep the output for the
//! error message.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long an ordinary helper command may take.
pub const SHORT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Both streams, for messages and for searching either.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A command line as text, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion (or kills it at `timeout`) and returns its output,
/// whatever the exit status.
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write the input of `{line}`"))?;
        // Dropping stdin closes it, so the command sees the end of its input.
    }
    // Drain both pipes on their own threads: a full pipe would block the child.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out),
        stderr: join(err),
    })
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` and returns its stdout; a failure names the command, the status
/// and what it printed.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(cmd);
    let out = run(cmd, timeout)?;
    if !out.success() {
        bail!(
            "`{line}` failed ({}):\n{}",
            out.status,
            out.combined().trim_end()
        );
    }
    Ok(out.stdout)
}

/// `ip netns exec <ns> <program> <args>`.
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}
