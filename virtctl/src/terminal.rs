//! Raw terminal mode for the interactive console, restored by a guard.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Why the terminal mode could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// Reading the terminal's current settings failed.
    #[error("cannot read the settings of the terminal on standard input: {0}")]
    Get(#[source] nix::Error),
    /// Switching the terminal to raw mode failed.
    #[error("cannot switch the terminal on standard input to raw mode: {0}")]
    Set(#[source] nix::Error),
}

/// True when standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Keeps standard input's terminal in raw mode (no echo, no line editing, no signals
/// from Ctrl+C, no output post-processing) while alive; dropping it restores the
/// settings it found, on every exit path that unwinds or returns.
#[derive(Debug)]
pub struct RawModeGuard {
    original: Termios,
}

impl RawModeGuard {
    /// Switches the terminal on standard input to raw mode.
    pub fn enable() -> Result<Self, TerminalError> {
        let stdin = std::io::stdin();
        Self::enable_on(stdin.as_fd())
    }

    /// Switches the terminal `fd` to raw mode; the guard restores standard input, so
    /// `fd` must be (a duplicate of) it.
    fn enable_on(fd: BorrowedFd<'_>) -> Result<Self, TerminalError> {
        let original = termios::tcgetattr(fd).map_err(TerminalError::Get)?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(TerminalError::Set)?;
        Ok(Self { original })
    }

    /// The settings that dropping the guard puts back.
    pub fn original(&self) -> &Termios {
        &self.original
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // TCSADRAIN: let pending console output reach the screen before the mode flips.
        if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &self.original) {
            tracing::warn!(error = %e, "cannot restore the terminal settings of standard input");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_mode_fails_cleanly_on_a_non_terminal() {
        let file = tempfile::tempfile().unwrap();
        let e = RawModeGuard::enable_on(file.as_fd()).unwrap_err();
        assert!(matches!(e, TerminalError::Get(_)), "{e:?}");
        assert!(e.to_string().contains("standard input"));
    }
}
