//! `ironvisor-controller`: Ironvisor's cluster controller.
//!
//! - [`vm_controller`]: `VirtualMachine` → `VirtualMachineInstance` per run strategy
//!   ([`vm_strategy`]), VM status ([`vm_status`]), sized by its instance type and
//!   preference ([`vm_sizing`]).
//! - [`vmi_controller`]: `VirtualMachineInstance` → one launcher Pod ([`launcher_pod`]),
//!   instance status from the pod ([`vmi_status`]); the pod's side of configMap, secret,
//!   serviceAccount and downwardAPI volumes ([`config_volumes`]).
//! - [`context`]: what reconciles share; [`own_writes`]: this controller's writes its watch
//!   caches do not show yet (so an echo of its own write does not repeat it);
//!   [`event_queue`]: Events published off the reconcile path.
//! - [`leader`]: a Lease so one of several replicas reconciles.
//! - [`http`] + [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`run`]: wiring it together for the binary.
#![deny(missing_docs)]

pub mod claims;
pub mod config_volumes;
pub mod context;
pub mod event_queue;
pub mod host_disks;
pub mod http;
pub mod launcher_pod;
pub mod leader;
pub mod metrics;
pub mod own_writes;
pub mod pod_security;
pub mod run;
pub mod vm_controller;
pub mod vm_sizing;
pub mod vm_status;
pub mod vm_strategy;
pub mod vmi_controller;
pub mod vmi_status;
