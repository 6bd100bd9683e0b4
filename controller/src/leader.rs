//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one reconciles.
//!
//! Every `retry_period` each replica reads the lease. The holder renews it; another
//! replica takes it over only once `renewTime + leaseDurationSeconds` has passed. Every
//! write is a `replace` carrying the `resourceVersion` that was read, so two replicas
//! racing for an expired lease cannot both win: the API server refuses the second with a
//! conflict. A leader that cannot renew within `renew_deadline` steps down; the binary
//! then exits so that it restarts as a follower. On shutdown the leader releases the
//! lease (expires it at once) so a follower takes over without waiting.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The client error.
        source: kube::Error,
    },
    /// Another replica took the lease while this one led.
    #[error("lease {namespace}/{name}: lost leadership to another replica")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
}

/// Timing of the election, as client-go's defaults scaled for one small cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before stepping down.
    pub renew_deadline: Duration,
    /// How often every replica tries to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
}

/// What a lease holder looks like to the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// `holderIdentity` (empty when released).
    pub identity: String,
    /// `renewTime`.
    pub renewed: Option<Timestamp>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
}

/// Whether `me` may write the lease held by `holder` at `now`.
pub fn may_take(holder: &Holder, me: &str, now: Timestamp) -> bool {
    if holder.identity.is_empty() || holder.identity == me {
        return true;
    }
    let Some(renewed) = holder.renewed else {
        return true;
    };
    let valid_for = SignedDuration::try_from(holder.duration).unwrap_or(SignedDuration::ZERO);
    match renewed.checked_add(valid_for) {
        Ok(expiry) => expiry < now,
        Err(_) => false,
    }
}

impl LeaderElector {
    /// An elector for lease `namespace/name` under identity `identity` (the pod name).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.timing.lease_duration.as_secs()).ok(),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: acquire or renew the lease. True when this replica holds it afterwards.
    #[instrument(skip(self), fields(lease = %self.name, identity = %self.identity))]
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = Holder {
            identity: spec.holder_identity.clone().unwrap_or_default(),
            renewed: spec.renew_time.as_ref().map(|t| t.0),
            duration: Duration::from_secs(
                spec.lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(self.timing.lease_duration.as_secs()),
            ),
        };
        if !may_take(&holder, &self.identity, now) {
            return Ok(false);
        }
        let ours = holder.identity == self.identity;
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut renewed = lease.clone();
        renewed.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &renewed)
            .await
        {
            Ok(_) => {
                if !ours {
                    info!(previous = %holder.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Gives the lease up (if held) so a follower takes over at once.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.error(e))?;
        info!("released the leader lease");
        Ok(())
    }

    /// Runs the election forever, publishing leadership on `leading` and API reachability
    /// through `reachable`. Returns when a leader could not renew within the deadline.
    pub async fn run(&self, leading: watch::Sender<bool>, reachable: impl Fn(bool)) -> LeaderError {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(held) => {
                    reachable(true);
                    if held {
                        last_renewal = Some(tokio::time::Instant::now());
                    } else if *leading.borrow() {
                        let _ = leading.send(false);
                        return LeaderError::Lost {
                            namespace: self.namespace.clone(),
                            name: self.name.clone(),
                        };
                    }
                    let _ = leading.send_if_modified(|value| {
                        let changed = *value != held;
                        *value = held;
                        changed
                    });
                }
                Err(error) => {
                    reachable(false);
                    warn!(%error, "lease call failed");
                    let overdue =
                        last_renewal.is_some_and(|at| at.elapsed() > self.timing.renew_deadline);
                    if *leading.borrow() && overdue {
                        let _ = leading.send(false);
                        return error;
                    }
                }
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(identity: &str, renewed_second: Option<i64>) -> Holder {
        Holder {
            identity: identity.into(),
            renewed: renewed_second.map(|s| Timestamp::from_second(s).unwrap()),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_left_alone() {
        let now = Timestamp::from_second(110).unwrap();
        assert!(!may_take(&holder("b", Some(100)), "a", now));
    }

    #[test]
    fn expired_released_or_own_leases_may_be_taken() {
        let now = Timestamp::from_second(116).unwrap();
        assert!(may_take(&holder("b", Some(100)), "a", now));
        assert!(may_take(&holder("", Some(115)), "a", now));
        assert!(may_take(&holder("a", Some(115)), "a", now));
        assert!(may_take(&holder("b", None), "a", now));
    }
}
