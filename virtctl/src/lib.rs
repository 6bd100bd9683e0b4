//! `virtctl`, the command-line client of the Ironvisor node daemon, as a library: the
//! binary (`src/main.rs`) only parses arguments and calls [`run`].
//!
//! - [`cli`]: the arguments.
//! - [`commands`]: one function per subcommand, over an
//!   [`ironvisor_handler_api::HandlerClient`].
//! - [`format`]: ages, tables, JSON / YAML output.
//! - [`describe`]: the `describe` text.
//! - [`console`] and [`terminal`]: the interactive serial console.
//! - [`cluster`]: cluster mode, through kube-apiserver and Ironvisor's subresource API.

#![deny(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod cluster_commands;
pub mod cluster_console;
pub mod cluster_forward;
pub mod commands;
pub mod console;
pub mod describe;
pub mod format;
pub mod node_forward;
pub mod port_forward;
pub mod ssh;
pub mod terminal;

pub use commands::{run, CommandError};
