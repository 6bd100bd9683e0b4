//! `ironvisor-csi-hostpath`: a node-local CSI driver for the single-node test cluster,
//! with the kubelet plugin registration built in.
//!
//! The test cluster needs a storage driver for PersistentVolumeClaims, filesystem and
//! raw block alike. The upstream csi-driver-host-path and node-driver-registrar cannot
//! be obtained here (they are not on the Go module proxy this machine uses), so this
//! crate stands in for both: one process serves the CSI Identity, Controller and Node
//! services (spec v1, gRPC on a unix socket) that the upstream `csi-provisioner` sidecar
//! and the kubelet call, and the kubelet's `pluginregistration.Registration` service on
//! `<registration-dir>/<driver>-reg.sock`, which is how the kubelet discovers the
//! driver.
//!
//! Volumes live in one host directory (`--data-dir`): a filesystem volume is the
//! directory `<id>/`, bind-mounted onto the pod's target; a block volume is the sparse
//! file `<id>.img`, attached to a loop device whose node is bind-mounted onto the
//! target file. `<id>.json` records the volume and is written last, so a volume exists
//! exactly when its record does. Every volume is on this node
//! ([`topology::NODE_KEY`]).
//!
//! - [`cli`]: the command line.
//! - [`volume_id`], [`capacity`], [`capability`], [`topology`]: checking and
//!   interpreting requests.
//! - [`metadata`]: the per-volume record. [`store`]: volumes in the data directory.
//! - [`mountinfo`], [`mount`], [`loop_scan`], [`loopdev`]: the host side (mount table,
//!   bind mounts, loop devices). [`publish`]: putting a volume at a target and taking it
//!   away.
//! - [`identity`], [`controller`], [`node`], [`registration`]: the gRPC services.
//! - [`socket`], [`server`]: binding the sockets and serving until shutdown;
//!   [`authority`]: the relay in front of both that lets grpc-go clients dialling a bare
//!   socket path (the kubelet's plugin watcher) through tonic's HTTP/2 checks.

#![deny(missing_docs)]

pub mod authority;
pub mod blocking;
pub mod capability;
pub mod capacity;
pub mod cli;
pub mod controller;
pub mod identity;
pub mod loop_scan;
pub mod loopdev;
pub mod metadata;
pub mod mount;
pub mod mountinfo;
pub mod node;
pub mod publish;
pub mod registration;
pub mod server;
pub mod socket;
pub mod store;
pub mod topology;
pub mod volume_id;

/// Code generated from `proto/`: the messages, servers and clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// CSI spec v1, the subset this driver serves (package `csi.v1`).
    pub mod csi {
        tonic::include_proto!("csi.v1");
    }
    /// The kubelet's plugin registration (package `pluginregistration`).
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

/// The default CSI driver name.
pub const DEFAULT_DRIVER_NAME: &str = "hostpath.csi.ironvisor.io";

/// The driver's version, reported by GetPluginInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
