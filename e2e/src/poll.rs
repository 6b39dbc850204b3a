//! Waiting without sleeping blindly: a condition is retried until it holds or
//! its deadline passes, and the timeout error carries the last reason it did
//! not hold.

use std::time::{Duration, Instant};

/// Pause between two attempts.
const INTERVAL: Duration = Duration::from_millis(250);

/// An error that no amount of waiting will fix (the process being waited
/// for has exited): [`eventually`] returns it at once.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Calls `check` until it returns `Ok`, at most until `timeout` has passed,
/// or until it returns a [`Fatal`] error.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                return Err(e.context(format!("gave up waiting for {what}")));
            }
            Err(e) if start.elapsed() >= timeout => {
                return Err(e.context(format!(
                    "timed out after {:.1}s waiting for {what}",
                    start.elapsed().as_secs_f64()
                )));
            }
            Err(_) => std::thread::sleep(INTERVAL),
        }
    }
}
