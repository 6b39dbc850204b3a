//! The server's resource use, read from `/proc/<pid>`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: unexpected format")]
    Format(PathBuf),
}

fn read(pid: u32, file: &str) -> Result<(PathBuf, String), ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

/// `(VmRSS, VmHWM)` in KiB: current and peak resident set.
pub fn rss_kib(pid: u32) -> Result<(u64, u64), ProcError> {
    let (path, status) = read(pid, "status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(ProcError::Format(path)),
    }
}

/// User + system CPU seconds the process has used.
pub fn cpu_s(pid: u32) -> Result<f64, ProcError> {
    let (path, stat) = read(pid, "stat")?;
    // The command name may hold spaces; fields are counted after its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| ProcError::Format(path.clone()))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); index 11 and 12 here.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(u), Some(s)) = (ticks(11), ticks(12)) else {
        return Err(ProcError::Format(path));
    };
    let hz = clock_ticks();
    Ok((u + s) as f64 / hz)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Raises the soft open-file limit to the hard one: every simulated node
/// holds a socket.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to / read from a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        let (rss, hwm) = rss_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn cpu_time_grows_while_spinning() {
        let pid = std::process::id();
        let before = cpu_s(pid).unwrap();
        // Burn CPU until the kernel's tick count moves; the deadline only
        // bounds a broken reader, it is not a speed check.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x: u64 = 1;
        loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
            if cpu_s(pid).unwrap() > before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time stayed at {before} s while spinning"
            );
        }
    }
}
