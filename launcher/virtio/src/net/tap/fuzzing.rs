//! A tap stand-in for fuzz harnesses: one end of a datagram socket pair, which like a tap
//! reads and writes one whole frame per call.

use std::fs::File;
use std::os::fd::OwnedFd;

use super::Tap;

impl Tap {
    /// A tap whose frames go to and come from the peer of `socket`.
    pub(crate) fn from_socket(socket: OwnedFd) -> Self {
        Self {
            file: File::from(socket),
            name: "fuzz0".to_string(),
        }
    }
}
