//! What a launcher's exit code means. The node agent reads it to decide, with the VM's
//! run strategy, whether to restart the VM.

use std::fmt;

/// How the launcher process ends; the value is its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest powered itself off.
    GuestPoweroff = 0,
    /// The launcher could not build or run the VM (message on stderr).
    LauncherError = 1,
    /// The guest rebooted; a microVM does not reset in place, the node agent restarts it.
    GuestReboot = 3,
    /// The guest crashed (triple fault or a vCPU failure).
    GuestCrash = 4,
    /// A graceful shutdown (SIGTERM or API) completed: the guest went down by itself.
    GracefulStop = 5,
    /// The VM was stopped hard: a forced shutdown, or a graceful one that timed out.
    HardStop = 6,
    /// A launcher thread made a system call its seccomp filter forbids (the launcher logs
    /// which one and ends at once).
    SeccompViolation = 7,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Reads an exit code back; `None` for codes a launcher never uses.
    pub fn from_code(code: i32) -> Option<Self> {
        [
            ExitStatus::GuestPoweroff,
            ExitStatus::LauncherError,
            ExitStatus::GuestReboot,
            ExitStatus::GuestCrash,
            ExitStatus::GracefulStop,
            ExitStatus::HardStop,
            ExitStatus::SeccompViolation,
        ]
        .into_iter()
        .find(|status| status.code() == code)
    }

    /// Whether the VM ended by failing (what `RerunOnFailure` restarts on).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ExitStatus::LauncherError | ExitStatus::GuestCrash | ExitStatus::SeccompViolation
        )
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ExitStatus::GuestPoweroff => "guest powered off",
            ExitStatus::LauncherError => "launcher error",
            ExitStatus::GuestReboot => "guest rebooted",
            ExitStatus::GuestCrash => "guest crashed",
            ExitStatus::GracefulStop => "stopped gracefully",
            ExitStatus::HardStop => "stopped hard",
            ExitStatus::SeccompViolation => "killed by its seccomp filter",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for code in [0, 1, 3, 4, 5, 6, 7] {
            assert_eq!(
                ExitStatus::from_code(code).map(ExitStatus::code),
                Some(code)
            );
        }
        assert_eq!(ExitStatus::from_code(2), None);
        assert_eq!(ExitStatus::from_code(137), None);
        assert!(ExitStatus::GuestCrash.is_failure());
        assert!(!ExitStatus::GuestPoweroff.is_failure());
        assert!(ExitStatus::SeccompViolation.is_failure());
    }
}
