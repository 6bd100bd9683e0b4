//! The network of the launcher pods on this node: the agent (hostPID, privileged) finds a
//! process of each pod, wires the VM into that pod's network namespace with the same
//! bindings as standalone mode (`ironvisor_net::wire_pod`) and hands the result to the
//! pod's `virt-launcher` as `network.json` in the pod's `sockets` volume. That file is also
//! the record a restarted agent takes the wiring up from (`ironvisor_net::resume_pod`).

use std::io::Write;
use std::path::{Path, PathBuf};

use ironvisor_crds::v1alpha1::VirtualMachineInstanceNetworkInterface;
use ironvisor_net::{PodNamespace, VmNetwork, VmNetworkRequest};

use crate::pod_volumes::{empty_dir, SOCKETS_VOLUME};

use ironvisor_net::POD_NETWORK_FILE as NETWORK_FILE;
/// Where the agent keeps its per-pod wiring state (inside its own container: the named
/// namespaces and DHCP servers it records live and die with the container too).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ironvisor/pod-network";
/// The node's network namespace as the agent sees it with the host's pid namespace.
pub const NODE_NETNS: &str = "/proc/1/ns/net";
/// The guest's interface name as reported in status.
const GUEST_IFNAME: &str = "eth0";

/// Why a pod could not be wired.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// The instance's interfaces cannot be wired.
    #[error(transparent)]
    Request(#[from] ironvisor_net::RequestError),
    /// Wiring failed.
    #[error(transparent)]
    Net(#[from] ironvisor_net::NetError),
    /// The pod's `network.json` could not be written or read.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The blocking task panicked or was cancelled.
    #[error("wiring task failed: {0}")]
    Task(String),
}

/// Where the wiring happens.
#[derive(Debug, Clone)]
pub struct PodNetworkSettings {
    /// The kubelet's root directory as seen by the agent.
    pub kubelet_root: PathBuf,
    /// The agent's wiring state.
    pub state_dir: PathBuf,
    /// The node's network namespace.
    pub node_netns: PathBuf,
    /// Where process information is (`/proc` of the host's pid namespace).
    pub proc_root: PathBuf,
}

impl PodNetworkSettings {
    /// The defaults of the DaemonSet.
    pub fn new(kubelet_root: PathBuf) -> Self {
        Self {
            kubelet_root,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            node_netns: PathBuf::from(NODE_NETNS),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// What wiring a pod came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    /// The pod has no process yet (its sandbox is being made); try again shortly.
    NotYet,
    /// Wired (now or earlier).
    Done(Box<VmNetwork>),
}

/// Wires `request` into the pod `pod_uid`, whose IP is `pod_ip`, or takes up an earlier
/// wiring. Blocking.
pub fn ensure_wired(
    settings: &PodNetworkSettings,
    request: &VmNetworkRequest,
    pod_uid: &str,
    pod_ip: std::net::Ipv4Addr,
) -> Result<Wiring, PodNetworkError> {
    let Some(file) = empty_dir(&settings.kubelet_root, pod_uid, SOCKETS_VOLUME)
        .map(|dir| dir.join(NETWORK_FILE))
    else {
        return Err(PodNetworkError::File {
            path: PathBuf::from(pod_uid),
            problem: "not a pod UID".into(),
        });
    };
    let pids = pod_processes(&settings.proc_root, pod_uid);
    let Some((pid, netns_inode)) = pod_namespace(&settings.proc_root, pod_uid, &pids) else {
        return Ok(Wiring::NotYet);
    };
    if let Some(network) = read_wiring(&file)? {
        if network.vm_uid == request.vm_uid {
            ironvisor_net::resume_pod(&settings.state_dir, &network, pid, netns_inode)?;
            return Ok(Wiring::Done(Box::new(network)));
        }
    }
    let pod = PodNamespace {
        pid,
        netns_inode,
        pod_ip,
        dns_servers: pod_nameservers(&settings.proc_root, &pids),
        node_netns: &settings.node_netns,
    };
    let network = match ironvisor_net::wire_pod(&settings.state_dir, request, &pod) {
        Ok(network) => network,
        // A process still on its way into the pod (the runtime's init before it joins
        // the pod's namespace): the next pass finds it there.
        Err(error @ ironvisor_net::NetError::NotThePod { .. }) => {
            tracing::info!(%error, "not wired yet");
            return Ok(Wiring::NotYet);
        }
        Err(error) => return Err(error.into()),
    };
    write_wiring(&file, &network)?;
    Ok(Wiring::Done(Box::new(network)))
}

/// Lets go of the wiring of instance `vm_uid` (its pod is gone or going). Blocking.
pub fn release(settings: &PodNetworkSettings, vm_uid: &str) -> Result<(), PodNetworkError> {
    Ok(ironvisor_net::unwire_pod(&settings.state_dir, vm_uid)?)
}

/// The instance UIDs this agent has wired.
pub fn wired(settings: &PodNetworkSettings) -> Result<Vec<String>, PodNetworkError> {
    Ok(ironvisor_net::wired_pods(&settings.state_dir)?)
}

/// The status entry of a wired interface: the pod IP, as KubeVirt reports it for both
/// bindings.
pub fn interface_status(network: &VmNetwork) -> VirtualMachineInstanceNetworkInterface {
    let ip = network.reported_ip().to_string();
    VirtualMachineInstanceNetworkInterface {
        name: Some(network.interface.clone()),
        ip_address: Some(ip.clone()),
        ip_addresses: vec![ip],
        mac: Some(network.mac_string()),
        interface_name: Some(GUEST_IFNAME.into()),
    }
}

/// Host pids of the processes in the pod's cgroup (cgroupfs `pod<uid>` or systemd
/// `pod<uid with underscores>.slice`), which share the pod's network namespace, oldest
/// first (the sandbox's pause process, which lives as long as the pod, before short-lived
/// init container processes). Processes in the agent's own network namespace (a
/// host-network pod) are left out.
pub fn pod_processes(proc_root: &Path, pod_uid: &str) -> Vec<u32> {
    let own_netns = std::fs::read_link(proc_root.join("self/ns/net")).ok();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<(u64, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            in_pod(proc_root, pid, pod_uid)
                && std::fs::read_link(proc_root.join(format!("{pid}/ns/net"))).ok() != own_netns
        })
        .map(|pid| (start_time(proc_root, pid).unwrap_or(u64::MAX), pid))
        .collect();
    pids.sort_unstable();
    pids.into_iter().map(|(_, pid)| pid).collect()
}

/// Whether process `pid` is in the cgroup of pod `pod_uid`.
fn in_pod(proc_root: &Path, pid: u32, pod_uid: &str) -> bool {
    let cgroupfs = format!("/pod{pod_uid}/");
    let systemd = format!("-pod{}.slice", pod_uid.replace('-', "_"));
    std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))).is_ok_and(|cgroups| {
        cgroups
            .lines()
            .any(|l| l.contains(&cgroupfs) || l.contains(&systemd))
    })
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field 22).
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after its last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The first of `pids` whose network namespace can be read while it is still in the pod:
/// its pid and the namespace's inode (`net:[INODE]`). The cgroup is read again after the
/// namespace, so a pid reused by a process outside the pod in between is not taken.
fn pod_namespace(proc_root: &Path, pod_uid: &str, pids: &[u32]) -> Option<(u32, u64)> {
    pids.iter().find_map(|&pid| {
        let link = std::fs::read_link(proc_root.join(format!("{pid}/ns/net"))).ok()?;
        let inode = link
            .to_str()?
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        in_pod(proc_root, pid, pod_uid).then_some((pid, inode))
    })
}

/// The pod's own name servers (its resolv.conf as the kubelet wrote it), reachable ones only.
fn pod_nameservers(proc_root: &Path, pids: &[u32]) -> Vec<std::net::Ipv4Addr> {
    pids.iter()
        .find_map(|pid| {
            std::fs::read_to_string(proc_root.join(format!("{pid}/root/etc/resolv.conf"))).ok()
        })
        .map(|text| ironvisor_net::reachable_nameservers(&text))
        .unwrap_or_default()
}

fn read_wiring(file: &Path) -> Result<Option<VmNetwork>, PodNetworkError> {
    match std::fs::read(file) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(network) => Ok(Some(network)),
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "unreadable wiring; wiring again");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PodNetworkError::File {
            path: file.to_path_buf(),
            problem: e.to_string(),
        }),
    }
}

/// Writes the wiring for `virt-launcher`: a temporary file renamed into place, so the
/// launcher never reads half of it.
fn write_wiring(file: &Path, network: &VmNetwork) -> Result<(), PodNetworkError> {
    let err = |e: std::io::Error| PodNetworkError::File {
        path: file.to_path_buf(),
        problem: e.to_string(),
    };
    let json = serde_json::to_vec_pretty(network).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = file.with_extension("json.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(err)?;
    out.write_all(&json).map_err(err)?;
    out.sync_all().map_err(err)?;
    std::fs::rename(&tmp, file).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(root: &Path, pid: u32, cgroup: &str, netns: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        std::os::unix::fs::symlink(netns, dir.join("ns/net")).unwrap();
    }

    #[test]
    fn pod_processes_are_found_by_cgroup_in_both_drivers_layouts() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0b6f1c2d-aaaa-bbbb-cccc-000000000001";
        std::fs::create_dir_all(root.path().join("self/ns")).unwrap();
        std::os::unix::fs::symlink("net:[1]", root.path().join("self/ns/net")).unwrap();
        fake_proc(
            root.path(),
            10,
            &format!("4:memory:/kubepods/besteffort/pod{uid}/abc\n"),
            "net:[2]",
        );
        let systemd = uid.replace('-', "_");
        fake_proc(
            root.path(),
            11,
            &format!("0::/kubepods.slice/kubepods-burstable-pod{systemd}.slice/cri-x\n"),
            "net:[2]",
        );
        fake_proc(
            root.path(),
            12,
            "4:memory:/kubepods/besteffort/podother/abc\n",
            "net:[3]",
        );
        // Host network: the agent's own namespace.
        fake_proc(
            root.path(),
            13,
            &format!("4:memory:/kubepods/besteffort/pod{uid}/def\n"),
            "net:[1]",
        );
        assert_eq!(pod_processes(root.path(), uid), vec![10, 11]);
        assert!(pod_processes(root.path(), "missing").is_empty());
        assert_eq!(pod_namespace(root.path(), uid, &[12, 10]), Some((10, 2)));
    }

    #[test]
    fn the_oldest_process_of_the_pod_comes_first() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0b6f1c2d-aaaa-bbbb-cccc-000000000002";
        std::fs::create_dir_all(root.path().join("self/ns")).unwrap();
        std::os::unix::fs::symlink("net:[1]", root.path().join("self/ns/net")).unwrap();
        let cgroup = format!("4:memory:/kubepods/burstable/pod{uid}/c\n");
        // pid 5 is an init container's `cp` started after the pause process (pid 900,
        // the pids wrapped around); the name has a space and a parenthesis.
        for (pid, name, start) in [(5, "cp", 5000), (900, "pause", 100), (7, "a) b", 7000)] {
            fake_proc(root.path(), pid, &cgroup, "net:[4]");
            let stat = format!("{pid} ({name}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0");
            std::fs::write(root.path().join(format!("{pid}/stat")), stat).unwrap();
        }
        assert_eq!(pod_processes(root.path(), uid), vec![900, 5, 7]);
    }

    #[test]
    fn the_wiring_file_round_trips_and_a_corrupt_one_is_wired_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(NETWORK_FILE);
        assert!(read_wiring(&file).unwrap().is_none());
        std::fs::write(&file, b"{not json").unwrap();
        assert!(read_wiring(&file).unwrap().is_none());
    }
}
