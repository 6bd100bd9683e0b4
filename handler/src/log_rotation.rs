//! Size-capped launcher logs.
//!
//! The launcher rate-limits the lines a guest can trigger, but a long-lived VM (or one
//! that finds a line nobody limited) must still not fill the node's disk. The monitor of
//! each instance looks at the log every [`CHECK_INTERVAL`]; past [`MAX_LOG_BYTES`] it keeps
//! one previous generation (`launcher.log.1`) and starts the log afresh. The log is
//! copied, then truncated rather than renamed: the launcher and the monitor write it
//! through descriptors opened with `O_APPEND`, so they go on at the new end of the same
//! file (lines written between the copy and the truncation are lost, as with logrotate's
//! `copytruncate`). At most twice the cap is kept per VM.
//!
//! In cluster mode the launcher pod logs to the container runtime, whose logs the kubelet
//! rotates (`containerLogMaxSize`); this module is the standalone node's equivalent.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The size past which a launcher log is rotated.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
/// How often the monitor looks at the log's size.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why a log could not be rotated (the monitor logs it and tries again later).
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The log's size could not be read.
    #[error("cannot read the size of log {path}: {source}")]
    Stat {
        /// The log.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The previous generation could not be written.
    #[error("cannot copy log {from} to {to}: {source}")]
    Copy {
        /// The log.
        from: PathBuf,
        /// Its previous generation.
        to: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The log could not be emptied.
    #[error("cannot truncate log {path}: {source}")]
    Truncate {
        /// The log.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// The previous generation of `log`: `<log>.1`.
pub fn previous_generation(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `log` when it is larger than `max_bytes`; returns whether it did.
pub fn rotate_if_larger(log: &Path, max_bytes: u64) -> Result<bool, RotationError> {
    let size = match std::fs::metadata(log) {
        Ok(meta) => meta.len(),
        // Nothing to rotate: the agent removed the VM's directory meanwhile.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(RotationError::Stat {
                path: log.to_path_buf(),
                source,
            })
        }
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let previous = previous_generation(log);
    std::fs::copy(log, &previous).map_err(|source| RotationError::Copy {
        from: log.to_path_buf(),
        to: previous.clone(),
        source,
    })?;
    OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|file| file.set_len(0))
        .map_err(|source| RotationError::Truncate {
            path: log.to_path_buf(),
            source,
        })?;
    Ok(true)
}

/// Delivers `SIGALRM` to this process every `interval` (the monitor waits for it with
/// `sigwait` next to the launcher's exit).
pub fn start_check_timer(interval: Duration) -> io::Result<()> {
    let period = libc::timeval {
        tv_sec: libc::time_t::try_from(interval.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(interval.subsec_micros() as i32),
    };
    let timer = libc::itimerval {
        it_interval: period,
        it_value: period,
    };
    // SAFETY: `timer` is a valid itimerval; the old value is not asked for (null).
    let ret = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_past_the_cap_keeps_one_generation_and_writers_go_on_at_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("launcher.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        writer.write_all(&[b'a'; 100]).expect("write");
        assert!(!rotate_if_larger(&log, 100).expect("rotate"));

        writer.write_all(b"b").expect("write");
        assert!(rotate_if_larger(&log, 100).expect("rotate"));
        let previous = std::fs::read(previous_generation(&log)).expect("previous");
        assert_eq!(previous.len(), 101);
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 0);

        // The writer's descriptor appends at the new end, without a hole.
        writer.write_all(b"next line\n").expect("write");
        assert_eq!(std::fs::read(&log).expect("log"), b"next line\n");

        // A second rotation replaces the previous generation.
        writer.write_all(&[b'c'; 200]).expect("write");
        assert!(rotate_if_larger(&log, 100).expect("rotate"));
        assert_eq!(
            std::fs::metadata(previous_generation(&log))
                .expect("previous")
                .len(),
            210
        );
    }

    #[test]
    fn a_missing_log_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!rotate_if_larger(&dir.path().join("gone.log"), 1).expect("rotate"));
    }
}
