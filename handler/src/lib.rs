//! Ironvisor node agent, standalone mode (`ironvisor-handler serve`).
//!
//! One daemon per machine keeps `VirtualMachine`s in an embedded database, runs one
//! launcher process per running VM instance and serves the local gRPC API that `virtctl`
//! talks to. Modules, one job each:
//!
//! - [`store`]: durable state (redb), one transaction per change; [`records`]: what it holds.
//! - [`service`]: the `ironvisor.handler.v1.Handler` gRPC service on a root-only socket.
//! - [`runtime`]: the reconcile loop: run strategies, starting and stopping instances,
//!   VM/VMI status and events; [`strategy`] (the decision) and [`status`] are its pure parts.
//! - [`launcher_proc`]: one launcher per instance, through the [`monitor`] subcommand, in
//!   the VM's [`cgroup`] and network namespace; re-adoption after a daemon restart;
//!   [`jailer`]: the jail the monitor starts a KVM launcher in, as its own user.
//! - [`backend`]: hardware KVM or software emulation, and hardware-isolation refusal.
//! - [`cpus`]: dedicated host CPUs for `dedicatedCpuPlacement` VMs.
//! - [`translate`]: VM spec → the launcher's `LaunchConfig`, kernel images.
//! - [`daemon`]: wiring and the `serve` command; [`config`]: its settings.
//! - [`volumes`]: a VM's disks as volume requests, in guest order (both modes).
//! - [`pod`]: cluster mode's `virt-launcher` (the launcher pod's `compute` container)
//!   and its readiness probe.

pub mod backend;
pub mod cgroup;
pub mod config;
pub mod cpus;
pub mod daemon;
pub mod files;
pub mod jailer;
pub mod launcher_proc;
pub mod log_rotation;
pub mod monitor;
pub mod pod;
pub mod procfs;
pub mod records;
pub mod runtime;
pub mod service;
pub mod sizing;
pub mod status;
pub mod store;
pub mod strategy;
pub mod translate;
pub mod vm_view;
pub mod volumes;
