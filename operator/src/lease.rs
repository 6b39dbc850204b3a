//! Leader election with a coordination/v1 Lease: only the holder reconciles,
//! so two replicas never act on the same object at once. Updates carry the
//! resourceVersion, so of two replicas racing for the lease exactly one wins.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Expired, or released: take it over.
    Take,
    /// Someone else holds it.
    Wait,
}

pub fn decide(lease: Option<&Lease>, me: &str, now: DateTime<Utc>) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() {
            Decision::Create
        } else {
            Decision::Take
        };
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
            match renewed {
                Some(t) if now < t + chrono::Duration::seconds(duration) => Decision::Wait,
                _ => Decision::Take,
            }
        }
    }
}

/// k8s-openapi keeps times as jiff timestamps; the rest of the operator uses chrono.
fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            me: me.to_string(),
            duration,
        }
    }

    fn spec(&self, now: DateTime<Utc>, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: acquired.or(Some(micro(now))),
            renew_time: Some(micro(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt; `Ok(true)` when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Utc::now();
        let current = self.api.get_opt(&self.name).await?;
        let result = match decide(current.as_ref(), &self.me, now) {
            Decision::Wait => return Ok(false),
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now, 0, None)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            decision @ (Decision::Renew | Decision::Take) => {
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if decision == Decision::Renew {
                    self.spec(now, transitions, old.acquire_time)
                } else {
                    self.spec(now, transitions.saturating_add(1), None)
                });
                // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if we hold it (holder cleared, 1 s duration), so a
    /// follower takes over at its next check instead of after the lease lapses.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro(Utc::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it since: it is no longer ours to release.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(lease = %self.name, error = %e, "lease check failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts, then returns:
    /// another replica may be leading by then, so the caller must stop.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "lost the lease");
                    return;
                }
                Err(e) => warn!(lease = %self.name, error = %e, "lease renewal failed"),
            }
            if last_ok.elapsed() >= self.duration {
                warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(micro(
                    Utc::now() - chrono::Duration::seconds(renewed_secs_ago),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_a_free_or_expired_lease_is_taken() {
        let now = Utc::now();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), 5)), "a", now),
            Decision::Renew
        );
        assert_eq!(decide(Some(&lease(Some("b"), 5)), "a", now), Decision::Wait);
        assert_eq!(
            decide(Some(&lease(Some("b"), 60)), "a", now),
            Decision::Take
        );
        assert_eq!(decide(Some(&lease(None, 1)), "a", now), Decision::Take);
    }
}
