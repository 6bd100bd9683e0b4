//! The Ironvisor API: group `ironvisor.io`, version `v1alpha1`.
//!
//! Two namespaced kinds, shaped like KubeVirt's `kubevirt.io/v1` so that a KubeVirt
//! manifest works after changing only its `apiVersion` (for the fields Ironvisor
//! implements; any other field is refused by name, never silently ignored):
//!
//! | kind | short names | spec |
//! |---|---|---|
//! | [`VirtualMachine`](v1alpha1::VirtualMachine) | `vm`, `vms` | [`VirtualMachineSpec`](v1alpha1::VirtualMachineSpec): `runStrategy`, deprecated `running`, `template` |
//! | [`VirtualMachineInstance`](v1alpha1::VirtualMachineInstance) | `vmi`, `vmis` | [`VirtualMachineInstanceSpec`](v1alpha1::VirtualMachineInstanceSpec): `domain`, `networks`, `volumes`, scheduling |
//!
//! The pieces, in the order a manifest goes through them:
//!
//! 1. [`decode::parse_manifests`]: strict multi-document YAML decoding, errors with
//!    `file:line:column` and field paths.
//! 2. [`defaults::apply`] / [`defaults::apply_vmi`]: KubeVirt-like defaults.
//! 3. [`validate::vm`] / [`validate::vmi`]: every problem at once, with field paths.
//! 4. [`crd`]: the CustomResourceDefinitions (binary `crdgen`, checked in under
//!    `crds/generated/`).
//!
//! [`quantity`] parses Kubernetes quantities ("512Mi", "1.5Gi", "100m") exactly.
//!
//! # Hardware isolation (Ironvisor extension)
//!
//! A machine demands hardware isolation with a typed field of the domain:
//!
//! ```yaml
//! spec:
//!   template:
//!     spec:
//!       domain:
//!         features:
//!           hardwareIsolation: Required   # or Preferred (the default)
//! ```
//!
//! * `Required`: the instance runs only under hardware-assisted virtualization (KVM on a
//!   CPU with VMX/SVM). It is never emulated in software; if no node can run it that way
//!   it stays unschedulable (`ErrorUnschedulable`). Use it when the guest is untrusted and
//!   the isolation boundary matters, or when emulation would be too slow to be useful.
//! * `Preferred`: hardware virtualization when the node has it, software emulation
//!   (KubeVirt's `useEmulation`) otherwise. The instance status field `isolation` tells
//!   which one is used.
//!
//! A field was chosen over an annotation so that the CRD schema and the decoder check
//! the value. The annotation `ironvisor.io/hardware-isolation` is therefore *not* read;
//! validation reports it when present, so that nobody believes it took effect.
#![deny(missing_docs)]

pub mod clock;
pub mod cloud_config;
pub mod cluster;
pub mod compat;
pub mod crd;
pub mod decode;
pub mod defaults;
pub mod instancetype;
pub mod locate;
pub mod node_link;
pub mod pod_claims;
pub mod quantity;
pub mod unknown_fields;
pub mod v1alpha1;
pub mod validate;

pub use decode::{parse_manifests, DecodeError, Manifest};
pub use validate::{ValidationError, ValidationErrors};
