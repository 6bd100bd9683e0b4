//! gRPC over unix sockets, shared by Ironvisor's local APIs (the node daemon's
//! `ironvisor.handler.v1` and the launcher's `ironvisor.launcher.v1`).
//!
//! - [`channel`] (feature `channel`, on by default): [`channel::connect`] opens a tonic
//!   [`Channel`](tonic::transport::Channel) to a server on a unix socket, within a
//!   deadline.
//! - [`cause`]: walks an error's cause chain for the `io::Error` behind a failure and
//!   for its innermost text, which is what a client reports.
//! - [`build`] (feature `build`, off by default): [`build::compile_protos`], the
//!   `protox` + `tonic-prost-build` step of a build script. Depend on it as
//!   `default-features = false, features = ["build"]` under `[build-dependencies]`.

#![deny(missing_docs)]

#[cfg(feature = "build")]
pub mod build;
pub mod cause;
#[cfg(feature = "channel")]
pub mod channel;
