//! The termination message: one line of JSON the `compute` container leaves in
//! `/dev/termination-log`, which Kubernetes copies into the container's terminated state
//! and the controller reads to set the instance's phase and reason.
//!
//! ```json
//! {"exitCode":5,"reason":"Stopped","message":"VM default/small: stopped gracefully: the guest shut down after SIGTERM"}
//! ```
//!
//! | how it ended | `exitCode` | `reason` |
//! |---|---|---|
//! | guest powered off | 0 | `GuestPoweredOff` |
//! | launcher error | 1 | `LauncherError` (message: the launcher's last error line) |
//! | guest rebooted | 3 | `GuestRebooted` |
//! | guest crashed | 4 | `GuestCrashed` |
//! | graceful stop completed | 5 | `Stopped` |
//! | hard stop (forced, or the grace period expired) | 6 | `ForcedStop` |
//! | a forbidden system call (seccomp) | 7 | `SeccompViolation` |
//! | launcher killed by signal N | 128+N | `LauncherKilled` |
//! | failed before the launcher ran | 1 | `BadSpec`, `HardwareIsolationUnavailable`, ... |
//!
//! Kubernetes keeps at most 4096 bytes of it; the message is cut so the whole line fits
//! ([`MAX_BYTES`]).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ironvisor_launcher_api::exit::ExitStatus;
use serde::Serialize;

use crate::records::ExitOutcome;

/// Where Kubernetes reads the termination message by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Longest termination message Kubernetes keeps (bytes).
pub const MAX_BYTES: usize = 4096;
/// Reason of a launcher killed by a signal.
pub const LAUNCHER_KILLED: &str = "LauncherKilled";
/// Reason of a launcher that failed, or of an exit nobody can explain.
pub const LAUNCHER_ERROR: &str = "LauncherError";

/// Why the termination message could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TerminationError {
    /// The file could not be opened or written.
    #[error("cannot write the termination message to {path}: {source}")]
    Write {
        /// The termination log.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the controller learns about how the container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    /// The container's exit code.
    pub exit_code: i32,
    /// CamelCase reason (see the module documentation).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
}

impl TerminationMessage {
    /// A failure before the launcher ran: exit code 1 with `reason`.
    pub fn failure(reason: &str, message: impl Into<String>) -> Self {
        Self {
            exit_code: 1,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// How the launcher of VM `vm` ended; `error_line` is its last error output, used
    /// for launcher errors.
    pub fn for_launcher(vm: &str, outcome: ExitOutcome, error_line: Option<&str>) -> Self {
        let (exit_code, reason, what) = match outcome {
            ExitOutcome::Code(code) => match ExitStatus::from_code(code) {
                Some(status) => {
                    let (reason, what) = describe(status);
                    (code, reason.to_string(), what.to_string())
                }
                None => (
                    code,
                    LAUNCHER_ERROR.to_string(),
                    format!("the launcher exited with unexpected code {code}"),
                ),
            },
            ExitOutcome::Signal(signal) => (
                128 + signal,
                LAUNCHER_KILLED.to_string(),
                format!("the launcher was killed by {}", signal_name(signal)),
            ),
            ExitOutcome::Vanished | ExitOutcome::NotStarted => (
                1,
                LAUNCHER_ERROR.to_string(),
                "the launcher ended and nobody saw how".to_string(),
            ),
        };
        let mut message = format!("VM {vm}: {what}");
        if reason == LAUNCHER_ERROR {
            if let Some(line) = error_line.map(str::trim).filter(|l| !l.is_empty()) {
                message.push_str(": ");
                message.push_str(line);
            }
        }
        Self {
            exit_code,
            reason,
            message,
        }
    }

    /// The one-line JSON form, at most [`MAX_BYTES`] long (the message is cut, at a
    /// character boundary, with `...` at the end).
    pub fn render(&self) -> String {
        let full = self.line_with(&self.message);
        if full.len() <= MAX_BYTES {
            return full;
        }
        // Escaping makes the JSON longer than the text by a varying amount: find the
        // longest prefix that fits by bisection over the character boundaries.
        let text = &self.message;
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let (mut fits, mut too_long) = (0, cuts.len());
        while too_long - fits > 1 {
            let middle = (fits + too_long) / 2;
            if self
                .line_with(&format!("{}...", &text[..cuts[middle]]))
                .len()
                <= MAX_BYTES
            {
                fits = middle;
            } else {
                too_long = middle;
            }
        }
        let line = self.line_with(&format!(
            "{}...",
            &text[..cuts.get(fits).copied().unwrap_or(0)]
        ));
        if line.len() <= MAX_BYTES {
            line
        } else {
            self.line_with("")
        }
    }

    fn line_with(&self, message: &str) -> String {
        let message = Self {
            message: message.to_string(),
            ..self.clone()
        };
        serde_json::to_string(&message).unwrap_or_else(|_| {
            format!(
                "{{\"exitCode\":{},\"reason\":\"{LAUNCHER_ERROR}\"}}",
                self.exit_code
            )
        })
    }

    /// Writes [`Self::render`] to `path` (which must exist: Kubernetes creates it; a
    /// missing file is not created).
    pub fn write(&self, path: &Path) -> Result<(), TerminationError> {
        let error = |source| TerminationError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(error)?;
        file.write_all(self.render().as_bytes()).map_err(error)
    }
}

/// Reason and description of a launcher exit status.
fn describe(status: ExitStatus) -> (&'static str, &'static str) {
    match status {
        ExitStatus::GuestPoweroff => ("GuestPoweredOff", "the guest powered off"),
        ExitStatus::LauncherError => (LAUNCHER_ERROR, "the launcher failed"),
        ExitStatus::GuestReboot => ("GuestRebooted", "the guest rebooted"),
        ExitStatus::GuestCrash => ("GuestCrashed", "the guest crashed"),
        ExitStatus::GracefulStop => ("Stopped", "stopped gracefully: the guest shut down"),
        ExitStatus::HardStop => (
            "ForcedStop",
            "stopped hard: forced, or the guest did not shut down within the grace period",
        ),
        ExitStatus::SeccompViolation => (
            "SeccompViolation",
            "a launcher thread made a system call its seccomp filter forbids",
        ),
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_exit_codes_map_to_reasons() {
        let cases = [
            (0, 0, "GuestPoweredOff"),
            (1, 1, "LauncherError"),
            (3, 3, "GuestRebooted"),
            (4, 4, "GuestCrashed"),
            (5, 5, "Stopped"),
            (6, 6, "ForcedStop"),
            (7, 7, "SeccompViolation"),
            (2, 2, "LauncherError"),
        ];
        for (code, exit_code, reason) in cases {
            let message =
                TerminationMessage::for_launcher("default/vm", ExitOutcome::Code(code), None);
            assert_eq!(
                (message.exit_code, message.reason.as_str()),
                (exit_code, reason)
            );
            assert!(
                message.message.starts_with("VM default/vm: "),
                "{message:?}"
            );
        }
        let killed = TerminationMessage::for_launcher("ns/vm", ExitOutcome::Signal(9), None);
        assert_eq!(killed.exit_code, 137);
        assert_eq!(killed.reason, "LauncherKilled");
        assert!(killed.message.contains("SIGKILL"), "{killed:?}");
    }

    #[test]
    fn launcher_errors_carry_the_error_line_and_others_do_not() {
        let line = Some("ironvisor-launcher: error: kernel /k: not found");
        let failed = TerminationMessage::for_launcher("ns/vm", ExitOutcome::Code(1), line);
        assert_eq!(
            failed.message,
            "VM ns/vm: the launcher failed: ironvisor-launcher: error: kernel /k: not found"
        );
        let crashed = TerminationMessage::for_launcher("ns/vm", ExitOutcome::Code(4), line);
        assert_eq!(crashed.message, "VM ns/vm: the guest crashed");
    }

    #[test]
    fn render_is_one_json_line_in_the_documented_shape() {
        let message = TerminationMessage::failure("BadSpec", "vmi.json: \"quoted\"\nnext");
        let line = message.render();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["exitCode"], 1);
        assert_eq!(value["reason"], "BadSpec");
        assert_eq!(value["message"], "vmi.json: \"quoted\"\nnext");
    }

    #[test]
    fn render_stays_within_the_kubernetes_limit() {
        for filler in ["a", "\"", "é", "\u{1}", "€"] {
            let message = TerminationMessage::failure("BadSpec", filler.repeat(10_000));
            let line = message.render();
            assert!(line.len() <= MAX_BYTES, "{filler:?}: {} bytes", line.len());
            assert!(line.len() > MAX_BYTES - 16, "{filler:?}: cut too much");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(value["message"].as_str().unwrap().ends_with("..."));
            assert_eq!(value["reason"], "BadSpec");
        }
        let short = TerminationMessage::failure("BadSpec", "short");
        assert!(short.render().ends_with("\"message\":\"short\"}"));
    }

    #[test]
    fn write_replaces_an_existing_file_and_never_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let message = TerminationMessage::failure("BadSpec", "x");
        assert!(message.write(&path).is_err());
        assert!(!path.exists());
        std::fs::write(&path, "a much longer previous content").unwrap();
        message.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), message.render());
    }
}
