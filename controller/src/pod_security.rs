//! Who the processes of a launcher pod are, and what they may do.
//!
//! Every container of a launcher pod runs as the launcher user ([`LAUNCHER_UID`], the
//! `ironvisor` user of the launcher image), is not privileged, cannot gain privileges, has
//! no capability and runs under the runtime's default seccomp profile: the pod meets the
//! Pod Security "restricted" level. What the guest needs arrives without privilege:
//!
//! - `/dev/kvm` and `/dev/net/tun` from the node agent's device plugins; the container
//!   runtime makes them the pod user's (containerd's `device_ownership_from_security_context`,
//!   which `scripts/cluster.sh` sets), as it does a Block claim's device;
//! - the guest's tap, made by the node agent in the pod's network namespace and owned by
//!   the pod user, so opening it needs no `CAP_NET_ADMIN`;
//! - emptyDir volumes (writable by anyone) and claims, which the kubelet gives the pod's
//!   `fsGroup`;
//! - for software emulation, libvirt's per-user ("session") daemon in the container,
//!   whose QEMU runs as the pod user too.
//!
//! One exception: a pod with a `hostDisk` volume runs its containers as root (still not
//! privileged, no capability beyond the runtime's defaults), because the disk is a file
//! of the node's, in a node directory owned by root. Such a pod mounts a hostPath and so
//! meets no Pod Security level above "privileged" anyway.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// The launcher user's UID and GID, as the Kubernetes API types them (a `u32` always fits
/// an `i64`; `i64::from` is not usable in a constant).
pub const LAUNCHER_UID: i64 = ironvisor_crds::cluster::LAUNCHER_UID as i64;

/// Whether a pod's containers run as the launcher user or as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LauncherIdentity {
    /// The launcher user, no capability ("restricted").
    Unprivileged,
    /// Root in an unprivileged container (pods with `hostDisk` volumes).
    Root,
}

impl LauncherIdentity {
    /// The identity a pod gets: root only when it must write a node directory.
    pub fn for_pod(has_host_disks: bool) -> Self {
        if has_host_disks {
            Self::Root
        } else {
            Self::Unprivileged
        }
    }

    /// The pod-wide settings.
    pub fn pod_context(self) -> PodSecurityContext {
        let seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
        match self {
            Self::Unprivileged => PodSecurityContext {
                run_as_user: Some(LAUNCHER_UID),
                run_as_group: Some(LAUNCHER_UID),
                run_as_non_root: Some(true),
                fs_group: Some(LAUNCHER_UID),
                seccomp_profile,
                ..PodSecurityContext::default()
            },
            Self::Root => PodSecurityContext {
                seccomp_profile,
                ..PodSecurityContext::default()
            },
        }
    }

    /// Each container's settings.
    pub fn container_context(self) -> SecurityContext {
        let capabilities = match self {
            Self::Unprivileged => Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            Self::Root => None,
        };
        SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities,
            ..SecurityContext::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_pod_runs_as_the_launcher_user_without_capabilities() {
        let identity = LauncherIdentity::for_pod(false);
        let pod = identity.pod_context();
        assert_eq!(pod.run_as_user, Some(LAUNCHER_UID));
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(pod.fs_group, Some(LAUNCHER_UID));
        assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let container = identity.container_context();
        assert_eq!(container.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(container.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn a_pod_with_host_disks_runs_as_root_but_not_privileged() {
        let identity = LauncherIdentity::for_pod(true);
        assert_eq!(identity, LauncherIdentity::Root);
        assert_eq!(identity.pod_context().run_as_user, None);
        assert_eq!(identity.container_context().privileged, Some(false));
    }
}
