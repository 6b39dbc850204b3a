//! Status conditions: `Ready` (the object is usable) and `Synced` (the last
//! reconcile reached the control server), each with a CamelCase reason.

use chrono::{SecondsFormat, Utc};

use crate::crd::Condition;

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not change
/// so that watchers see real transitions only.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now_rfc3339();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now_rfc3339(),
            observed_generation: generation,
        }),
    }
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub fn reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set(&mut c, READY, true, "Created", "", None);
        c[0].last_transition_time = "2000-01-01T00:00:00Z".into();
        set(&mut c, READY, true, "Exists", "", Some(2));
        assert_eq!(c[0].last_transition_time, "2000-01-01T00:00:00Z");
        assert_eq!(c[0].reason, "Exists");
        set(&mut c, READY, false, "Unreachable", "", Some(2));
        assert_ne!(c[0].last_transition_time, "2000-01-01T00:00:00Z");
        assert!(!is_true(&c, READY));
    }
}
