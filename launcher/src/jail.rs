//! The launcher's jail (`--jail`): once the VM is built, the launcher sees no file at all.
//!
//! Firecracker's jailer bind-mounts the few files a VMM needs into a chroot before starting
//! it. The launcher needs files only while it builds the VM (`/dev/kvm`, the taps, the
//! disk images, the kernel, its sockets); afterwards it works on descriptors it already
//! holds. So it confines itself in two steps:
//!
//! 1. [`enter_own_mount_namespace`], before the launcher starts any thread (its socket
//!    guardian, started just before, stays outside and can still remove the sockets):
//!    a mount namespace of its own whose mounts no longer propagate to or from the host.
//! 2. [`seal`], once the VM is built and before root is dropped and any vCPU runs: an empty,
//!    read-only tmpfs becomes the root of that namespace and the host's tree is detached.
//!    Every thread of the launcher shares the namespace, so all of them are jailed.
//!
//! From then on a path lookup by the launcher finds nothing; a compromised launcher can
//! open no host file, device or socket by name.

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where the jail's empty root is mounted before it becomes `/`. Any directory works: the
/// mount exists only in the launcher's own namespace.
const JAIL_MOUNTPOINT: &str = "/tmp";

/// Why the launcher could not jail itself.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A mount namespace is per thread: entering it with other threads running would jail
    /// only the caller.
    #[error("--jail: the launcher already runs {threads} threads; its mount namespace must be made before any thread")]
    NotSingleThreaded {
        /// How many threads the process has.
        threads: usize,
    },
    /// Counting the threads failed.
    #[error("--jail: cannot count the launcher's threads in /proc/self/task: {0}")]
    Threads(#[source] io::Error),
    /// A system call refused (the launcher is not root, or the kernel lacks mount
    /// namespaces).
    #[error("--jail: {call} failed: {source} (the launcher must start as root to jail itself)")]
    Call {
        /// The call and its target.
        call: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

fn call(call: &'static str, result: nix::Result<()>) -> Result<(), JailError> {
    result.map_err(|source| JailError::Call { call, source })
}

/// Gives the launcher a mount namespace of its own, private to it. Call before any thread
/// exists: threads started later share it.
#[tracing::instrument(level = "debug")]
pub fn enter_own_mount_namespace() -> Result<(), JailError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(JailError::Threads)?
        .count();
    if threads != 1 {
        return Err(JailError::NotSingleThreaded { threads });
    }
    call(
        "unshare(CLONE_NEWNS)",
        nix::sched::unshare(CloneFlags::CLONE_NEWNS),
    )?;
    // Nothing mounted here shows on the host, and the host's later mounts do not show here.
    call(
        "making / private",
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )
}

/// Replaces the root of the launcher's namespace with an empty read-only tmpfs and detaches
/// the host's tree. Call after [`enter_own_mount_namespace`], once every file is open.
#[tracing::instrument(level = "info")]
pub fn seal() -> Result<(), JailError> {
    let root = Path::new(JAIL_MOUNTPOINT);
    call(
        "mounting the jail's tmpfs",
        nix::mount::mount(
            Some("ironvisor-jail"),
            root,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0555"),
        ),
    )?;
    call("chdir to the jail", nix::unistd::chdir(root))?;
    make_current_directory_the_root()?;
    tracing::info!("jailed: the launcher's root is an empty read-only directory");
    Ok(())
}

/// Makes the current directory (a mount point) the root of the calling process's mount
/// namespace and detaches the old tree; shared with the node agent's jailer, which starts
/// the launcher in a jail it built.
pub fn make_current_directory_the_root() -> Result<(), JailError> {
    // pivot_root(".", "."): the old root ends up mounted on top of the new one, at "/" ...
    match nix::unistd::pivot_root(".", ".") {
        // ... and detaching it leaves the new root as the whole tree.
        Ok(()) => call(
            "detaching the host's tree",
            nix::mount::umount2(".", MntFlags::MNT_DETACH),
        )?,
        // The root is the initial ramfs (a node booted from an initramfs), which cannot be
        // pivoted away: the new root is moved over it and becomes the root directory (as
        // switch_root does). The host's tree stays below it, out of reach of a path.
        Err(Errno::EINVAL) => {
            tracing::debug!("the root cannot be pivoted (initramfs): moving the jail over it");
            call(
                "moving the jail over /",
                nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
            )?;
            call("chroot to the jail", nix::unistd::chroot("."))?;
        }
        Err(source) => {
            return Err(JailError::Call {
                call: "pivot_root",
                source,
            })
        }
    }
    call("chdir /", nix::unistd::chdir("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::ForkResult;

    #[test]
    fn a_sealed_jail_leaves_an_empty_read_only_root() {
        ironvisor_prereq::root();
        let (read, write) = nix::unistd::pipe().unwrap();
        // A mount namespace needs a single-threaded process: a child of this one.
        // SAFETY: the child (this thread alone) only jails itself, looks around with a few
        // file system calls (glibc keeps malloc usable after fork), reports on the pipe and
        // leaves with _exit, running none of the harness's code.
        match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                drop(read);
                let _ = nix::unistd::write(&write, jailed_view().as_bytes());
                // SAFETY: ends the child at once; nothing of the parent's is flushed twice.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(write);
                let mut report = String::new();
                File::from(read).read_to_string(&mut report).unwrap();
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
                assert_eq!(
                    report,
                    "entries=0 proc=false dev_kvm=false write_refused=true"
                );
                // The jail was the child's alone: this process still sees the host.
                assert!(Path::new("/proc/self/status").exists());
            }
        }
    }

    /// Jails the calling (single-threaded) process and says what it can see.
    fn jailed_view() -> String {
        if let Err(err) = enter_own_mount_namespace().and_then(|()| seal()) {
            return err.to_string();
        }
        let entries = match std::fs::read_dir("/") {
            Ok(dir) => dir.count(),
            Err(err) => return format!("cannot list the jail's root: {err}"),
        };
        let proc = Path::new("/proc/self/status").exists();
        let dev_kvm = Path::new("/dev/kvm").exists();
        let write_refused = std::fs::write("/escape", b"x").is_err();
        format!("entries={entries} proc={proc} dev_kvm={dev_kvm} write_refused={write_refused}")
    }

    #[test]
    fn a_second_thread_is_refused_before_anything_changes() {
        // The test harness runs tests on threads: this process has more than one.
        let err = enter_own_mount_namespace().unwrap_err();
        assert!(
            matches!(err, JailError::NotSingleThreaded { threads } if threads > 1),
            "{err}"
        );
        assert!(err.to_string().contains("before any thread"), "{err}");
    }
}
