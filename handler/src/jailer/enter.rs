//! Entering a built jail: runs in the launcher's process between `fork` and `exec` (the
//! monitor is single-threaded, so the child may allocate).
//!
//! A mount namespace of the child's own (a copy of the monitor's, which holds the jail)
//! whose root becomes the jail's tmpfs, the host's tree detached; then every user and group
//! id switched to the launcher's, no supplementary group, and `no_new_privs`. Switching
//! every user id away from 0 clears all capability sets; the `exec` that follows runs the
//! launcher as that user from its first instruction.

use std::io;
use std::path::Path;

use ironvisor_launcher::jail::{make_current_directory_the_root, JailError};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

/// Why the child could not enter its jail: the step and the error number.
#[derive(Debug, thiserror::Error)]
#[error("entering the jail: {call} failed: {errno}")]
pub struct EnterError {
    /// The call that failed.
    pub call: &'static str,
    /// Its error.
    pub errno: Errno,
}

impl From<EnterError> for io::Error {
    fn from(error: EnterError) -> Self {
        io::Error::from(error.errno)
    }
}

fn call<T>(call: &'static str, result: nix::Result<T>) -> Result<T, EnterError> {
    result.map_err(|errno| EnterError { call, errno })
}

/// Makes `root` the calling process's whole file system and becomes `uid`/`gid`.
pub fn enter(root: &Path, uid: u32, gid: u32) -> Result<(), EnterError> {
    call(
        "unshare(CLONE_NEWNS)",
        nix::sched::unshare(CloneFlags::CLONE_NEWNS),
    )?;
    call("chdir to the jail", nix::unistd::chdir(root))?;
    // pivot_root, or on an initramfs root a move and chroot, as the launcher's own jail.
    make_current_directory_the_root().map_err(|error| match error {
        JailError::Call { call, source } => EnterError {
            call,
            errno: source,
        },
        _ => EnterError {
            call: "pivot_root",
            errno: Errno::EINVAL,
        },
    })?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    call("setgroups", nix::unistd::setgroups(&[]))?;
    call("setresgid", nix::unistd::setresgid(gid, gid, gid))?;
    call("setresuid", nix::unistd::setresuid(uid, uid, uid))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag of this process.
    let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    call("prctl(PR_SET_NO_NEW_PRIVS)", Errno::result(set).map(drop))
}
