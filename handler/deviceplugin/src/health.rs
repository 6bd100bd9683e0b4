//! Whether a host device node is usable: it exists and opens read-write. Probed
//! periodically; every plugin's ListAndWatch streams follow the result.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// The kubelet's word for a usable device.
pub const HEALTHY: &str = "Healthy";
/// The kubelet's word for an unusable device.
pub const UNHEALTHY: &str = "Unhealthy";

/// Why a probe could not run at all (not why the device is unhealthy: that is
/// [`Health::Unhealthy`]).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The blocking probe task panicked or was cancelled.
    #[error("health probe of {path} did not finish: {reason}", path = path.display())]
    Task {
        /// The device probed.
        path: PathBuf,
        /// What the runtime reported.
        reason: String,
    },
}

/// The state of a host device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The node exists and opens read-write.
    Healthy,
    /// It does not: the reason is the open error.
    Unhealthy(String),
}

impl Health {
    /// The kubelet's string for this state.
    pub fn as_kubelet_str(&self) -> &'static str {
        match self {
            Health::Healthy => HEALTHY,
            Health::Unhealthy(_) => UNHEALTHY,
        }
    }

    /// Whether devices in this state can be allocated.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Opens `path` read-write and closes it again. For `/dev/kvm` this creates no VM and
/// for `/dev/net/tun` no interface (both need an ioctl first), so it is cheap and has
/// no side effect.
pub fn probe(path: &Path) -> Health {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Health::Healthy,
        Err(e) => Health::Unhealthy(describe(&e)),
    }
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such device node".to_owned(),
        _ => error.to_string(),
    }
}

/// [`probe`] on a blocking thread (an open of a device node may sleep in the driver).
pub async fn probe_async(path: &Path) -> Result<Health, HealthError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || probe(&owned))
        .await
        .map_err(|e| HealthError::Task {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Probes `path` every `interval` and publishes changes on `state`, logging each
/// transition, until every receiver is gone. The first probe is expected to have
/// been published already (see [`initial`]).
pub async fn watch_device(path: PathBuf, interval: Duration, state: watch::Sender<Health>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = state.closed() => return,
        }
        let health = match probe_async(&path).await {
            Ok(health) => health,
            Err(error) => {
                warn!(%error, "health probe failed; keeping the last state");
                continue;
            }
        };
        state.send_if_modified(|current| {
            if *current == health {
                return false;
            }
            match &health {
                Health::Healthy => info!(device = %path.display(), "host device is healthy again"),
                Health::Unhealthy(reason) => {
                    warn!(device = %path.display(), %reason, "host device is unhealthy")
                }
            }
            *current = health;
            true
        });
    }
}

/// The first state of `path`, logged when unhealthy.
pub async fn initial(path: &Path) -> Health {
    let health = probe_async(path)
        .await
        .unwrap_or_else(|e| Health::Unhealthy(e.to_string()));
    if let Health::Unhealthy(reason) = &health {
        warn!(device = %path.display(), %reason, "host device is unhealthy");
    }
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_opens_read_write_is_healthy() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(probe(file.path()), Health::Healthy);
        assert_eq!(Health::Healthy.as_kubelet_str(), "Healthy");
    }

    #[test]
    fn a_missing_node_is_unhealthy_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let health = probe(&dir.path().join("kvm"));
        assert_eq!(health, Health::Unhealthy("no such device node".into()));
        assert_eq!(health.as_kubelet_str(), "Unhealthy");
        assert!(!health.is_healthy());
    }

    #[tokio::test]
    async fn watch_device_publishes_transitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm");
        std::fs::write(&path, b"").unwrap();
        let (tx, mut rx) = watch::channel(initial(&path).await);
        assert!(rx.borrow_and_update().is_healthy());
        let task = tokio::spawn(watch_device(path.clone(), Duration::from_millis(20), tx));
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(!rx.borrow_and_update().is_healthy());
        std::fs::write(&path, b"").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(rx.borrow().is_healthy());
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
