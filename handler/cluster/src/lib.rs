//! The node agent (`ironvisor-handler cluster`) in cluster mode, one per node as a
//! DaemonSet:
//!
//! - [`capability`]: labels the node with what it can run (hardware KVM or emulation
//!   only), so instances that require hardware isolation are only scheduled where they
//!   can run;
//! - [`instances`]: follows the instances placed on this node (label
//!   `ironvisor.io/node-name`), asks each one's launcher, through the API socket in the
//!   launcher pod's `sockets` volume, how the guest is isolated, reports it in the
//!   instance status and warns with an Event when it is software emulation;
//! - [`pod_network`]: wires each instance into its launcher pod's network namespace
//!   (masquerade or bridge binding, DHCP) and reports the interface in the status;
//! - [`console`]: the serial console of an instance on this node, through the agent;
//! - [`node_link`]: the mutual-TLS server through which the api-server reaches the
//!   instances on this node (console, pause, unpause);
//! - [`pod_volumes`]: where a pod's volumes are on the node.
#![deny(missing_docs)]

pub mod capability;
pub mod console;
pub mod instances;
pub mod node_link;
pub mod pod_network;
pub mod pod_volumes;
pub mod port_forward;
