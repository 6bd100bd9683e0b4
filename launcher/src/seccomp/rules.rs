//! The allowlists: every system call a launcher thread kind may make, with the reason.
//!
//! Measured with `strace -f` on a launcher booting a guest with a disk, a network
//! interface, the console, agent and API sockets and virtio-rng, then pausing, resuming
//! and shutting it down through the API (the nested e2e setup), and kept to what the code
//! paths need. glibc and the Rust runtime account for the allocator, thread and signal
//! calls shared by all kinds ([`RUNTIME`]).

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowed {
    /// `SYS_*` number.
    pub(super) syscall: i64,
    /// Why the thread kind needs it.
    pub(super) reason: &'static str,
    /// An argument restriction, if any.
    pub(super) only: Only,
}

/// Argument restrictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Only {
    /// Any arguments.
    Any,
    /// `clone` creating a thread (`CLONE_THREAD` set), never a process.
    Threads,
    /// `seccomp(SECCOMP_SET_MODE_FILTER, ...)`: adding a filter, which only restricts.
    AddFilter,
    /// `ioctl` with one of these requests.
    Ioctls(&'static [u64]),
}

/// The `_IOR` request number of KVM ioctl `nr` reading a `size`-byte structure.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    const IOC_READ: u64 = 2;
    const KVMIO: u64 = 0xae;
    (IOC_READ << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `FIONBIO`, as an ioctl request argument.
pub(super) const FIONBIO: u64 = libc::FIONBIO;
/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub(super) const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub(super) const KVM_GET_REGS: u64 = kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS`: `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub(super) const KVM_GET_SREGS: u64 = kvm_ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

impl Allowed {
    /// The seccompiler rules of this entry (none: any arguments).
    pub(super) fn rules(&self) -> Result<Vec<SeccompRule>, BackendError> {
        let condition = match self.only {
            Only::Any => return Ok(Vec::new()),
            Only::Ioctls(requests) => {
                return requests
                    .iter()
                    .map(|&request| {
                        SeccompRule::new(vec![SeccompCondition::new(
                            1,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            request,
                        )?])
                    })
                    .collect()
            }
            Only::Threads => SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?,
            Only::AddFilter => SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(libc::SECCOMP_SET_MODE_FILTER),
            )?,
        };
        Ok(vec![SeccompRule::new(vec![condition])?])
    }
}

const fn any(syscall: i64, reason: &'static str) -> Allowed {
    Allowed {
        syscall,
        reason,
        only: Only::Any,
    }
}

/// What every thread needs from glibc and the Rust runtime.
const RUNTIME: &[Allowed] = &[
    any(libc::SYS_read, "eventfds, pipes, sockets and files"),
    any(libc::SYS_write, "eventfds, stderr logging, sockets"),
    any(libc::SYS_close, "dropping descriptors"),
    any(
        libc::SYS_futex,
        "mutexes, condition variables, channels, thread joins",
    ),
    any(libc::SYS_mmap, "the allocator's arenas and thread stacks"),
    any(
        libc::SYS_munmap,
        "the allocator and finished threads' stacks",
    ),
    any(libc::SYS_madvise, "the allocator returning memory"),
    any(libc::SYS_mremap, "the allocator growing large blocks"),
    any(libc::SYS_brk, "the allocator's main heap"),
    any(
        libc::SYS_mprotect,
        "the allocator and thread stack guard pages",
    ),
    any(
        libc::SYS_rt_sigreturn,
        "returning from signal handlers (vCPU kick)",
    ),
    any(
        libc::SYS_rt_sigprocmask,
        "threads blocking signals while they start and exit",
    ),
    any(
        libc::SYS_sigaltstack,
        "Rust's stack-overflow handler per thread",
    ),
    any(libc::SYS_sched_yield, "spin loops in locks"),
    any(libc::SYS_nanosleep, "sleeps"),
    any(libc::SYS_clock_nanosleep, "sleeps"),
    any(
        libc::SYS_clock_gettime,
        "time when the vDSO falls back to the kernel",
    ),
    any(libc::SYS_getrandom, "hash map seeds; virtio-rng"),
    any(libc::SYS_exit, "a thread ending"),
    any(
        libc::SYS_exit_group,
        "the launcher ending (also from the SIGSYS handler)",
    ),
    any(libc::SYS_gettid, "logging and thread bookkeeping"),
    any(
        libc::SYS_getpid,
        "logging and signal delivery to the own process",
    ),
    any(
        libc::SYS_rseq,
        "glibc registering restartable sequences for a new thread",
    ),
    any(libc::SYS_set_robust_list, "glibc setting up a new thread"),
    any(
        libc::SYS_restart_syscall,
        "a call interrupted by the vCPU kick signal",
    ),
    any(libc::SYS_epoll_wait, "event loops"),
    any(libc::SYS_epoll_pwait, "event loops"),
    any(
        libc::SYS_epoll_ctl,
        "event loops (re)registering descriptors",
    ),
    any(
        libc::SYS_fcntl,
        "duplicating descriptors (try_clone) and flags",
    ),
    any(
        libc::SYS_sched_getaffinity,
        "glibc and the runtime sizing thread pools",
    ),
    Allowed {
        syscall: libc::SYS_seccomp,
        reason: "adding the next thread kind's filter (a filter only restricts)",
        only: Only::AddFilter,
    },
    any(
        libc::SYS_prctl,
        "naming threads; PR_SET_NO_NEW_PRIVS before a filter",
    ),
];

/// What starting a device worker needs; a vCPU thread starts one when the guest's driver
/// activates a device, so the vmm and vcpu filters allow it.
const THREAD_START: &[Allowed] = &[
    Allowed {
        syscall: libc::SYS_clone,
        reason: "creating threads (CLONE_THREAD only, never a process)",
        only: Only::Threads,
    },
    any(
        libc::SYS_clone3,
        "creating threads: glibc tries clone3 first (flags live in memory, so a second filter \
         answers it with ENOSYS and glibc falls back to the checked clone)",
    ),
    any(libc::SYS_epoll_create1, "the worker's event loop"),
    any(libc::SYS_eventfd2, "the worker's stop event"),
    any(
        libc::SYS_timerfd_create,
        "the virtio-rng worker's refill timer",
    ),
    any(
        libc::SYS_dup,
        "handing the device's descriptors to the worker",
    ),
];

/// The event loop, control API, console and signal handling of the main process.
const VMM: &[Allowed] = &[
    any(
        libc::SYS_ioctl,
        "KVM (pause, state for status), terminal settings on stdio",
    ),
    any(libc::SYS_accept4, "API and console socket clients"),
    any(libc::SYS_recvfrom, "API and console clients"),
    any(libc::SYS_recvmsg, "API clients"),
    any(libc::SYS_sendto, "API and console clients"),
    any(libc::SYS_sendmsg, "API clients"),
    any(libc::SYS_shutdown, "closing client connections"),
    any(libc::SYS_getsockopt, "socket errors of clients"),
    any(libc::SYS_setsockopt, "client socket options"),
    any(libc::SYS_getsockname, "socket bookkeeping"),
    any(libc::SYS_getpeername, "socket bookkeeping"),
    any(libc::SYS_readv, "buffered socket reads"),
    any(libc::SYS_writev, "buffered socket writes (HTTP/2 frames)"),
    any(libc::SYS_pipe2, "the runtime's wake-up pipes"),
    any(
        libc::SYS_rt_sigaction,
        "signal handlers (SIGTERM, SIGINT, vCPU kick)",
    ),
    any(libc::SYS_tgkill, "kicking vCPU threads out of KVM_RUN"),
    any(
        libc::SYS_kill,
        "signalling the own process group on shutdown",
    ),
    any(
        libc::SYS_sched_setaffinity,
        "pinning vCPU threads while starting them",
    ),
    any(libc::SYS_unlink, "removing the launcher's sockets at exit"),
    any(
        libc::SYS_unlinkat,
        "removing the launcher's sockets at exit",
    ),
    any(libc::SYS_newfstatat, "checking socket paths"),
    any(libc::SYS_statx, "checking socket paths"),
    any(libc::SYS_fstat, "descriptor metadata"),
    any(libc::SYS_lseek, "files"),
    any(libc::SYS_poll, "waiting for descriptors"),
    any(libc::SYS_ppoll, "waiting for descriptors"),
    any(libc::SYS_wait4, "reaping the socket guardian"),
    any(libc::SYS_timerfd_settime, "runtime timers"),
    any(libc::SYS_fsync, "flushing files"),
];

/// A vCPU thread: `KVM_RUN` and the device emulation it does inline.
const VCPU: &[Allowed] = &[Allowed {
    syscall: libc::SYS_ioctl,
    reason: "KVM_RUN, and the register reads of a failure report (no VM or device ioctl)",
    only: Only::Ioctls(&[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]),
}];

/// A virtio worker: queues, image files, taps, the console socket.
const DEVICE_WORKER: &[Allowed] = &[
    Allowed {
        syscall: libc::SYS_ioctl,
        reason: "FIONBIO: the standard library makes an accepted console client non-blocking \
                 with it",
        only: Only::Ioctls(&[FIONBIO]),
    },
    any(libc::SYS_readv, "tap frames"),
    any(libc::SYS_writev, "tap frames"),
    any(libc::SYS_pread64, "disk reads"),
    any(libc::SYS_pwrite64, "disk writes"),
    any(libc::SYS_preadv, "disk reads"),
    any(libc::SYS_pwritev, "disk writes"),
    any(libc::SYS_fsync, "virtio-blk flush"),
    any(libc::SYS_fdatasync, "virtio-blk flush"),
    any(libc::SYS_fallocate, "qcow2 overlays growing"),
    any(libc::SYS_ftruncate, "qcow2 overlays growing"),
    any(libc::SYS_lseek, "disk image sizes"),
    any(libc::SYS_fstat, "disk image sizes"),
    any(libc::SYS_accept4, "the agent console's socket client"),
    any(libc::SYS_recvfrom, "the agent console's client"),
    any(
        libc::SYS_sendto,
        "the agent console's client (MSG_NOSIGNAL)",
    ),
    any(libc::SYS_timerfd_settime, "virtio-rng refill timer"),
];

/// The allowlist of `kind`.
pub(super) fn allowlist(kind: ThreadKind) -> Vec<Allowed> {
    // A thread inherits its creator's filters: vCPU threads run under the vmm filter too,
    // device workers under the vmm and vcpu filters, so each allows what it passes on.
    let own: &[&[Allowed]] = match kind {
        ThreadKind::Vmm => &[RUNTIME, THREAD_START, VMM, VCPU, DEVICE_WORKER],
        ThreadKind::Vcpu => &[RUNTIME, THREAD_START, VCPU, DEVICE_WORKER],
        ThreadKind::DeviceWorker => &[RUNTIME, DEVICE_WORKER],
    };
    own.iter().flat_map(|list| list.iter().copied()).collect()
}

/// The syscalls a kind may make, for tests and documentation.
#[cfg(test)]
pub(super) fn allows(kind: ThreadKind, syscall: i64) -> bool {
    allowlist(kind)
        .iter()
        .any(|allowed| allowed.syscall == syscall)
}
