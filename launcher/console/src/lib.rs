//! Serial console fan-out for the Ironvisor launcher.
//!
//! The launcher's 8250 UART writes guest console bytes into a [`ConsoleOutput`] from its
//! vCPU thread. A [`ConsoleHub`] keeps the last bytes in a ring (the boot log so far) and
//! copies live output to every attached client: unix socket clients
//! ([`ConsoleHub::serve_unix`], what `virtctl console` attaches to) and, in foreground
//! mode, the launcher's own stdout ([`ConsoleHub::spawn_stdio`]). Bytes typed by clients
//! go to the [`ConsoleInput`] the VMM registers with [`ConsoleHub::set_input`].
//!
//! Writing guest output never waits for a client: clients that fall too far behind are
//! disconnected (socket) or lose bytes (stdio); see [`hub`] for the policy.
//!
//! ```
//! use std::io::Write;
//!
//! let hub = ironvisor_console::ConsoleHub::new(64 * 1024);
//! let mut uart_sink = hub.output();
//! uart_sink.write_all(b"[    0.000000] Linux version 6.1.0\r\n").unwrap();
//! assert!(hub.snapshot().starts_with(b"[    0.000000] Linux"));
//! ```

#![deny(missing_docs)]

pub mod hub;
mod ring;
pub mod socket;
pub mod stdio;

pub use hub::{ConsoleHub, ConsoleInput, ConsoleOutput, DEFAULT_CLIENT_QUEUE_BYTES};
pub use socket::{probe_path, ConsoleError, ConsoleListener, PathState};
pub use stdio::{RawTerminal, StdioError, StdioGuard, ESCAPE_BYTE};
