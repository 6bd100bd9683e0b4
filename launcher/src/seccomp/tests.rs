//! Filters are tried for real in forked children (a filter cannot be removed, so the
//! test process itself stays unfiltered); everything that allocates happens before the
//! fork.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;

/// Runs `body` in a child under the `kind` filter (with the SIGSYS handler); returns the
/// child's exit code and what it wrote to stderr.
fn in_filtered_child(kind: ThreadKind, body: fn() -> i32) -> (i32, String) {
    let programs = [
        compile(kind, SeccompLevel::Enforce).expect("compile"),
        clone3_unsupported(kind).expect("clone3 filter"),
    ];
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test; the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child redirects stderr to the pipe and closes the read end.
        unsafe {
            libc::dup2(fds[1], libc::STDERR_FILENO);
            libc::close(fds[0]);
        }
        let code = match sigsys::install_handler()
            .map_err(SeccompError::Handler)
            .and_then(|()| apply_to_thread(kind, &programs))
        {
            Ok(()) => body(),
            Err(_) => 99,
        };
        // SAFETY: ending the child without running the test harness's exit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the parent owns both ends; the write end is closed so the read ends at EOF.
    let read_end = unsafe {
        libc::close(fds[1]);
        OwnedFd::from_raw_fd(fds[0])
    };
    let mut stderr = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut stderr)
        .expect("child stderr");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "child did not exit: status {status:#x}"
    );
    (libc::WEXITSTATUS(status), stderr)
}

#[test]
fn every_kind_compiles_at_every_level() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::DeviceWorker] {
        for level in [SeccompLevel::Enforce, SeccompLevel::Log] {
            assert!(!compile(kind, level).expect("compile").is_empty());
        }
    }
}

#[test]
fn levels_parse_and_bad_ones_are_named() {
    assert_eq!(
        SeccompLevel::parse("enforce").expect("level"),
        SeccompLevel::Enforce
    );
    assert_eq!(
        SeccompLevel::parse("log").expect("level"),
        SeccompLevel::Log
    );
    assert_eq!(
        SeccompLevel::parse("off").expect("level"),
        SeccompLevel::Off
    );
    let err = SeccompLevel::parse("strict").expect_err("bad level");
    assert_eq!(
        err.to_string(),
        "IRONVISOR_SECCOMP=\"strict\": expected enforce, log or off"
    );
}

#[test]
fn a_socket_from_a_vcpu_thread_ends_the_launcher_with_a_clear_line() {
    let (code, stderr) = in_filtered_child(ThreadKind::Vcpu, || {
        // SAFETY: a plain socket(2) call; it must never return.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        0
    });
    assert_eq!(
        code,
        ExitStatus::SeccompViolation.code(),
        "stderr: {stderr}"
    );
    assert_eq!(
        stderr,
        "ironvisor-launcher: seccomp: a vcpu thread made a forbidden system call: socket (41); \
         the launcher ends (exit code 7)\n"
    );
}

#[test]
fn an_execve_from_a_device_worker_ends_the_launcher() {
    let (code, stderr) = in_filtered_child(ThreadKind::DeviceWorker, || {
        let argv: [*const libc::c_char; 2] = [c"/bin/true".as_ptr(), std::ptr::null()];
        // SAFETY: execve with a valid path and argv; it must never return.
        unsafe { libc::execv(c"/bin/true".as_ptr(), argv.as_ptr()) };
        0
    });
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stderr.contains("a device worker thread made a forbidden system call: execve (59)"));
}

#[test]
fn the_vmm_filter_creates_threads_but_no_processes() {
    // clone3 answers ENOSYS (glibc then uses clone), a thread can be started and joined.
    let (code, stderr) = in_filtered_child(ThreadKind::Vmm, || {
        // SAFETY: clone3 with a null argument block: the filter answers before the kernel
        // would look at it.
        let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        if ret != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return 10;
        }
        match std::thread::spawn(|| 3).join() {
            Ok(3) => 0,
            _ => 11,
        }
    });
    assert_eq!(code, 0, "stderr: {stderr}");
    // A process (clone without CLONE_THREAD, as fork does) is refused.
    let (code, stderr) = in_filtered_child(ThreadKind::Vmm, || {
        // SAFETY: clone(SIGCHLD) as fork(2) issues it; it must never return.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize) };
        0
    });
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stderr.contains("a vmm thread made a forbidden system call: clone (56)"));
}

#[test]
fn a_device_worker_makes_its_console_client_non_blocking_but_no_other_ioctl() {
    // What std's UnixStream::set_nonblocking does for an accepted agent-console client.
    let (code, stderr) = in_filtered_child(ThreadKind::DeviceWorker, || {
        let mut on: libc::c_int = 1;
        // SAFETY: FIONBIO on stdin with a valid int; only the filter matters.
        unsafe { libc::ioctl(libc::STDIN_FILENO, libc::FIONBIO, &mut on) };
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS into a valid termios; it must never return.
        unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TCGETS, &mut termios) };
        0
    });
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stderr.contains("a device worker thread made a forbidden system call: ioctl (16)"));
    // The vCPU thread that starts the worker passes FIONBIO on.
    let (code, stderr) = in_filtered_child(ThreadKind::Vcpu, || {
        let mut on: libc::c_int = 1;
        // SAFETY: as above.
        unsafe { libc::ioctl(libc::STDIN_FILENO, libc::FIONBIO, &mut on) };
        0
    });
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn a_device_worker_reads_its_disk_but_cannot_open_files() {
    let (code, stderr) = in_filtered_child(ThreadKind::DeviceWorker, || {
        let mut byte = [0u8; 1];
        // SAFETY: pread into a one-byte buffer from stdin's descriptor (any result is
        // fine, the call must be allowed).
        unsafe { libc::pread(libc::STDIN_FILENO, byte.as_mut_ptr().cast(), 1, 0) };
        // SAFETY: openat with a valid path; it must never return.
        unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        0
    });
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stderr.contains("device worker thread made a forbidden system call: openat (257)"));
}

#[test]
fn each_kind_allows_what_the_kinds_it_creates_need() {
    for allowed in rules::allowlist(ThreadKind::DeviceWorker) {
        assert!(
            rules::allows(ThreadKind::Vcpu, allowed.syscall),
            "{allowed:?}"
        );
    }
    for allowed in rules::allowlist(ThreadKind::Vcpu) {
        assert!(
            rules::allows(ThreadKind::Vmm, allowed.syscall),
            "{allowed:?}"
        );
    }
    assert!(!rules::allows(ThreadKind::Vcpu, libc::SYS_execve));
    assert!(!rules::allows(ThreadKind::Vcpu, libc::SYS_socket));
    assert!(!rules::allows(ThreadKind::Vmm, libc::SYS_execve));
    assert!(!rules::allows(ThreadKind::Vcpu, libc::SYS_tgkill));
    assert!(!rules::allows(ThreadKind::Vcpu, libc::SYS_kill));
}

#[test]
fn a_vcpu_thread_runs_kvm_but_makes_no_other_ioctl() {
    // KVM_RUN on a descriptor that is not a vCPU fails with ENOTTY but is let through.
    let (code, stderr) = in_filtered_child(ThreadKind::Vcpu, || {
        // SAFETY: ioctl on stdin with a request the kernel rejects; only the filter matters.
        let ret = unsafe { libc::ioctl(libc::STDIN_FILENO, rules::KVM_RUN as _) };
        if ret != -1 {
            return 10;
        }
        // SAFETY: TCGETS into a zeroed termios: forbidden for a vCPU thread.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above, a valid termios to write to.
        unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TCGETS, &mut termios) };
        0
    });
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stderr.contains("a vcpu thread made a forbidden system call: ioctl (16)"));
}

#[test]
fn the_vmm_filter_keeps_every_ioctl_its_vcpu_list_restricts() {
    let (code, stderr) = in_filtered_child(ThreadKind::Vmm, || {
        // SAFETY: TCGETS into a zeroed termios; failing (not a terminal) is fine.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above, a valid termios to write to.
        unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TCGETS, &mut termios) };
        0
    });
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn kvm_request_numbers_match_the_kernel_headers() {
    assert_eq!(rules::KVM_RUN, 0xae80);
    assert_eq!(rules::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(rules::KVM_GET_SREGS, 0x8138_ae83);
}
