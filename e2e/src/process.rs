//! Long-running processes (servers, daemons) whose output goes to a log file
//! in the test's directory, and which are stopped when their guard drops —
//! also when the test panics.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::describe;

/// How long a process gets between SIGTERM and SIGKILL when its guard drops.
const DROP_GRACE: Duration = Duration::from_secs(3);

pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`. A header line
    /// records the command, so a log that spans restarts stays readable.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let line = describe(&cmd);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(file, "===== e2e: starting {name}: {line}")
            .with_context(|| format!("cannot write {}", log.display()))?;
        let err: File = file
            .try_clone()
            .context("cannot duplicate the log handle")?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        // If the test process itself dies (killed by a CI timeout), its
        // children get SIGKILL instead of running on in their namespaces.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{line}`"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process printed so far (empty if the log cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("waitpid {}", self.name)),
            None => bail!("{} was already reaped", self.name),
        }
    }

    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own unreaped child, so it cannot have been recycled.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot signal {}", self.name));
        }
        Ok(())
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if self.child.is_none() {
            bail!("{} already stopped", self.name);
        }
        if self.exited()?.is_none() {
            self.signal(libc::SIGTERM)?;
        }
        match self.wait_exit(grace) {
            Ok(status) => Ok(status),
            Err(_) => self.kill(),
        }
    }

    /// SIGKILL: a crash, as far as the process's peers can tell.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} already stopped", self.name))?;
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("waitpid {}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(DROP_GRACE);
        }
    }
}
