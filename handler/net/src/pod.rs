//! Cluster mode: the VM joins the network namespace of its launcher pod, which the kubelet
//! and the cluster's CNI have already made and addressed. The node agent names that
//! namespace (`ip netns attach` to a process of the pod), then applies the same binding and
//! DHCP server as standalone mode; no CNI call is made, and the namespace is the pod's to
//! remove.
//!
//! The state file lives in the node agent's state directory like a standalone VM's, keyed
//! by the instance UID ([`pod_netns_name`]) so that a restarted VM's new pod never meets
//! the old one's state.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;

use crate::binding;
use crate::netns;
use crate::state::{self, VmState, STATE_VERSION};
use crate::{
    bind_and_serve, drop_name_and_state, ensure_dhcp_running, netns_name, NetError, NodeNeighbours,
    VmNetwork, VmNetworkRequest,
};

/// The file in a launcher pod's run directory that carries the agent's wiring (a
/// [`VmNetwork`] as JSON) to the pod's `virt-launcher`.
pub const POD_NETWORK_FILE: &str = "network.json";

/// The name under which the launcher pod of instance `vm_uid` has its namespace attached.
pub fn pod_netns_name(vm_uid: &str) -> String {
    netns_name(&format!("pod:{vm_uid}"))
}

/// What wiring a pod needs besides the VM's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespace<'a> {
    /// Any process in the pod's network namespace (the node agent sees host pids).
    pub pid: u32,
    /// The inode of that namespace (`/proc/<pid>/ns/net`), checked once the name is
    /// attached: the pid may have been reused in between.
    pub netns_inode: u64,
    /// The pod IP the API server reports: the namespace's `eth0` must have it before
    /// anything is set up there.
    pub pod_ip: Ipv4Addr,
    /// Name servers the guest is offered (the pod's own, from its resolv.conf).
    pub dns_servers: Vec<Ipv4Addr>,
    /// The node's network namespace, where the neighbour entry of a bridge-bound pod IP is
    /// forgotten (e.g. `/proc/1/ns/net` with the host's pid namespace).
    pub node_netns: &'a Path,
}

/// Wires the VM into its launcher pod's namespace: tap, binding and DHCP server.
///
/// Idempotent: a completed wiring is returned as is (its DHCP server restarted if it died);
/// one left half-way (the agent stopped during it) is undone in the pod and done again.
pub fn wire_pod(
    state_dir: &Path,
    req: &VmNetworkRequest,
    pod: &PodNamespace<'_>,
) -> Result<VmNetwork, NetError> {
    let ns = pod_netns_name(&req.vm_uid);
    let span = tracing::info_span!(
        "pod_network_wire",
        vm = %req.vm_key,
        uid = %req.vm_uid,
        netns = %ns,
        pid = pod.pid,
        binding = %req.binding,
    );
    let _guard = span.enter();
    req.validate()?;
    let dir = state::vm_dir(state_dir, &ns);
    let state_err = |source| NetError::State {
        vm_key: req.vm_key.clone(),
        source,
    };
    let netns_err = |source| NetError::Netns {
        vm_key: req.vm_key.clone(),
        source,
    };

    if let Some(existing) = state::read(&dir).map_err(state_err)? {
        match existing.network {
            Some(network) if netns::exists(&ns) => {
                ensure_dhcp_running(&network, &dir)?;
                tracing::debug!(pod_ip = %network.pod_ip, "pod network already wired");
                return Ok(network);
            }
            _ => {
                tracing::info!("undoing a wiring that did not complete");
                unwire_state(&existing, &dir)?;
            }
        }
    }
    // A name left attached by an earlier agent (its state gone) may point elsewhere.
    netns::delete(&ns).map_err(netns_err)?;
    netns::attach_checked(&ns, pod.pid, pod.netns_inode).map_err(netns_err)?;

    let binding_err = |source| NetError::Binding {
        vm_key: req.vm_key.clone(),
        binding: req.binding,
        source,
    };
    let result = binding::pod_attachment(&ns)
        .map_err(binding_err)
        .and_then(|attachment| {
            if attachment.address != pod.pod_ip {
                return Err(NetError::NotThePod {
                    vm_key: req.vm_key.clone(),
                    pid: pod.pid,
                    found: attachment.address.to_string(),
                    expected: pod.pod_ip,
                });
            }
            let mut st = VmState {
                version: STATE_VERSION,
                vm_key: req.vm_key.clone(),
                vm_uid: req.vm_uid.clone(),
                interface: req.interface.clone(),
                netns_name: ns.clone(),
                binding: req.binding,
                mac: req.mac,
                cni_bin_dir: Default::default(),
                cni_config: Value::Null,
                attachment: Some(attachment),
                host_interface: None,
                network: None,
            };
            state::write(&dir, &st).map_err(state_err)?;
            bind_and_serve(
                req,
                &mut st,
                &dir,
                netns::path(&ns),
                attachment,
                pod.dns_servers.clone(),
                &NodeNeighbours::Namespace(pod.node_netns),
            )
        });
    match result {
        Ok(network) => {
            tracing::info!(
                pod_ip = %network.pod_ip,
                guest_ip = %network.guest_ip,
                "VM wired into its launcher pod"
            );
            Ok(network)
        }
        Err(cause) => {
            tracing::warn!(error = %cause, "wiring the launcher pod failed; undoing it");
            let undone = match state::read(&dir) {
                Ok(Some(st)) => unwire_state(&st, &dir),
                Ok(None) => netns::delete(&ns).map_err(netns_err),
                Err(source) => Err(state_err(source)),
            };
            match undone {
                Ok(()) => Err(cause),
                Err(rollback) => Err(NetError::RollbackFailed {
                    vm_key: req.vm_key.clone(),
                    cause: Box::new(cause),
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
}

/// Takes up a wiring that was done before this agent started (its record is the pod's
/// copy of `network`): names the pod's namespace again, records the state and restarts the
/// DHCP server if it is not running. The guest keeps its network throughout.
pub fn resume_pod(
    state_dir: &Path,
    network: &VmNetwork,
    pid: u32,
    netns_inode: u64,
) -> Result<(), NetError> {
    let ns = pod_netns_name(&network.vm_uid);
    let span = tracing::debug_span!("pod_network_resume", uid = %network.vm_uid, netns = %ns);
    let _guard = span.enter();
    let vm_key = || network.vm_key.clone();
    let dir = state::vm_dir(state_dir, &ns);
    if !netns::exists(&ns) {
        netns::attach_checked(&ns, pid, netns_inode).map_err(|source| NetError::Netns {
            vm_key: vm_key(),
            source,
        })?;
    }
    let recorded = state::read(&dir).map_err(|source| NetError::State {
        vm_key: vm_key(),
        source,
    })?;
    if recorded.is_none_or(|st| st.network.is_none()) {
        let mut network = network.clone();
        network.netns_name = ns.clone();
        network.netns_path = netns::path(&ns);
        let st = VmState {
            version: STATE_VERSION,
            vm_key: network.vm_key.clone(),
            vm_uid: network.vm_uid.clone(),
            interface: network.interface.clone(),
            netns_name: ns.clone(),
            binding: network.binding,
            mac: network.mac,
            cni_bin_dir: Default::default(),
            cni_config: Value::Null,
            attachment: Some(crate::cni::Attachment {
                address: network.pod_ip,
                prefix_len: network.pod_prefix_len,
                gateway: network.pod_gateway,
            }),
            host_interface: None,
            network: Some(network),
        };
        state::write(&dir, &st).map_err(|source| NetError::State {
            vm_key: vm_key(),
            source,
        })?;
        tracing::info!("took up the wiring of a launcher pod");
    }
    let mut network = network.clone();
    network.netns_name = ns;
    ensure_dhcp_running(&network, &dir)
}

/// Lets go of a launcher pod's namespace: stops the DHCP server, puts the pod back as CNI
/// made it if the pod is still there, and drops the name and the state. The pod's own
/// interfaces are the kubelet's to remove. Safe to call twice and for unknown instances.
pub fn unwire_pod(state_dir: &Path, vm_uid: &str) -> Result<(), NetError> {
    let ns = pod_netns_name(vm_uid);
    let span = tracing::info_span!("pod_network_unwire", uid = %vm_uid, netns = %ns);
    let _guard = span.enter();
    let dir = state::vm_dir(state_dir, &ns);
    let state_err = |source| NetError::State {
        vm_key: vm_uid.to_string(),
        source,
    };
    match state::read(&dir).map_err(state_err)? {
        Some(st) => unwire_state(&st, &dir),
        None => {
            netns::delete(&ns).map_err(|source| NetError::Netns {
                vm_key: vm_uid.to_string(),
                source,
            })?;
            state::remove(&dir).map_err(state_err)
        }
    }
}

/// The instance UIDs with pod wiring state, for finding wirings whose pod is gone.
pub fn wired_pods(state_dir: &Path) -> Result<Vec<String>, NetError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetError::List {
                path: state_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut uids = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        match state::read(&entry.path()) {
            Ok(Some(st)) if st.netns_name == pod_netns_name(&st.vm_uid) => uids.push(st.vm_uid),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "skipping unreadable pod network state"),
        }
    }
    uids.sort();
    Ok(uids)
}

fn unwire_state(st: &VmState, dir: &Path) -> Result<(), NetError> {
    let vm_key = &st.vm_key;
    let mut errors = Vec::new();
    if let Err(source) = crate::dhcp::stop(dir) {
        errors.push(NetError::Dhcp {
            vm_key: vm_key.clone(),
            source,
        });
    }
    if let (Some(attachment), true) = (&st.attachment, netns::exists(&st.netns_name)) {
        binding::reset(&st.netns_name, attachment);
    }
    drop_name_and_state(st, dir, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_namespaces_are_per_instance_and_apart_from_standalone_ones() {
        let a = pod_netns_name("0b6f-uid-a");
        assert_eq!(a, pod_netns_name("0b6f-uid-a"));
        assert_ne!(a, pod_netns_name("0b6f-uid-b"));
        assert_ne!(a, netns_name("0b6f-uid-a"));
        assert!(a.starts_with("iv-"));
    }

    #[test]
    fn unwiring_unknown_instances_is_harmless() {
        let root = tempfile::tempdir().unwrap();
        unwire_pod(root.path(), "no-such-uid").unwrap();
        unwire_pod(root.path(), "no-such-uid").unwrap();
        assert!(wired_pods(root.path()).unwrap().is_empty());
        assert!(wired_pods(&root.path().join("absent")).unwrap().is_empty());
    }
}
