//! VM disks for the node agent: turns a VirtualMachine's `volumes` into files the per-VM
//! launcher opens.
//!
//! | volume source             | file                                                  | owned |
//! |---------------------------|-------------------------------------------------------|-------|
//! | `containerDisk`           | `<vm_dir>/disks/<volume>.overlay.qcow2`, a qcow2 overlay backed by the store image or the [`oci_cache`] entry | yes |
//! | `emptyDisk`               | `<vm_dir>/disks/<volume>.empty.img`, sparse raw       | yes   |
//! | `cloudInitNoCloud`        | `<vm_dir>/disks/<volume>.cidata.img`, FAT `cidata`    | yes   |
//! | `hostDisk`                | the given absolute path, raw (created sparse by `DiskOrCreate`) | no |
//! | `persistentVolumeClaim`   | `<volumes_dir>/<claimName>.img`, raw                  | no    |
//! | `configMap`, `secret`, `serviceAccount`, `downwardAPI` | cluster mode only: a FAT disk made in the launcher pod ([`config_disk`]) | - |
//!
//! *Owned* files are created for one VM and deleted by [`cleanup`]; they are listed in
//! `<vm_dir>/disks/owned.json` (see [`manifest`]) and nothing else is ever deleted.
//!
//! **Copy-on-write for containerDisks.** The overlay is a qcow2 image created in-process
//! by [`ironvisor_diskimage::create_overlay`] (the imago crate writes the qcow2 header, with
//! the base's absolute path and format as backing file). No `qemu-img` binary is needed on
//! the node and the launcher reads the same format through `ironvisor_diskimage::open_as`.
//! The base file is only ever opened read-only.
//!
//! **OCI containerDisks.** An image `oci:/abs/layout[:tag]` or `oci-archive:/abs/file.tar[:tag]`
//! is read from that OCI image layout ([`oci_layout`]), its one file under `/disk/` is
//! unpacked once into a cache keyed by the manifest digest ([`oci_cache`], [`oci_layers`]),
//! and the overlay is backed by the cached file. Other references go to the [`ImageStore`].
//!
//! **Standalone PVCs.** Without a CSI driver, a claim `data` is the raw image file
//! `<volumes_dir>/data.img`, which an operator creates (`truncate -s 10G ...`).
//!
//! **Idempotency.** [`prepare`] may be called again for the same VM (e.g. after a node-agent
//! restart): existing overlays and empty disks are reused with their data, an identical
//! cloud-init seed is kept, and a changed one is replaced atomically.
//!
//! **Atomic creation.** Every file is built under a temporary name in its final directory,
//! synced and then moved into place, so a full filesystem ([`DiskError::NoSpace`]) or a crash
//! never leaves a half-made disk under the final name.

#![deny(missing_docs)]

pub mod cloudinit;
pub mod config_disk;
mod fsutil;
pub mod image_store;
pub mod manifest;
pub mod oci_cache;
pub mod oci_layers;
pub mod oci_layout;
#[cfg(test)]
mod oci_tests;
mod prepare;

use std::path::PathBuf;

pub use image_store::{ImageRef, ImageStore, ImageStoreError, ResolvedImage};
pub use ironvisor_diskimage::DiskFormat;
pub use oci_cache::{CachedDisk, OciCache, OciCacheError};
pub use oci_layout::OciReference;
pub use prepare::{cleanup, disks_dir, prepare, DiskError, DISKS_DIR};

/// A disk file ready for the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDisk {
    /// The volume (and disk) name.
    pub name: String,
    /// The file the launcher opens.
    pub path: PathBuf,
    /// The format to open it with (pass it on; never probe guest-writable raw files).
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
    /// Disk serial number shown to the guest.
    pub serial: Option<String>,
    /// Created by this crate for this VM and removed by [`cleanup`]. A `hostDisk` created by
    /// `DiskOrCreate` is not owned: like KubeVirt, it outlives the VM.
    pub owned: bool,
}

/// Where a volume's data comes from (KubeVirt volume sources, quantities already in bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A base image from the [`ImageStore`] or an OCI layout ([`OciCache`]), used through a
    /// per-VM copy-on-write overlay.
    ContainerDisk {
        /// Image reference, e.g. `ironvisor/rootfs:busybox` or
        /// `oci-archive:/var/lib/images/rootfs.tar:busybox`.
        image: String,
    },
    /// A blank sparse raw disk that lives as long as the VM.
    EmptyDisk {
        /// Size in bytes (rounded up to whole 512-byte sectors).
        capacity_bytes: u64,
    },
    /// A raw image file on the node.
    HostDisk {
        /// Absolute path.
        path: PathBuf,
        /// `DiskOrCreate`: create a sparse file of `capacity_bytes` when missing.
        create: bool,
        /// Size for `DiskOrCreate` (required then).
        capacity_bytes: Option<u64>,
    },
    /// A PersistentVolumeClaim; standalone: `<volumes_dir>/<claim>.img`.
    Pvc {
        /// Claim name.
        claim: String,
        /// The claim is attached read-only.
        read_only: bool,
    },
    /// Files of a cluster object (`configMap`, `secret`, `serviceAccount`, `downwardAPI`)
    /// on a FAT disk: made in the launcher pod ([`config_disk`]); the standalone node has
    /// no such objects and refuses it.
    ClusterFiles {
        /// The source kind, as written in the manifest.
        kind: &'static str,
        /// The FAT volume label.
        label: String,
    },
    /// A cloud-init NoCloud seed disk.
    CloudInitNoCloud {
        /// User data as text.
        user_data: Option<String>,
        /// User data as base64 (exclusive with `user_data`).
        user_data_base64: Option<String>,
        /// Network configuration as text.
        network_data: Option<String>,
    },
}

/// One volume of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    /// Volume name (a DNS label: it becomes part of file names).
    pub name: String,
    /// Where the data comes from.
    pub source: VolumeSource,
    /// Attach read-only (from the disk's device settings).
    pub read_only: bool,
    /// Disk serial number.
    pub serial: Option<String>,
}

/// Everything [`prepare`] needs to know about the VM and the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskContext {
    /// The VM's private directory; owned disks go to `<vm_dir>/disks/`.
    pub vm_dir: PathBuf,
    /// The VM name (cloud-init `local-hostname`).
    pub vm_name: String,
    /// The VM uid (cloud-init `instance-id`).
    pub vm_uid: String,
    /// Base images for containerDisks.
    pub images: ImageStore,
    /// Disks unpacked from `oci:` / `oci-archive:` containerDisks.
    pub oci_cache: OciCache,
    /// Where standalone PVC images live.
    pub volumes_dir: PathBuf,
}
