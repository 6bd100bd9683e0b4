//! Foreground mode: the console on the launcher's own stdin/stdout.
//!
//! Output is an output-only hub client writing to stdout (it loses bytes rather than
//! being disconnected if stdout cannot keep up). Input is read by a dedicated thread,
//! because a blocking terminal read cannot be cancelled by tokio; the thread polls a
//! wake-up pipe too, so dropping the [`StdioGuard`] stops it. If stdin is a terminal it is
//! put in raw mode, so keystrokes (Ctrl-C included) go to the guest, and restored when
//! the guard is dropped. Ctrl-] ([`ESCAPE_BYTE`]) is not sent to the guest: it completes
//! [`StdioGuard::escape_pressed`], which the launcher can treat as "detach".

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::hub::{ConsoleHub, Overflow};

/// Stack of the thread that copies console input (a 1 KiB buffer, no recursion). Well
/// under 2 MiB: a stack of exactly 2 MiB that starts on a 2 MiB boundary is backed by a
/// transparent huge page, 2 MiB resident for a few KiB used.
const INPUT_THREAD_STACK_BYTES: usize = 256 << 10;

/// Ctrl-]: typed on stdin, it asks the launcher to detach instead of reaching the guest.
pub const ESCAPE_BYTE: u8 = 0x1d;

/// Why foreground console mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// `spawn_stdio` was called outside a tokio runtime.
    #[error("console stdio: must be started from inside a tokio runtime")]
    NoRuntime,
    /// The stdin descriptor could not be duplicated.
    #[error("console stdio: cannot duplicate stdin: {0}")]
    DupStdin(#[source] io::Error),
    /// The wake-up pipe for the stdin thread could not be created.
    #[error("console stdio: cannot create the stdin wake-up pipe: {0}")]
    Pipe(#[source] Errno),
    /// The stdin thread could not be started.
    #[error("console stdio: cannot start the stdin thread: {0}")]
    Thread(#[source] io::Error),
    /// Reading the terminal's attributes failed.
    #[error("console stdio: cannot read terminal attributes of stdin: {0}")]
    GetAttributes(#[source] Errno),
    /// Switching the terminal to raw mode failed.
    #[error("console stdio: cannot put the stdin terminal in raw mode: {0}")]
    SetRaw(#[source] Errno),
}

/// A terminal in raw mode; its previous attributes are restored on drop.
#[derive(Debug)]
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    /// Puts the terminal behind `fd` in raw mode. Returns `Ok(None)` without changing
    /// anything if `fd` is not a terminal.
    pub fn enable(fd: BorrowedFd<'_>) -> Result<Option<RawTerminal>, StdioError> {
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return Ok(None);
        }
        let fd = fd.try_clone_to_owned().map_err(StdioError::DupStdin)?;
        let saved = termios::tcgetattr(&fd).map_err(StdioError::GetAttributes)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw).map_err(StdioError::SetRaw)?;
        debug!("stdin terminal switched to raw mode");
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // TCSAFLUSH would discard typed-ahead input the shell may want; TCSANOW keeps it.
        if let Err(err) = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved) {
            warn!(error = %err, "cannot restore terminal attributes of stdin");
        }
    }
}

/// Keeps foreground console mode running; dropping it stops copying and restores the
/// terminal.
///
/// Keep it alive until the launcher exits: `std::process::exit` skips destructors, so
/// drop the guard before calling it or the user's terminal stays raw.
#[derive(Debug)]
pub struct StdioGuard {
    // Field order is drop order: stop the input thread, stop output, then restore the
    // terminal last.
    input: Option<InputThread>,
    output: tokio::task::JoinHandle<()>,
    escape: Arc<Notify>,
    raw: Option<RawTerminal>,
}

impl StdioGuard {
    /// Completes when the user types Ctrl-] on stdin.
    pub async fn escape_pressed(&self) {
        self.escape.notified().await;
    }

    /// Whether stdin was a terminal (and is now in raw mode).
    pub fn is_raw(&self) -> bool {
        self.raw.is_some()
    }
}

impl Drop for StdioGuard {
    fn drop(&mut self) {
        self.output.abort();
        if let Some(input) = self.input.take() {
            input.stop();
        }
    }
}

/// The thread that copies stdin to the console input.
#[derive(Debug)]
struct InputThread {
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    handle: JoinHandle<()>,
}

impl InputThread {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        match nix::unistd::write(&self.wake, &[1]) {
            // EPIPE: the thread has already ended (stdin reached its end, as /dev/null does
            // at once) and closed its end of the pipe; it only needs joining.
            Ok(_) | Err(nix::errno::Errno::EPIPE) => {}
            Err(err) => {
                warn!(error = %err, "cannot wake the console stdin thread");
                return;
            }
        }
        if self.handle.join().is_err() {
            warn!("console stdin thread panicked");
        }
    }
}

impl ConsoleHub {
    /// Foreground mode: copies console output to stdout and stdin to the console input,
    /// with stdin in raw mode if it is a terminal. Must be called inside a tokio runtime.
    pub fn spawn_stdio(&self) -> Result<StdioGuard, StdioError> {
        let stdin = io::stdin();
        let raw = RawTerminal::enable(stdin.as_fd())?;
        let input = stdin
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::DupStdin)?;
        let mut guard = self.spawn_stdio_with(input, tokio::io::stdout())?;
        guard.raw = raw;
        info!(raw = guard.is_raw(), "console attached to stdio");
        Ok(guard)
    }

    /// Foreground mode over arbitrary descriptors: output to `output`, input read from
    /// `input` (a pipe, terminal or socket) by a dedicated thread.
    fn spawn_stdio_with<W>(&self, input: OwnedFd, output: W) -> Result<StdioGuard, StdioError>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StdioError::NoRuntime)?;
        let escape = Arc::new(Notify::new());
        let (wake_read, wake_write) = nix::unistd::pipe().map_err(StdioError::Pipe)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let hub = self.clone();
            let stop = Arc::clone(&stop);
            let escape = Arc::clone(&escape);
            std::thread::Builder::new()
                .name("console-stdin".to_string())
                .stack_size(INPUT_THREAD_STACK_BYTES)
                .spawn(move || {
                    let _span = info_span!("console_stdin").entered();
                    copy_input(&hub, &input, &wake_read, &stop, &escape);
                })
                .map_err(StdioError::Thread)?
        };
        let task = self.client_task(Overflow::DropBytes, None::<tokio::io::Empty>, output);
        let output = runtime.spawn(
            async move {
                task.await;
            }
            .instrument(info_span!("console_stdout")),
        );
        Ok(StdioGuard {
            input: Some(InputThread {
                stop,
                wake: wake_write,
                handle,
            }),
            output,
            escape,
            raw: None,
        })
    }
}

/// Reads `input` until EOF, an error or a stop request, passing bytes to the hub's input
/// and turning [`ESCAPE_BYTE`] into an escape notification.
fn copy_input(
    hub: &ConsoleHub,
    input: &OwnedFd,
    wake: &OwnedFd,
    stop: &AtomicBool,
    escape: &Notify,
) {
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            PollFd::new(input.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(err) => {
                warn!(error = %err, "console stdin: poll failed; input stopped");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        let n = match nix::unistd::read(input, &mut buf) {
            Ok(0) => {
                debug!("console stdin: end of input");
                return;
            }
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(err) => {
                warn!(error = %err, "console stdin: read failed; input stopped");
                return;
            }
        };
        let mut rest = &buf[..n];
        while let Some(pos) = rest.iter().position(|&b| b == ESCAPE_BYTE) {
            if pos > 0 {
                hub.send_input(&rest[..pos]);
            }
            info!("console escape (Ctrl-]) typed on stdin");
            escape.notify_one();
            rest = &rest[pos + 1..];
        }
        if !rest.is_empty() {
            hub.send_input(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::ConsoleInput;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct Collect(Mutex<Vec<u8>>);

    impl ConsoleInput for Collect {
        fn send(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(TIMEOUT, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition not reached in time");
    }

    #[tokio::test]
    async fn stdio_copies_output_and_input_and_handles_escape() {
        let hub = ConsoleHub::new(1024);
        let sink = Arc::new(Collect::default());
        hub.set_input(sink.clone());
        hub.output().write_all(b"early\n").unwrap();

        let (stdin_read, stdin_write) = nix::unistd::pipe().unwrap();
        let (mut stdout_read, stdout_write) = tokio::io::duplex(4096);
        let guard = hub.spawn_stdio_with(stdin_read, stdout_write).unwrap();
        assert!(!guard.is_raw());

        let mut buf = [0u8; 6];
        tokio::time::timeout(TIMEOUT, stdout_read.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"early\n");
        hub.output().write_all(b"live").unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(TIMEOUT, stdout_read.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"live");

        nix::unistd::write(&stdin_write, b"ab\x1dcd").unwrap();
        tokio::time::timeout(TIMEOUT, guard.escape_pressed())
            .await
            .unwrap();
        wait_until(|| sink.0.lock().unwrap().len() == 4).await;
        assert_eq!(*sink.0.lock().unwrap(), b"abcd");

        assert_eq!(hub.client_count(), 1);
        drop(guard);
        wait_until(|| hub.client_count() == 0).await;
        // The input thread is gone and closed its end of the pipe.
        assert_eq!(nix::unistd::write(&stdin_write, b"zz"), Err(Errno::EPIPE));
        assert_eq!(*sink.0.lock().unwrap(), b"abcd");
    }

    #[tokio::test]
    async fn stdin_eof_stops_input_but_not_output() {
        let hub = ConsoleHub::new(0);
        let (stdin_read, stdin_write) = nix::unistd::pipe().unwrap();
        let (mut stdout_read, stdout_write) = tokio::io::duplex(4096);
        let guard = hub.spawn_stdio_with(stdin_read, stdout_write).unwrap();
        drop(stdin_write);
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.output().write_all(b"still here").unwrap();
        let mut buf = [0u8; 10];
        tokio::time::timeout(TIMEOUT, stdout_read.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"still here");
        drop(guard);
    }

    #[test]
    fn spawn_outside_runtime_is_an_error() {
        let hub = ConsoleHub::new(0);
        let (stdin_read, _stdin_write) = nix::unistd::pipe().unwrap();
        let err = hub
            .spawn_stdio_with(stdin_read, tokio::io::sink())
            .unwrap_err();
        assert!(matches!(err, StdioError::NoRuntime), "{err}");
    }

    #[test]
    fn raw_mode_is_enabled_on_a_tty_and_restored() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let before = termios::tcgetattr(&pty.slave).unwrap();
        assert!(before.local_flags.contains(termios::LocalFlags::ICANON));
        let raw = RawTerminal::enable(pty.slave.as_fd())
            .unwrap()
            .expect("a pty is a tty");
        let during = termios::tcgetattr(&pty.slave).unwrap();
        assert!(!during.local_flags.contains(termios::LocalFlags::ICANON));
        assert!(!during.local_flags.contains(termios::LocalFlags::ECHO));
        assert!(!during.local_flags.contains(termios::LocalFlags::ISIG));
        drop(raw);
        let after = termios::tcgetattr(&pty.slave).unwrap();
        assert_eq!(after.local_flags, before.local_flags);
        assert_eq!(after.input_flags, before.input_flags);
        assert_eq!(after.output_flags, before.output_flags);
    }

    #[test]
    fn raw_mode_is_a_no_op_on_a_pipe() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert!(RawTerminal::enable(read.as_fd()).unwrap().is_none());
    }
}
