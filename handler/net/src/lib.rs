//! Pod-like networking for Ironvisor VMs in standalone mode, done the way Kubelet, CNI and
//! KubeVirt do it, with the real tools:
//!
//! 1. a network namespace per VM (`iv-<hash of the VM key>`, created with `ip netns add`);
//! 2. the CNI `bridge` plugin with `host-local` IPAM and `ipMasq` puts `eth0` with a pod IP
//!    in it, connected to the node bridge (`ironvisor0`);
//! 3. inside the namespace a persistent tap (`tap0`) for the launcher, enslaved to the
//!    bridge `k6t-eth0`, and KubeVirt's **masquerade** binding (guest 10.0.2.2 behind NAT,
//!    nftables DNAT/masquerade) or **bridge** binding (eth0 bridged, guest gets the pod IP);
//! 4. a `dnsmasq` in the namespace that offers the guest its address by DHCP.
//!
//! The launcher is then run inside the namespace ([`VmNetwork::netns_path`],
//! [`VmNetwork::open_netns`] for `setns(2)` in the child) and opens [`VmNetwork::tap`].
//! A JSON state file per VM lets [`load`] and [`teardown`] work after a daemon restart.
//!
//! All functions block (they run external tools) and need root. Calls for the same VM key
//! must not run concurrently; calls for different VMs may.

#![warn(missing_docs)]

mod binding;
mod cni;
mod config;
mod dhcp;
mod guest_connect;
mod netns;
mod pod;
mod ports;
mod request;
mod state;
mod tool;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use binding::{
    BindingError, BRIDGE_BINDING_SERVER, BRIDGE_IFNAME, MASQUERADE_GATEWAY, MASQUERADE_GUEST,
    MASQUERADE_PREFIX_LEN, TAP_IFNAME,
};
pub use cni::CniError;
pub use config::{
    format_mac, parse_mac, Binding, ConfigError, NetworkConfig, VmNetworkRequest, DEFAULT_BRIDGE,
    DEFAULT_CNI_BIN_DIR, DEFAULT_SUBNET,
};
pub use dhcp::{reachable_nameservers, DhcpError};
pub use guest_connect::{
    connect_in_netns, pod_guest_connect, GuestConnectError, GUEST_CONNECT_TIMEOUT,
};
pub use netns::{NetnsError, NETNS_RUN_DIR};
pub use pod::{
    pod_netns_name, resume_pod, unwire_pod, wire_pod, wired_pods, PodNamespace, POD_NETWORK_FILE,
};
pub use ports::{ForwardedPort, PortProtocol};
pub use request::{request_for, RequestError};
pub use state::StateError;
pub use tool::{Failure, ToolError};

use cni::Attachment;
use config::{mac_serde, Ipv4Net, MASQUERADE_SUBNET};
use dhcp::DhcpServer;
use state::{VmState, STATE_VERSION};
use tool::Invocation;

/// A VM's network as set up by [`setup`]: where the launcher runs and what the guest gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetwork {
    /// `namespace/name` of the VM.
    pub vm_key: String,
    /// UID of the VM instance (the CNI container ID).
    pub vm_uid: String,
    /// KubeVirt interface name.
    pub interface: String,
    /// How the guest is connected.
    pub binding: Binding,
    /// Name of the VM's network namespace (`ip netns list`).
    pub netns_name: String,
    /// Path to enter the namespace with `setns(2)`, e.g. `/var/run/netns/iv-0123456789`.
    pub netns_path: PathBuf,
    /// The persistent tap inside the namespace, for the launcher's virtio-net device.
    pub tap: String,
    /// The pod IP CNI assigned to `eth0`.
    pub pod_ip: Ipv4Addr,
    /// The pod's gateway (the node bridge address).
    pub pod_gateway: Ipv4Addr,
    /// Prefix length of the pod subnet.
    pub pod_prefix_len: u8,
    /// The address the guest gets by DHCP.
    pub guest_ip: Ipv4Addr,
    /// The guest's default gateway.
    pub gateway: Ipv4Addr,
    /// Prefix length of the guest's subnet.
    pub prefix_len: u8,
    /// The guest NIC's MAC address.
    #[serde(with = "mac_serde")]
    pub mac: [u8; 6],
    /// MTU for the guest NIC (also offered by DHCP).
    pub mtu: u32,
    /// Name servers offered to the guest by DHCP.
    pub dns_servers: Vec<Ipv4Addr>,
}

impl VmNetwork {
    /// The address VMI status reports: the pod IP, as KubeVirt does for both bindings.
    pub fn reported_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// The MAC in `52:54:00:12:34:56` form, as the launcher configuration takes it.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    /// Opens the namespace for `setns(fd, CLONE_NEWNET)`; open it before forking the
    /// launcher and call `setns` in the child.
    pub fn open_netns(&self) -> Result<OwnedFd, NetError> {
        netns::open(&self.netns_path).map_err(|source| NetError::Netns {
            vm_key: self.vm_key.clone(),
            source,
        })
    }
}

/// Why a VM network operation failed. Every variant names the VM; the source names the
/// tool, the namespace and what it printed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node configuration or the request is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Creating, deleting or opening the namespace failed.
    #[error("VM {vm_key}: {source}")]
    Netns {
        /// The VM.
        vm_key: String,
        /// What failed.
        #[source]
        source: NetnsError,
    },
    /// The node end of a lost namespace's veth could not be removed.
    #[error("VM {vm_key}: removing the node interface {interface}: {source}")]
    NodeLink {
        /// The VM.
        vm_key: String,
        /// The interface.
        interface: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// The CNI plugin failed.
    #[error("VM {vm_key}: {source}")]
    Cni {
        /// The VM.
        vm_key: String,
        /// What failed.
        #[source]
        source: CniError,
    },
    /// Plumbing inside the namespace failed.
    #[error("VM {vm_key}: {binding} binding: {source}")]
    Binding {
        /// The VM.
        vm_key: String,
        /// The binding being set up.
        binding: Binding,
        /// What failed.
        #[source]
        source: BindingError,
    },
    /// The DHCP server could not be started or stopped.
    #[error("VM {vm_key}: DHCP server: {source}")]
    Dhcp {
        /// The VM.
        vm_key: String,
        /// What failed.
        #[source]
        source: DhcpError,
    },
    /// The state file could not be read or written.
    #[error("VM {vm_key}: {source}")]
    State {
        /// The VM.
        vm_key: String,
        /// What failed.
        #[source]
        source: StateError,
    },
    /// The namespace named through the pod's process is not the pod's: its `eth0` lacks the
    /// pod IP (a process of the pod can be in the node's namespace for a moment, while
    /// the container runtime moves it into the pod's).
    #[error(
        "VM {vm_key}: the namespace of process {pid} has {found} on eth0, not the pod IP {expected}:          not the pod's namespace yet; trying again"
    )]
    NotThePod {
        /// The VM.
        vm_key: String,
        /// The process the namespace was named through.
        pid: u32,
        /// What eth0 has.
        found: String,
        /// The pod IP the API server reports.
        expected: std::net::Ipv4Addr,
    },
    /// The VM already has a network set up with different parameters.
    #[error(
        "VM {vm_key}: network namespace {netns} is already set up for {existing}; \
         requested {requested}; tear it down first"
    )]
    Conflict {
        /// The VM.
        vm_key: String,
        /// Its namespace.
        netns: String,
        /// uid, binding and MAC of the existing setup.
        existing: String,
        /// uid, binding and MAC requested.
        requested: String,
    },
    /// A namespace with the VM's name exists but was not made by this crate.
    #[error(
        "VM {vm_key}: network namespace {netns} exists but has no state in {state_dir}; \
         it was not created by ironvisor (remove it with `ip netns delete {netns}`)"
    )]
    ForeignNetns {
        /// The VM.
        vm_key: String,
        /// The namespace.
        netns: String,
        /// Where its state was looked for.
        state_dir: PathBuf,
    },
    /// Two VM keys hash to the same namespace name.
    #[error(
        "VM {vm_key}: namespace {netns} is already used by VM {other_vm_key} (name hash collision)"
    )]
    KeyCollision {
        /// The VM.
        vm_key: String,
        /// The namespace.
        netns: String,
        /// The VM that owns it.
        other_vm_key: String,
    },
    /// The recorded setup never completed (the daemon stopped during setup).
    #[error(
        "VM {vm_key}: network setup in {netns} did not complete; tear it down and set it up again"
    )]
    Incomplete {
        /// The VM.
        vm_key: String,
        /// The namespace.
        netns: String,
    },
    /// The state is there but the namespace is gone (e.g. after a reboot).
    #[error(
        "VM {vm_key}: network namespace {netns} is gone although its state remains \
         (host rebooted?); tear it down and set it up again"
    )]
    Stale {
        /// The VM.
        vm_key: String,
        /// The namespace.
        netns: String,
    },
    /// Setup failed, and undoing what it had created failed too.
    #[error("VM {vm_key}: setup failed: {cause}; rolling back also failed: {rollback}")]
    RollbackFailed {
        /// The VM.
        vm_key: String,
        /// Why setup failed.
        cause: Box<NetError>,
        /// Why the rollback failed.
        rollback: Box<NetError>,
    },
    /// Some teardown steps failed; the state is kept so teardown can be retried.
    #[error("VM {vm_key}: teardown incomplete: {}", join_errors(.errors))]
    TeardownIncomplete {
        /// The VM.
        vm_key: String,
        /// Each failed step.
        errors: Vec<NetError>,
    },
    /// The state directory could not be listed.
    #[error("listing VM network states in {path}: {source}")]
    List {
        /// The state directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn join_errors(errors: &[NetError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The namespace name of a VM: `iv-` and 10 hex digits of a stable (FNV-1a) hash of the
/// key, so it is the same after a restart and fits interface-name-like limits.
pub fn netns_name(vm_key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vm_key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("iv-{:010x}", hash >> 24)
}

/// Sets up the VM's network namespace, pod interface, binding and DHCP server.
///
/// Idempotent for the same request: if the VM's network is already up with the same uid,
/// binding and MAC, it is returned as is. A leftover from an interrupted setup (or a
/// namespace lost in a reboot) of the same uid is torn down first. Any failure part-way
/// undoes what this call created.
pub fn setup(cfg: &NetworkConfig, req: &VmNetworkRequest) -> Result<VmNetwork, NetError> {
    let netns_name = netns_name(&req.vm_key);
    let span = tracing::info_span!(
        "vm_network_setup",
        vm = %req.vm_key,
        uid = %req.vm_uid,
        netns = %netns_name,
        binding = %req.binding,
    );
    let _guard = span.enter();
    cfg.validate()?;
    req.validate()?;
    let dir = state::vm_dir(&cfg.state_dir, &netns_name);
    let state_err = |source| NetError::State {
        vm_key: req.vm_key.clone(),
        source,
    };

    if let Some(existing) = state::read(&dir).map_err(state_err)? {
        if existing.vm_key != req.vm_key {
            return Err(NetError::KeyCollision {
                vm_key: req.vm_key.clone(),
                netns: netns_name,
                other_vm_key: existing.vm_key,
            });
        }
        let same_request = existing.vm_uid == req.vm_uid
            && existing.interface == req.interface
            && existing.binding == req.binding
            && existing.mac == req.mac;
        if !same_request {
            return Err(NetError::Conflict {
                vm_key: req.vm_key.clone(),
                netns: netns_name,
                existing: describe(
                    &existing.vm_uid,
                    &existing.interface,
                    existing.binding,
                    &existing.mac,
                ),
                requested: describe(&req.vm_uid, &req.interface, req.binding, &req.mac),
            });
        }
        match existing.network {
            Some(network) if netns::exists(&netns_name) => {
                ensure_dhcp_running(&network, &dir)?;
                tracing::info!(pod_ip = %network.pod_ip, "network already set up");
                return Ok(network);
            }
            _ => {
                tracing::info!("removing an incomplete or stale earlier setup");
                teardown_state(&existing, &dir)?;
            }
        }
    } else if netns::exists(&netns_name) {
        return Err(NetError::ForeignNetns {
            vm_key: req.vm_key.clone(),
            netns: netns_name,
            state_dir: dir,
        });
    }

    // Recorded before anything exists, so a crash at any later point can be torn down.
    let mut st = VmState {
        version: STATE_VERSION,
        vm_key: req.vm_key.clone(),
        vm_uid: req.vm_uid.clone(),
        interface: req.interface.clone(),
        netns_name: netns_name.clone(),
        binding: req.binding,
        mac: req.mac,
        cni_bin_dir: cfg.cni_bin_dir.clone(),
        cni_config: cni::network_config(cfg),
        attachment: None,
        host_interface: None,
        network: None,
    };
    state::write(&dir, &st).map_err(state_err)?;
    match build(cfg, req, &mut st, &dir) {
        Ok(network) => {
            tracing::info!(
                pod_ip = %network.pod_ip,
                guest_ip = %network.guest_ip,
                tap = %network.tap,
                "VM network ready"
            );
            Ok(network)
        }
        Err(cause) => {
            tracing::warn!(error = %cause, "VM network setup failed; rolling back");
            match teardown_state(&st, &dir) {
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

fn describe(uid: &str, interface: &str, binding: Binding, mac: &[u8; 6]) -> String {
    format!(
        "uid {uid}, interface {interface:?}, {binding} binding, MAC {}",
        format_mac(mac)
    )
}

/// The DHCP server settings of a set-up network.
fn dhcp_server<'a>(network: &'a VmNetwork, dir: &'a Path) -> DhcpServer<'a> {
    let guest_net = Ipv4Net {
        addr: network.guest_ip,
        prefix_len: network.prefix_len,
    };
    DhcpServer {
        netns: &network.netns_name,
        interface: BRIDGE_IFNAME,
        dir,
        mac: network.mac,
        client_ip: network.guest_ip,
        network: guest_net.network(),
        netmask: guest_net.netmask(),
        router: network.gateway,
        mtu: network.mtu,
        dns_servers: &network.dns_servers,
        shared_network: network.binding == Binding::Bridge,
    }
}

/// Restarts the VM's DHCP server if it died, so that setting up an existing network
/// again also repairs it.
fn ensure_dhcp_running(network: &VmNetwork, dir: &Path) -> Result<(), NetError> {
    if !dhcp::running_pids(dir).is_empty() {
        return Ok(());
    }
    tracing::warn!("DHCP server of an existing network is not running; restarting it");
    dhcp_server(network, dir)
        .start()
        .map(drop)
        .map_err(|source| NetError::Dhcp {
            vm_key: network.vm_key.clone(),
            source,
        })
}

/// The setup steps after the state file is written; `st` records progress.
fn build(
    cfg: &NetworkConfig,
    req: &VmNetworkRequest,
    st: &mut VmState,
    dir: &Path,
) -> Result<VmNetwork, NetError> {
    let vm_key = &req.vm_key;
    let ns = st.netns_name.clone();
    netns::create(&ns).map_err(|source| NetError::Netns {
        vm_key: vm_key.clone(),
        source,
    })?;
    let netns_path = netns::path(&ns);

    let added =
        cni::add(&st.cni_bin_dir, &st.cni_config, &st.vm_uid, &netns_path).map_err(|source| {
            NetError::Cni {
                vm_key: vm_key.clone(),
                source,
            }
        })?;
    let attachment = added.attachment;
    tracing::debug!(pod_ip = %attachment.address, gateway = %attachment.gateway, "CNI ADD done");
    st.attachment = Some(attachment);
    st.host_interface = added.host_interface;
    state::write(dir, st).map_err(|source| NetError::State {
        vm_key: vm_key.clone(),
        source,
    })?;

    bind_and_serve(
        req,
        st,
        dir,
        netns_path,
        attachment,
        dhcp::host_nameservers(),
        &NodeNeighbours::Bridge(&cfg.bridge),
    )
}

/// Where the node keeps its neighbour entry for a pod IP (bridge binding moves the pod IP
/// to the guest's MAC).
pub(crate) enum NodeNeighbours<'a> {
    /// The node bridge, in this process's namespace (standalone mode).
    Bridge(&'a str),
    /// The node's network namespace, entered by path (cluster mode, where the node agent
    /// runs in its own pod namespace).
    Namespace(&'a Path),
}

/// The steps after the pod interface has its address: the binding inside the namespace,
/// the DHCP server, and the completed state. `st.attachment` must be recorded already.
pub(crate) fn bind_and_serve(
    req: &VmNetworkRequest,
    st: &mut VmState,
    dir: &Path,
    netns_path: PathBuf,
    attachment: Attachment,
    dns_servers: Vec<Ipv4Addr>,
    neighbours: &NodeNeighbours<'_>,
) -> Result<VmNetwork, NetError> {
    let vm_key = &req.vm_key;
    let ns = st.netns_name.clone();
    let binding_err = |source| NetError::Binding {
        vm_key: vm_key.clone(),
        binding: req.binding,
        source,
    };
    let pod_net = Ipv4Net {
        addr: attachment.address,
        prefix_len: attachment.prefix_len,
    };
    let (link, guest_ip, gateway, guest_net) = match req.binding {
        Binding::Masquerade => (
            binding::setup_masquerade(&ns, &req.ports, req.tap_owner).map_err(binding_err)?,
            MASQUERADE_GUEST,
            MASQUERADE_GATEWAY,
            MASQUERADE_SUBNET,
        ),
        Binding::Bridge => {
            let link = binding::setup_bridge(&ns, req.tap_owner).map_err(binding_err)?;
            forget_pod_neighbour(neighbours, attachment.address);
            (link, attachment.address, attachment.gateway, pod_net)
        }
    };

    let network = VmNetwork {
        vm_key: vm_key.clone(),
        vm_uid: req.vm_uid.clone(),
        interface: req.interface.clone(),
        binding: req.binding,
        netns_name: ns,
        netns_path,
        tap: TAP_IFNAME.to_string(),
        pod_ip: attachment.address,
        pod_gateway: attachment.gateway,
        pod_prefix_len: attachment.prefix_len,
        guest_ip,
        gateway,
        prefix_len: guest_net.prefix_len,
        mac: req.mac,
        mtu: link.mtu,
        dns_servers,
    };
    dhcp_server(&network, dir)
        .start()
        .map_err(|source| NetError::Dhcp {
            vm_key: vm_key.clone(),
            source,
        })?;
    st.network = Some(network.clone());
    state::write(dir, st).map_err(|source| NetError::State {
        vm_key: vm_key.clone(),
        source,
    })?;
    Ok(network)
}

/// With bridge binding the pod IP moves from eth0's MAC to the guest's; drop the node's
/// cached neighbour entry so the node does not send to the old MAC until it expires.
fn forget_pod_neighbour(neighbours: &NodeNeighbours<'_>, pod_ip: Ipv4Addr) {
    let flush = |ip: Invocation| ip.args(["neigh", "flush", "to"]).arg(pod_ip.to_string());
    let result = match neighbours {
        NodeNeighbours::Bridge(bridge) => flush(Invocation::new("ip")).args(["dev", bridge]).run(),
        NodeNeighbours::Namespace(path) => {
            let mut net = std::ffi::OsString::from("--net=");
            net.push(path.as_os_str());
            flush(Invocation::new("nsenter").arg(net).arg("ip")).run()
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, "could not flush the node's neighbour entry for the pod IP");
    }
}

/// Tears down the VM's network: stops dnsmasq, runs CNI DEL (releasing the IP lease, the
/// masquerade rules and the veth), deletes the namespace (and the tap in it) and removes
/// the state. Safe to call twice, for a VM that was never set up, and after a crash at any
/// point of [`setup`] or [`teardown`]. Call it after the VM's launcher has exited: a
/// process still inside the namespace keeps the tap alive until it exits.
pub fn teardown(cfg: &NetworkConfig, vm_key: &str) -> Result<(), NetError> {
    let netns_name = netns_name(vm_key);
    let span = tracing::info_span!("vm_network_teardown", vm = %vm_key, netns = %netns_name);
    let _guard = span.enter();
    let dir = state::vm_dir(&cfg.state_dir, &netns_name);
    let existing = state::read(&dir).map_err(|source| NetError::State {
        vm_key: vm_key.to_string(),
        source,
    })?;
    match existing {
        Some(st) if st.vm_key != vm_key => Err(NetError::KeyCollision {
            vm_key: vm_key.to_string(),
            netns: netns_name,
            other_vm_key: st.vm_key,
        }),
        Some(st) => {
            teardown_state(&st, &dir)?;
            tracing::info!("VM network removed");
            Ok(())
        }
        None => {
            // The state file is written before anything is created and removed after
            // everything is gone: without it, at most a stray directory is left.
            dhcp::stop(&dir).map_err(|source| NetError::Dhcp {
                vm_key: vm_key.to_string(),
                source,
            })?;
            state::remove(&dir).map_err(|source| NetError::State {
                vm_key: vm_key.to_string(),
                source,
            })?;
            tracing::debug!("no VM network recorded; nothing to do");
            Ok(())
        }
    }
}

/// Undoes whatever of `st` exists, step by step, continuing past failures; the state file
/// is removed only if every step succeeded.
fn teardown_state(st: &VmState, dir: &Path) -> Result<(), NetError> {
    let vm_key = &st.vm_key;
    let mut errors = Vec::new();
    if let Err(source) = dhcp::stop(dir) {
        errors.push(NetError::Dhcp {
            vm_key: vm_key.clone(),
            source,
        });
    }
    let netns_path = netns::path(&st.netns_name);
    let del_result =
        match st.attachment {
            Some(attachment) if !netns::exists(&st.netns_name) => del_with_stand_in(st, attachment),
            Some(attachment) => {
                if st.binding == Binding::Bridge {
                    // eth0 may be gone already (an earlier DEL); DEL then has nothing to find.
                    if let Err(error) = binding::restore_pod_address(&st.netns_name, &attachment) {
                        tracing::warn!(%error, "pod address not restored before CNI DEL");
                    }
                }
                cni::del(&st.cni_bin_dir, &st.cni_config, &st.vm_uid, &netns_path).map_err(
                    |source| NetError::Cni {
                        vm_key: vm_key.clone(),
                        source,
                    },
                )
            }
            None => cni::del(&st.cni_bin_dir, &st.cni_config, &st.vm_uid, &netns_path).map_err(
                |source| NetError::Cni {
                    vm_key: vm_key.clone(),
                    source,
                },
            ),
        };
    if let Err(error) = del_result {
        errors.push(error);
    }
    drop_name_and_state(st, dir, errors)
}

/// The last teardown steps of both modes: the namespace name goes, then the state file,
/// but only if no step (`errors`, so far) failed, so that teardown can be retried.
pub(crate) fn drop_name_and_state(
    st: &VmState,
    dir: &Path,
    mut errors: Vec<NetError>,
) -> Result<(), NetError> {
    let vm_key = &st.vm_key;
    if let Err(source) = netns::delete(&st.netns_name) {
        errors.push(NetError::Netns {
            vm_key: vm_key.clone(),
            source,
        });
    }
    if !errors.is_empty() {
        return Err(NetError::TeardownIncomplete {
            vm_key: vm_key.clone(),
            errors,
        });
    }
    state::remove(dir).map_err(|source| NetError::State {
        vm_key: vm_key.clone(),
        source,
    })
}

/// CNI DEL of a pod whose namespace is gone. The bridge plugin finds the addresses whose
/// masquerade rules it must remove on the pod interface, so a stand-in namespace with an
/// `eth0` carrying the pod address is created for the DEL and deleted afterwards.
fn del_with_stand_in(st: &VmState, attachment: Attachment) -> Result<(), NetError> {
    let vm_key = &st.vm_key;
    tracing::info!(pod_ip = %attachment.address, "namespace is gone; CNI DEL through a stand-in");
    let netns_err = |source| NetError::Netns {
        vm_key: vm_key.clone(),
        source,
    };
    netns::create(&st.netns_name).map_err(netns_err)?;
    let result = binding::stand_in_pod_interface(&st.netns_name, &attachment)
        .map_err(|source| NetError::Binding {
            vm_key: vm_key.clone(),
            binding: st.binding,
            source,
        })
        .and_then(|()| {
            cni::del(
                &st.cni_bin_dir,
                &st.cni_config,
                &st.vm_uid,
                &netns::path(&st.netns_name),
            )
            .map_err(|source| NetError::Cni {
                vm_key: vm_key.clone(),
                source,
            })
        });
    let deleted = netns::delete(&st.netns_name).map_err(netns_err);
    // The lost namespace is freed by the kernel in the background once its last process
    // is gone, and its veth with it; remove the node end now so teardown leaves nothing.
    let unlinked = match &st.host_interface {
        Some(name) => remove_node_link(name).map_err(|source| NetError::NodeLink {
            vm_key: vm_key.clone(),
            interface: name.clone(),
            source,
        }),
        None => Ok(()),
    };
    result.and(deleted).and(unlinked)
}

/// Deletes the node interface `name` if it still exists.
fn remove_node_link(name: &str) -> Result<(), ToolError> {
    let exists = || Path::new("/sys/class/net").join(name).exists();
    if !exists() {
        return Ok(());
    }
    let result = Invocation::new("ip")
        .args(["link", "del", "dev", name])
        .run();
    match result {
        Ok(_) => Ok(()),
        // The kernel may have removed it between the check and the delete.
        Err(_) if !exists() => Ok(()),
        Err(source) => Err(source),
    }
}

/// The VM's network as recorded by [`setup`], after a daemon restart. `None` if the VM
/// has no network; an error if the recorded setup is incomplete or its namespace is gone,
/// in which case the caller should [`teardown`] and [`setup`] again.
pub fn load(cfg: &NetworkConfig, vm_key: &str) -> Result<Option<VmNetwork>, NetError> {
    let netns_name = netns_name(vm_key);
    let span = tracing::debug_span!("vm_network_load", vm = %vm_key, netns = %netns_name);
    let _guard = span.enter();
    let dir = state::vm_dir(&cfg.state_dir, &netns_name);
    let Some(st) = state::read(&dir).map_err(|source| NetError::State {
        vm_key: vm_key.to_string(),
        source,
    })?
    else {
        return Ok(None);
    };
    if st.vm_key != vm_key {
        return Err(NetError::KeyCollision {
            vm_key: vm_key.to_string(),
            netns: netns_name,
            other_vm_key: st.vm_key,
        });
    }
    let Some(network) = st.network else {
        return Err(NetError::Incomplete {
            vm_key: vm_key.to_string(),
            netns: netns_name,
        });
    };
    if !netns::exists(&netns_name) {
        return Err(NetError::Stale {
            vm_key: vm_key.to_string(),
            netns: netns_name,
        });
    }
    Ok(Some(network))
}

/// The keys of all VMs with recorded network state, complete or not; for finding networks
/// whose VM is gone after a daemon restart.
pub fn list(cfg: &NetworkConfig) -> Result<Vec<String>, NetError> {
    let list_err = |source| NetError::List {
        path: cfg.state_dir.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&cfg.state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("iv-") {
            continue;
        }
        let dir = entry.path();
        match state::read(&dir) {
            Ok(Some(st)) => keys.push(st.vm_key),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "skipping unreadable VM network state"),
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_are_stable_short_and_distinct() {
        let a = netns_name("default/vm-small");
        assert_eq!(a, netns_name("default/vm-small"));
        assert_eq!(a.len(), "iv-".len() + 10);
        assert!(a.starts_with("iv-"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, netns_name("default/vm-large"));
        assert_ne!(a, netns_name("other/vm-small"));
        // Pinned: the name must not change between builds, or state would be orphaned.
        assert_eq!(netns_name(""), "iv-cbf29ce484");
    }

    #[test]
    fn reported_ip_is_the_pod_ip() {
        let network = VmNetwork {
            vm_key: "default/vm".into(),
            vm_uid: "u".into(),
            interface: "default".into(),
            binding: Binding::Masquerade,
            netns_name: "iv-0".into(),
            netns_path: "/var/run/netns/iv-0".into(),
            tap: "tap0".into(),
            pod_ip: Ipv4Addr::new(10, 222, 0, 9),
            pod_gateway: Ipv4Addr::new(10, 222, 0, 1),
            pod_prefix_len: 24,
            guest_ip: MASQUERADE_GUEST,
            gateway: MASQUERADE_GATEWAY,
            prefix_len: 24,
            mac: [0x52, 0x54, 0, 0, 0, 9],
            mtu: 1500,
            dns_servers: vec![],
        };
        assert_eq!(network.reported_ip(), Ipv4Addr::new(10, 222, 0, 9));
        assert_eq!(network.mac_string(), "52:54:00:00:00:09");
    }

    #[test]
    fn teardown_load_and_list_of_unknown_vms_are_harmless() {
        let root = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig::with_state_dir(root.path());
        assert!(load(&cfg, "default/nothing").unwrap().is_none());
        teardown(&cfg, "default/nothing").unwrap();
        teardown(&cfg, "default/nothing").unwrap();
        assert!(list(&cfg).unwrap().is_empty());
        let missing = NetworkConfig::with_state_dir(root.path().join("absent"));
        assert!(list(&missing).unwrap().is_empty());
    }

    #[test]
    fn load_reports_incomplete_setups() {
        let root = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig::with_state_dir(root.path());
        let key = "default/half";
        let ns = netns_name(key);
        let st = VmState {
            version: STATE_VERSION,
            vm_key: key.into(),
            vm_uid: "uid-h".into(),
            interface: "default".into(),
            netns_name: ns.clone(),
            binding: Binding::Masquerade,
            mac: [0x52, 0x54, 0, 0, 0, 1],
            cni_bin_dir: "/usr/lib/cni".into(),
            cni_config: cni::network_config(&cfg),
            attachment: None,
            host_interface: None,
            network: None,
        };
        state::write(&state::vm_dir(root.path(), &ns), &st).unwrap();
        let err = load(&cfg, key).unwrap_err();
        assert!(matches!(err, NetError::Incomplete { .. }), "{err}");
        assert_eq!(list(&cfg).unwrap(), vec![key.to_string()]);
    }
}
