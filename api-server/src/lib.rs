//! `ironvisor-apiserver`: what kube-apiserver calls on Ironvisor's behalf.
//!
//! - [`admission`]: mutating and validating webhooks for `VirtualMachine` and
//!   `VirtualMachineInstance`, running `ironvisor-crds`' own decoding, defaults and
//!   validation (the standalone daemon runs the same).
//! - [`lifecycle`]: the aggregated subresources `start`, `stop`, `restart` of
//!   `subresources.ironvisor.io/v1alpha1`, authenticated by the front proxy
//!   ([`identity`]) and authorized by SubjectAccessReview ([`authz`]).
//! - [`node_link`]: the mutual-TLS link to the node agent that runs an instance (console,
//!   pause).
//! - [`certs`], [`cert_store`], [`ca_bundle`]: the api-server's own CA and serving
//!   certificate, kept in a Secret, renewed before expiry and injected into the webhook
//!   configurations and the APIService.
//! - [`routes`], [`server`], [`reply`]: HTTPS, URL space, `Status` answers.
//! - [`run`]: wiring it together for the binary.
#![deny(missing_docs)]

pub mod admission;
pub mod authz;
pub mod ca_bundle;
pub mod cert_store;
pub mod certs;
pub mod console;
pub mod identity;
pub mod lifecycle;
pub mod node_link;
pub mod reply;
pub mod routes;
pub mod run;
pub mod server;
