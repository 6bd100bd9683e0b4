//! The VM's network in a launcher pod. The pod is unprivileged, so the node agent wires
//! the VM into the pod's namespace (tap, binding, DHCP server; `ironvisor_net::wire_pod`)
//! and leaves the result in the run directory as [`NETWORK_FILE`]; `virt-launcher` waits
//! for that file before it starts the guest, and gives the launcher the tap it names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvisor_launcher_api::config::NetConfig;
use ironvisor_net::{format_mac, VmNetwork, VmNetworkRequest};
use tracing::info;

pub use ironvisor_net::POD_NETWORK_FILE as NETWORK_FILE;
/// How long `virt-launcher` waits for the node agent by default.
pub const DEFAULT_NETWORK_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(200);

/// Why the pod's network is not there.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// The node agent did not wire the pod in time.
    #[error(
        "VM {vm}: the node agent did not wire interface {interface} into this pod within {}s \
         ({file} is missing); is the ironvisor-handler DaemonSet running on this node?",
        waited.as_secs()
    )]
    Timeout {
        /// The VM.
        vm: String,
        /// The interface.
        interface: String,
        /// The file waited for.
        file: PathBuf,
        /// How long.
        waited: Duration,
    },
    /// The file is not a wiring of this VM's interface.
    #[error("VM {vm}: {file}: {problem}")]
    Bad {
        /// The VM.
        vm: String,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// SIGTERM came while waiting.
    #[error("VM {vm}: stopped while waiting for its network")]
    Stopped {
        /// The VM.
        vm: String,
    },
}

impl PodNetworkError {
    /// The termination message reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "NetworkNotWired",
            Self::Bad { .. } => "NetworkSetupFailed",
            Self::Stopped { .. } => "Stopped",
        }
    }
}

/// Waits until the node agent has wired `request` into this pod (or `stopped()` says to
/// give up); returns the launcher's NIC.
pub fn await_wiring(
    run_dir: &Path,
    request: &VmNetworkRequest,
    wait: Duration,
    stopped: impl Fn() -> bool,
) -> Result<NetConfig, PodNetworkError> {
    let file = run_dir.join(NETWORK_FILE);
    let vm = request.vm_key.clone();
    info!(file = %file.display(), "waiting for the node agent to wire the pod network");
    let deadline = Instant::now() + wait;
    let text = loop {
        match std::fs::read(&file) {
            Ok(text) => break text,
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(PodNetworkError::Bad {
                    vm,
                    file,
                    problem: error.to_string(),
                })
            }
            Err(_) if stopped() => return Err(PodNetworkError::Stopped { vm }),
            Err(_) if Instant::now() >= deadline => {
                return Err(PodNetworkError::Timeout {
                    vm,
                    interface: request.interface.clone(),
                    file,
                    waited: wait,
                })
            }
            Err(_) => std::thread::sleep(POLL),
        }
    };
    let network: VmNetwork = serde_json::from_slice(&text).map_err(|e| PodNetworkError::Bad {
        vm: vm.clone(),
        file: file.clone(),
        problem: format!("not a network wiring: {e}"),
    })?;
    let bad = |problem: String| PodNetworkError::Bad {
        vm: vm.clone(),
        file: file.clone(),
        problem,
    };
    if network.vm_uid != request.vm_uid {
        return Err(bad(format!(
            "wired for instance {}, this pod runs {}",
            network.vm_uid, request.vm_uid
        )));
    }
    if network.interface != request.interface || network.mac != request.mac {
        return Err(bad(format!(
            "wired interface {} with MAC {}, the instance has {} with {}",
            network.interface,
            format_mac(&network.mac),
            request.interface,
            format_mac(&request.mac)
        )));
    }
    info!(
        tap = %network.tap,
        pod_ip = %network.pod_ip,
        guest_ip = %network.guest_ip,
        binding = %network.binding,
        "pod network wired"
    );
    Ok(NetConfig {
        id: network.interface.clone(),
        tap: network.tap.clone(),
        mac: Some(network.mac_string()),
        rate_limit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_net::Binding;
    use std::net::Ipv4Addr;

    fn request() -> VmNetworkRequest {
        VmNetworkRequest {
            vm_key: "ns/vm".into(),
            vm_uid: "uid-1".into(),
            interface: "default".into(),
            binding: Binding::Masquerade,
            mac: [0x52, 0x54, 0, 0, 0, 1],
            ports: Vec::new(),
            tap_owner: None,
        }
    }

    fn wiring(uid: &str) -> VmNetwork {
        VmNetwork {
            vm_key: "ns/vm".into(),
            vm_uid: uid.into(),
            interface: "default".into(),
            binding: Binding::Masquerade,
            netns_name: "iv-x".into(),
            netns_path: "/var/run/netns/iv-x".into(),
            tap: "tap0".into(),
            pod_ip: Ipv4Addr::new(10, 244, 0, 7),
            pod_gateway: Ipv4Addr::new(10, 244, 0, 1),
            pod_prefix_len: 24,
            guest_ip: Ipv4Addr::new(10, 0, 2, 2),
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            prefix_len: 24,
            mac: [0x52, 0x54, 0, 0, 0, 1],
            mtu: 1500,
            dns_servers: vec![],
        }
    }

    #[test]
    fn the_wiring_becomes_the_launchers_nic() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_vec(&wiring("uid-1")).unwrap();
        std::fs::write(dir.path().join(NETWORK_FILE), json).unwrap();
        let nic = await_wiring(dir.path(), &request(), Duration::from_secs(1), || false).unwrap();
        assert_eq!(nic.tap, "tap0");
        assert_eq!(nic.id, "default");
        assert_eq!(nic.mac.as_deref(), Some("52:54:00:00:00:01"));
    }

    #[test]
    fn a_missing_wiring_times_out_naming_the_file_and_a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let err = await_wiring(dir.path(), &request(), Duration::ZERO, || false).unwrap_err();
        assert_eq!(err.reason(), "NetworkNotWired");
        assert!(err.to_string().contains(NETWORK_FILE), "{err}");
        let err =
            await_wiring(dir.path(), &request(), Duration::from_secs(60), || true).unwrap_err();
        assert_eq!(err.reason(), "Stopped");
    }

    #[test]
    fn a_wiring_of_another_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_vec(&wiring("uid-old")).unwrap();
        std::fs::write(dir.path().join(NETWORK_FILE), json).unwrap();
        let err = await_wiring(dir.path(), &request(), Duration::ZERO, || false).unwrap_err();
        assert!(err.to_string().contains("uid-old"), "{err}");
    }
}
