//! The launcher's jail, made by the node agent (Firecracker's jailer, in the monitor).
//!
//! A standalone KVM launcher is never root. The node agent writes a [`JailPlan`]: the
//! user the launcher runs as and every file it may open, taken from its
//! `LaunchConfig` ([`plan`]). The monitor, still root,
//!
//! 1. makes a mount namespace of its own with a tmpfs whose tree mirrors the host paths
//!    of those files: each one bind-mounted at its own path (read-only unless the VM writes
//!    it), `/dev/kvm` and `/dev/net/tun` as new device nodes owned by the launcher's user,
//!    the socket directory, and a copy of the few host facts the launcher checks
//!    (`/proc/cpuinfo`, `/proc/meminfo`, the online CPUs, which KVM modules are loaded)
//!    ([`build`]);
//! 2. starts the launcher in a second mount namespace whose root is that tmpfs alone (the
//!    host's tree detached), as the plan's user with no supplementary group, no capability
//!    and `no_new_privs` ([`enter`]); the tap was made persistent and owned by that user by
//!    the node agent, so the launcher attaches to it without `CAP_NET_ADMIN`;
//! 3. removes what the launcher left in its socket directory once it has ended.
//!
//! The paths inside the jail are the host paths, so the launcher's configuration needs no
//! rewriting.

pub mod build;
pub mod enter;
pub mod plan;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use build::{BuiltJail, JailBuildError};
pub use plan::{plan_for, PlanError};

/// Everything the monitor needs to jail one launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailPlan {
    /// The user (and group) the launcher runs as; never 0.
    pub uid: u32,
    /// The launcher's group.
    pub gid: u32,
    /// An empty directory the jail's tmpfs is mounted on (in the monitor's namespace only).
    pub root: PathBuf,
    /// The launcher binary: bound read-only, the only executable file in the jail.
    pub program: PathBuf,
    /// Files the launcher reads: its configuration, kernel, initrd, read-only disks and
    /// every qcow2 backing file. Bound read-only; they must be readable by `uid`.
    pub read_only: Vec<PathBuf>,
    /// Disks the guest writes: bound read-write and given to `uid`.
    pub writable: Vec<PathBuf>,
    /// Directories the launcher binds its sockets in: bound read-write, given to `uid`, and
    /// emptied by the monitor once the launcher has ended.
    pub socket_dirs: Vec<PathBuf>,
    /// Character devices the launcher opens (`/dev/kvm`, `/dev/net/tun`): new nodes of the
    /// same device, owned by `uid`, mode 0600.
    pub devices: Vec<PathBuf>,
}

/// The file a plan is written to in the instance's runtime directory.
pub const PLAN_FILE_NAME: &str = "jail.json";
