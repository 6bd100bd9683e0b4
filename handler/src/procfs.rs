//! Process identities from `/proc`: a pid plus its start time, so that a pid reused by
//! an unrelated process after ours died is not mistaken for ours.

use std::io;
use std::path::PathBuf;

use crate::records::ProcessIdentity;

/// Why `/proc/PID/stat` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read for another reason than the process being gone.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The stat file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not have the expected layout.
    #[error("{path} is malformed: {problem}")]
    Malformed {
        /// The stat file.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
}

/// What `/proc/PID/stat` says about a live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state ('R', 'S', 'Z', ...).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Parses the text of a `/proc/PID/stat` file. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last ')'.
pub fn parse_stat(text: &str) -> Result<ProcStat, &'static str> {
    let close = text.rfind(')').ok_or("no ')' after the command name")?;
    let mut fields = text[close + 1..].split_ascii_whitespace();
    // Field 3 is the state; the start time is field 22, i.e. 19 fields after the state.
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or("no state field")?;
    let start_time = fields
        .nth(18)
        .ok_or("fewer than 22 fields")?
        .parse::<u64>()
        .map_err(|_| "start time (field 22) is not a number")?;
    Ok(ProcStat { state, start_time })
}

/// Reads `/proc/PID/stat`; `None` when the process does not exist.
pub fn stat(pid: i32) -> Result<Option<ProcStat>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .map_err(|problem| ProcError::Malformed { path, problem }),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// The identity of the live process `pid`, or `None` when it does not exist (or is a
/// zombie).
pub fn identify(pid: i32) -> Result<Option<ProcessIdentity>, ProcError> {
    Ok(stat(pid)?
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| ProcessIdentity {
            pid,
            start_time: s.start_time,
        }))
}

/// Whether `identity` still names a live process: same pid, same start time, and not a
/// zombie.
pub fn is_alive(identity: &ProcessIdentity) -> Result<bool, ProcError> {
    Ok(identify(identity.pid)?.is_some_and(|now| now.start_time == identity.start_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let text = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("1 (x) S 1 2").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn identifies_this_process_and_not_a_missing_one() {
        let me = identify(std::process::id() as i32).unwrap().unwrap();
        assert!(is_alive(&me).unwrap());
        let reused = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!is_alive(&reused).unwrap());
        // pid_max is at most 2^22, so this pid never exists.
        assert!(identify(i32::MAX).unwrap().is_none());
    }
}
