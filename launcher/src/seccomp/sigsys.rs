//! The `SIGSYS` handler: what happens when a thread makes a call its filter forbids.
//!
//! It runs on the offending thread, inside the filter, so it uses nothing but `write(2)`
//! on stderr and `exit_group(2)`, which every filter allows, and formats into a buffer
//! on its stack.

use std::io;

use super::{current_kind, ExitStatus};

/// Installs [`on_sigsys`] for `SIGSYS`.
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the fields set
    // below are the handler (an `extern "C"` function with the SA_SIGINFO signature) and
    // its flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised; the old action is not asked for.
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Offset of `si_syscall` in a `SIGSYS` siginfo on x86_64: after `si_signo`, `si_errno`,
/// `si_code` (4 bytes each, then 4 of padding) comes `_sigsys { void *_call_addr;
/// int _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS with SA_SIGINFO; the
        // field read lies inside the 128-byte structure.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    // A thread that installed no filter of its own got the vmm filter (TSYNC) or inherited
    // it from the vmm thread that created it.
    let kind = current_kind().map_or("vmm", |kind| kind.name());
    let mut line = LineBuffer::new();
    line.push(b"ironvisor-launcher: seccomp: a ");
    line.push(kind.as_bytes());
    line.push(b" thread made a forbidden system call: ");
    line.push(syscall_name(syscall).as_bytes());
    line.push(b" (");
    line.push_number(i64::from(syscall));
    line.push(b"); the launcher ends (exit code 7)\n");
    // SAFETY: writing an initialised stack buffer to stderr; the result is irrelevant,
    // the process ends next.
    unsafe {
        libc::write(
            libc::STDERR_FILENO,
            line.bytes().as_ptr().cast::<libc::c_void>(),
            line.bytes().len(),
        );
        libc::_exit(ExitStatus::SeccompViolation.code());
    }
}

/// A fixed-size line assembled without allocating.
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl LineBuffer {
    fn new() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn push_number(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Names of the calls an attacker inside the launcher would reach for first (and of the
/// ones the tests provoke); others are reported by number.
fn syscall_name(number: i32) -> &'static str {
    match i64::from(number) {
        libc::SYS_execve => "execve",
        libc::SYS_execveat => "execveat",
        libc::SYS_fork => "fork",
        libc::SYS_vfork => "vfork",
        libc::SYS_clone => "clone",
        libc::SYS_socket => "socket",
        libc::SYS_connect => "connect",
        libc::SYS_bind => "bind",
        libc::SYS_listen => "listen",
        libc::SYS_open => "open",
        libc::SYS_openat => "openat",
        libc::SYS_ptrace => "ptrace",
        libc::SYS_mount => "mount",
        libc::SYS_unshare => "unshare",
        libc::SYS_setns => "setns",
        libc::SYS_kill => "kill",
        libc::SYS_mprotect => "mprotect",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_getpid => "getpid",
        _ => "syscall",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_assembled_without_allocating() {
        let mut line = LineBuffer::new();
        line.push(b"call ");
        line.push_number(59);
        line.push(b" ");
        line.push_number(-1);
        assert_eq!(line.bytes(), b"call 59 -1");
        let mut long = LineBuffer::new();
        long.push(&[b'x'; 300]);
        assert_eq!(long.bytes().len(), 256);
        assert_eq!(syscall_name(59), "execve");
    }
}
