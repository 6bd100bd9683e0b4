//! The local API of the Ironvisor node daemon (`ironvisor-handler serve`), package
//! `ironvisor.handler.v1`, service `Handler`, spoken over a root-only unix socket.
//!
//! - [`proto`]: the generated messages, the server trait
//!   ([`proto::handler_server::Handler`], [`proto::handler_server::HandlerServer`]) and
//!   the raw client.
//! - [`client`]: [`HandlerClient`], the unix-socket client used by `virtctl`, whose errors
//!   name the socket and say what to do when the daemon is not running.
//!
//! Objects (VirtualMachine, VirtualMachineInstance of `ironvisor-crds`) travel as JSON
//! strings inside [`proto::VmView`].

#![deny(missing_docs)]

pub mod client;

/// Code generated from `proto/handler.proto` (package `ironvisor.handler.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("ironvisor.handler.v1");
}

pub use client::{
    ClientError, ClientOptions, ConsoleStream, ForwardedBytes, HandlerClient, LogStream,
    PortForwardStream, DEFAULT_SOCKET, SOCKET_ENV,
};

/// The namespace used when a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "default";

impl proto::ObjectRef {
    /// A reference to the object `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The namespace, with the empty string read as [`DEFAULT_NAMESPACE`].
    pub fn namespace_or_default(&self) -> &str {
        if self.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &self.namespace
        }
    }
}

impl std::fmt::Display for proto::ObjectRef {
    /// `namespace/name`, the way error messages name a VM.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace_or_default(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::proto::ObjectRef;

    #[test]
    fn object_ref_displays_namespace_and_name() {
        assert_eq!(ObjectRef::new("prod", "web").to_string(), "prod/web");
        assert_eq!(ObjectRef::new("", "web").to_string(), "default/web");
        assert_eq!(ObjectRef::new("", "web").namespace_or_default(), "default");
    }
}
