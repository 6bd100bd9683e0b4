//! gRPC control API of the launcher (package `ironvisor.launcher.v1`, service `Launcher`).
//!
//! - [`control`]: the [`control::VmControl`] contract between the API and the VMM.
//! - [`server`]: serves any `Arc<dyn VmControl>` on a unix socket ([`server::serve`],
//!   or [`server::bind`] then [`server::BoundApi::serve`]).
//! - [`client`]: [`client::LauncherClient`], the node agent's side, returning the
//!   types of [`control`].
//! - [`convert`]: wire ↔ Rust conversions, including how a
//!   [`control::ControlError`] travels as a gRPC status.
//! - [`proto`]: the generated messages, server trait and client.

pub mod client;
pub mod control;
pub mod convert;
pub mod server;

/// Code generated from `proto/launcher.proto` (package `ironvisor.launcher.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("ironvisor.launcher.v1");
}

pub use client::{ClientError, ClientOptions, LauncherClient, LauncherInfo};
pub use server::{bind, serve, BoundApi, ServeError};
