//! Kubelet device plugins (API `v1beta1`) that let launcher pods use `/dev/kvm` and
//! `/dev/net/tun` without being privileged.
//!
//! Each resource ([`config::KVM_RESOURCE`], [`config::TUN_RESOURCE`]) advertises many
//! identical virtual devices (110 by default) that all stand for one host device node,
//! so that many VMs on a node share it. All are `Healthy` while the node opens
//! read-write, `Unhealthy` otherwise; the state is probed periodically and streamed to
//! the kubelet. `Allocate` hands the container the host node with `rw` access.
//!
//! - [`config`]: [`DevicePluginConfig`], [`DeviceResource`], defaults and validation.
//! - [`health`]: probing a device node, and the periodic watcher.
//! - [`service`]: the `DevicePlugin` gRPC service of one resource.
//! - [`socket`]: binding a plugin socket, and telling whether it is still ours.
//! - [`registration`]: `Register` with the kubelet, with back-off.
//! - [`plugin`]: one plugin's life: serve, register, start over when the kubelet
//!   deletes the socket (it does when it restarts).
//! - [`run_device_plugins`]: every plugin until shutdown.
//! - [`proto`]: the generated API (package `v1beta1`).

#![deny(missing_docs)]

pub mod config;
pub mod health;
pub mod plugin;
pub mod registration;
mod run;
pub mod service;
pub mod socket;

/// Code generated from `proto/deviceplugin_v1beta1.proto` (package `v1beta1`): the
/// messages, the `Registration` and `DevicePlugin` servers and clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1beta1");
}

pub use config::{DevicePluginConfig, DeviceResource, KVM_RESOURCE, TUN_RESOURCE};
pub use run::{run_device_plugins, DevicePluginError};
