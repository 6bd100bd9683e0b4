//! gRPC control API of the launcher.

pub mod control;
