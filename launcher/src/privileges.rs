//! Dropping root once the VM is built (`--run-as UID[:GID]`, the jailer's job in
//! Firecracker): the launcher starts as root to open `/dev/kvm`, the taps, the disk images
//! and to bind its sockets, then becomes an unprivileged user with no capabilities and no
//! supplementary groups before any vCPU runs. Everything it needs afterwards is a file
//! descriptor it already holds.
//!
//! glibc applies `setresuid`/`setresgid` to every thread of the process, so the tokio
//! workers that exist by then change identity too. Switching every user id away from 0
//! clears the permitted, effective and ambient capability sets (no `SECBIT_KEEP_CAPS`),
//! and the seccomp filters installed right after set `no_new_privs`, so no later `execve`
//! could regain any.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::str::FromStr;

use nix::unistd::{Gid, Uid};

/// The user and group the launcher runs the guest as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id (never 0).
    pub uid: u32,
    /// Group id (never 0).
    pub gid: u32,
}

/// Why `--run-as` is malformed, or the launcher could not become that user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The value is not `UID` or `UID:GID` in numbers.
    #[error("--run-as {value:?}: expected UID or UID:GID (numbers)")]
    Syntax {
        /// The value as given.
        value: String,
    },
    /// Running as root would keep every privilege.
    #[error(
        "--run-as {value:?}: user and group must not be 0 (root); leave --run-as out to stay root"
    )]
    Root {
        /// The value as given.
        value: String,
    },
    /// A system call refused the change (the launcher is not root).
    #[error("cannot switch to {run_as}: {call} failed: {source} (the launcher must start as root to drop to another user)")]
    Switch {
        /// The target identity.
        run_as: RunAs,
        /// The call that failed.
        call: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The status file to check the switch with cannot be opened.
    #[error("cannot open /proc/self/status to check the switch of user: {source}")]
    Status {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// After the switch the process still holds a capability or another id.
    #[error("after switching to {run_as}: {what}")]
    Verify {
        /// The target identity.
        run_as: RunAs,
        /// What is still wrong.
        what: String,
    },
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)
    }
}

impl FromStr for RunAs {
    type Err = PrivilegeError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let syntax = || PrivilegeError::Syntax {
            value: value.to_string(),
        };
        let (uid, gid) = match value.split_once(':') {
            Some((uid, gid)) => (uid, gid),
            None => (value, value),
        };
        let uid: u32 = uid.parse().map_err(|_| syntax())?;
        let gid: u32 = gid.parse().map_err(|_| syntax())?;
        if uid == 0 || gid == 0 {
            return Err(PrivilegeError::Root {
                value: value.to_string(),
            });
        }
        Ok(Self { uid, gid })
    }
}

/// The launcher's `/proc/self/status`, opened while the launcher can still see it (a jailed
/// launcher has no `/proc`); read again after the switch.
#[derive(Debug)]
pub struct ProcessStatus(File);

impl ProcessStatus {
    /// Opens the calling process's status file.
    pub fn open() -> Result<Self, PrivilegeError> {
        File::open("/proc/self/status")
            .map(Self)
            .map_err(|source| PrivilegeError::Status { source })
    }

    /// The status as it is now (procfs generates it on every read from offset 0).
    fn read(&self) -> io::Result<String> {
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = self.0.read_at(&mut chunk, text.len() as u64)?;
            if read == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..read]);
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

/// Becomes `run_as` for good: no supplementary groups, every group and user id switched,
/// then checks in `status` that no capability is left.
#[tracing::instrument(level = "info", skip(status), fields(uid = run_as.uid, gid = run_as.gid))]
pub fn drop_privileges(run_as: RunAs, status: &ProcessStatus) -> Result<(), PrivilegeError> {
    let switch = |call: &'static str, result: nix::Result<()>| {
        result.map_err(|source| PrivilegeError::Switch {
            run_as,
            call,
            source,
        })
    };
    let gid = Gid::from_raw(run_as.gid);
    let uid = Uid::from_raw(run_as.uid);
    switch("setgroups", nix::unistd::setgroups(&[]))?;
    switch("setresgid", nix::unistd::setresgid(gid, gid, gid))?;
    switch("setresuid", nix::unistd::setresuid(uid, uid, uid))?;
    verify(run_as, status)?;
    tracing::info!("running as an unprivileged user, no capabilities");
    Ok(())
}

/// Checks the process status: every id is the target's and the capability sets are empty.
fn verify(run_as: RunAs, status: &ProcessStatus) -> Result<(), PrivilegeError> {
    let fail = |what: String| PrivilegeError::Verify { run_as, what };
    let status = status
        .read()
        .map_err(|err: io::Error| fail(format!("cannot read /proc/self/status: {err}")))?;
    let problems = status_problems(&status, run_as);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(problems.join("; ")))
    }
}

/// What in a `/proc/PID/status` text does not match a process fully switched to `run_as`.
fn status_problems(status: &str, run_as: RunAs) -> Vec<String> {
    let mut problems = Vec::new();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    for (name, id) in [("Uid", run_as.uid), ("Gid", run_as.gid)] {
        let expected = [id; 4].map(|id| id.to_string()).join("\t");
        match field(name) {
            Some(found) if found == expected => {}
            found => problems.push(format!("{name} is {found:?}, expected {id} four times")),
        }
    }
    match field("Groups") {
        Some("") => {}
        found => problems.push(format!("supplementary groups {found:?} are left")),
    }
    for name in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        match field(name).map(|hex| u64::from_str_radix(hex, 16)) {
            Some(Ok(0)) => {}
            found => problems.push(format!("{name} is {found:?}, expected no capability")),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_parses_uid_and_optional_gid() {
        assert_eq!(
            "1000:2000".parse::<RunAs>().unwrap(),
            RunAs {
                uid: 1000,
                gid: 2000
            }
        );
        assert_eq!(
            "65534".parse::<RunAs>().unwrap(),
            RunAs {
                uid: 65534,
                gid: 65534
            }
        );
        for bad in ["", "nobody", "1:x", ":1", "1:2:3", "-1"] {
            let err = bad.parse::<RunAs>().unwrap_err();
            assert!(matches!(err, PrivilegeError::Syntax { .. }), "{bad}: {err}");
        }
        for root in ["0", "0:100", "100:0"] {
            let err = root.parse::<RunAs>().unwrap_err();
            assert!(err.to_string().contains("must not be 0"), "{root}: {err}");
        }
    }

    const SWITCHED: &str = "Name:\tironvisor-launc\nUid:\t4242\t4242\t4242\t4242\n\
        Gid:\t4243\t4243\t4243\t4243\nGroups:\t\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\n";

    #[test]
    fn the_status_file_reads_the_current_status_each_time() {
        let status = ProcessStatus::open().unwrap();
        let first = status.read().unwrap();
        assert!(first.contains("\nUid:"), "{first}");
        assert!(first.contains("\nCapEff:"), "{first}");
        let second = status.read().unwrap();
        assert!(second.starts_with("Name:"), "{second}");
    }

    #[test]
    fn a_fully_switched_status_has_no_problem() {
        let run_as = RunAs {
            uid: 4242,
            gid: 4243,
        };
        assert_eq!(status_problems(SWITCHED, run_as), Vec::<String>::new());
    }

    #[test]
    fn a_saved_root_id_groups_or_a_capability_are_problems() {
        let run_as = RunAs {
            uid: 4242,
            gid: 4243,
        };
        let status = SWITCHED
            .replace("Uid:\t4242\t4242\t4242\t4242", "Uid:\t4242\t4242\t0\t4242")
            .replace("Groups:\t", "Groups:\t0 27")
            .replace("CapEff:\t0000000000000000", "CapEff:\t0000000000001000");
        let problems = status_problems(&status, run_as);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("Uid"), "{problems:?}");
        assert!(problems[1].contains("0 27"), "{problems:?}");
        assert!(problems[2].starts_with("CapEff"), "{problems:?}");
    }
}
