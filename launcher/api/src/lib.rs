//! Everything a node agent needs to drive a launcher process: its configuration file
//! format ([`config`]), its exit codes ([`exit`]), and its gRPC control API (package
//! `ironvisor.launcher.v1`, service `Launcher`).
//!
//! - [`config`]: [`config::LaunchConfig`], its validation and the launcher's CLI flags.
//! - [`exit`]: [`exit::ExitStatus`], what a launcher's exit code means.
//! - [`cpulist`]: Linux CPU lists ("0-2,5"), as `--vcpu-affinity` takes them.
//! - [`control`]: the [`control::VmControl`] contract between the API and the VMM.
//! - [`server`]: serves any `Arc<dyn VmControl>` on a unix socket ([`server::serve`],
//!   or [`server::bind`] then [`server::BoundApi::serve`]).
//! - [`client`]: [`client::LauncherClient`], the node agent's side, returning the
//!   types of [`control`].
//! - [`convert`]: wire ↔ Rust conversions, including how a
//!   [`control::ControlError`] travels as a gRPC status.
//! - [`proto`]: the generated messages, server trait and client.

pub mod client;
pub mod config;
pub mod control;
pub mod convert;
pub mod cpulist;
pub mod exit;
pub mod server;

/// Code generated from `proto/launcher.proto` (package `ironvisor.launcher.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("ironvisor.launcher.v1");
}

pub use client::{ClientError, ClientOptions, LauncherClient, LauncherInfo};
pub use server::{bind, serve, BoundApi, ServeError};
