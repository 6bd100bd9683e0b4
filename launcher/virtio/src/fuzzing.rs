//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not an API).
//!
//! Each entry point reads the fuzzer's bytes as what a hostile driver controls: a short
//! header picks queue sizes, ring addresses and ring indexes, and the rest is copied into
//! a small guest memory that holds the descriptor tables, the rings and the buffers. The
//! device code then runs synchronously on the calling thread, with the same per-pass
//! bounds it has in the launcher, so that one input cannot take long.

mod chain;
pub(crate) mod guest;
mod transport;

pub use self::chain::virtio_chain;
pub use self::transport::mmio_transport;
pub use crate::block::fuzzing::blk_requests;
pub use crate::console::fuzzing::console_queues;
pub use crate::net::fuzzing::{net_rx, net_tx};
