//! `virtctl console`: the VM's serial console on this terminal.
//!
//! Interactive (standard input is a terminal): the terminal goes to raw mode, restored by
//! [`RawModeGuard`] on every exit path, and `Ctrl+]` detaches. Otherwise standard input is
//! copied to the console until it ends and the console to standard output until the
//! console closes, `--timeout` passes or a `Ctrl+]` byte arrives on standard input.
//! While the VM is still starting (the daemon answers UNAVAILABLE or
//! FAILED_PRECONDITION), the console is retried for up to `--wait`.

use std::io::{self, Read, Write};
use std::time::Duration;

use ironvisor_handler_api::proto::ObjectRef;
use ironvisor_handler_api::{ClientError, ConsoleStream, HandlerClient};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info_span, Instrument};

use crate::terminal::{self, RawModeGuard, TerminalError};

/// The byte `Ctrl+]` sends: detaches from the console.
pub const ESCAPE: u8 = 0x1d;
/// How often a console that is not available yet is asked for again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Size of one read from standard input.
const INPUT_CHUNK: usize = 4096;

/// Why the console session failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The daemon refused to open the console.
    #[error(
        "cannot open the console of VM {vm}: {}",
        crate::commands::detail(source)
    )]
    Open {
        /// The VM.
        vm: ObjectRef,
        /// The daemon's answer.
        #[source]
        source: Box<ClientError>,
    },
    /// The console stayed unavailable for the whole `--wait`.
    #[error(
        "the console of VM {vm} did not become available within {waited:?}: {}",
        crate::commands::detail(source)
    )]
    NotReady {
        /// The VM.
        vm: ObjectRef,
        /// How long it was retried.
        waited: Duration,
        /// The daemon's last answer.
        #[source]
        source: Box<ClientError>,
    },
    /// The VM is stopped and nothing will start it (`runStrategy: Halted`).
    #[error("VM {vm} is stopped (runStrategy Halted), so it has no console; start it with `virtctl start {name}`", name = vm.name)]
    Stopped {
        /// The VM.
        vm: ObjectRef,
    },
    /// The cluster refused the console or its WebSocket broke.
    #[error("console of VM {vm}: {message}")]
    Cluster {
        /// The VM.
        vm: ObjectRef,
        /// What the cluster said.
        message: String,
    },
    /// The console stream broke.
    #[error("the console of VM {vm} failed: {}", crate::commands::detail(source))]
    Stream {
        /// The VM.
        vm: ObjectRef,
        /// What broke.
        #[source]
        source: Box<ClientError>,
    },
    /// The terminal could not be put in raw mode.
    #[error("console of VM {vm}: {source}")]
    Terminal {
        /// The VM.
        vm: ObjectRef,
        /// The terminal error.
        #[source]
        source: TerminalError,
    },
    /// Reading standard input failed.
    #[error("console of VM {vm}: cannot read standard input: {source}")]
    Stdin {
        /// The VM.
        vm: ObjectRef,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// Writing console output failed.
    #[error("console of VM {vm}: cannot write to standard output: {source}")]
    Stdout {
        /// The VM.
        vm: ObjectRef,
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// Installing the signal handlers failed.
    #[error("console of VM {vm}: cannot handle {signal}: {source}")]
    Signal {
        /// The VM.
        vm: ObjectRef,
        /// The signal name.
        signal: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A signal ended the session.
    #[error("console of VM {vm}: interrupted by {signal}")]
    Interrupted {
        /// The VM.
        vm: ObjectRef,
        /// The signal name.
        signal: &'static str,
    },
}

/// Settings of a console session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// End the session after this long.
    pub timeout: Option<Duration>,
    /// How long to retry while the console is not available yet.
    pub wait: Duration,
    /// Raw terminal mode (standard input is a terminal).
    pub interactive: bool,
}

/// How a session that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// `Ctrl+]` was pressed (or read from standard input).
    Detached,
    /// The daemon closed the console: the VM stopped.
    Closed,
    /// `--timeout` passed.
    TimedOut,
}

/// Splits an input chunk at the first `Ctrl+]`: the bytes to send, and whether the
/// escape was found (everything after it is dropped).
pub fn split_at_escape(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|&b| b == ESCAPE) {
        Some(at) => (&chunk[..at], true),
        None => (chunk, false),
    }
}

/// True when the daemon's answer means "not yet": the VM is starting.
fn is_not_ready(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(tonic::Code::Unavailable | tonic::Code::FailedPrecondition)
    )
}

/// Runs a console session on this process's standard input and output.
pub async fn run(
    client: &HandlerClient,
    vm: ObjectRef,
    options: ConsoleOptions,
) -> Result<ConsoleEnd, ConsoleError> {
    let span = info_span!("console", vm = %vm, interactive = options.interactive);
    async {
        let started = Instant::now();
        let deadline = options.timeout.map(|t| started + t);
        let mut signals = Signals::install(&vm)?;
        let Some((mut output, input)) = open(client, &vm, options, started, deadline).await? else {
            return Ok(ConsoleEnd::TimedOut);
        };
        session(&vm, options, &mut output, input, deadline, &mut signals).await
    }
    .instrument(span)
    .await
}

/// The session on an open console: raw mode if interactive, the banner, then bytes both
/// ways until it ends; says how it ended.
pub(crate) async fn session(
    vm: &ObjectRef,
    options: ConsoleOptions,
    output: &mut impl ConsoleSource,
    input: mpsc::Sender<Vec<u8>>,
    deadline: Option<Instant>,
    signals: &mut Signals,
) -> Result<ConsoleEnd, ConsoleError> {
    {
        let guard = if options.interactive {
            Some(
                RawModeGuard::enable().map_err(|source| ConsoleError::Terminal {
                    vm: vm.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        let newline = if options.interactive { "\r\n" } else { "\n" };
        eprint!(
            "Successfully connected to {} console. The escape sequence is ^]{newline}",
            vm.name
        );

        let stdin = spawn_stdin_reader();
        let end = pump(vm, output, input, stdin, deadline, signals).await;
        drop(guard);
        match &end {
            Ok(ConsoleEnd::Detached) => eprintln!("\nDetached from the console of VM {vm}."),
            Ok(ConsoleEnd::Closed) => eprintln!("\nThe console of VM {vm} closed: the VM stopped."),
            Ok(ConsoleEnd::TimedOut) => eprintln!("\nConsole session of VM {vm} timed out."),
            Err(_) => eprintln!(),
        }
        end
    }
}

/// Where console output comes from: the node daemon's stream, or a cluster WebSocket.
pub(crate) trait ConsoleSource {
    /// The next chunk; `None` when the console closed.
    fn next_chunk(
        &mut self,
        vm: &ObjectRef,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, ConsoleError>>;
}

impl ConsoleSource for ConsoleStream {
    async fn next_chunk(&mut self, vm: &ObjectRef) -> Result<Option<Vec<u8>>, ConsoleError> {
        self.next().await.map_err(|source| ConsoleError::Stream {
            vm: vm.clone(),
            source: Box::new(source),
        })
    }
}

/// Opens the console, retrying while the VM is starting. `None` when the deadline passed
/// first.
async fn open(
    client: &HandlerClient,
    vm: &ObjectRef,
    options: ConsoleOptions,
    started: Instant,
    deadline: Option<Instant>,
) -> Result<Option<(ConsoleStream, mpsc::Sender<Vec<u8>>)>, ConsoleError> {
    let mut announced = false;
    loop {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        let error = match client.console(vm.clone(), ReceiverStream::new(rx)).await {
            Ok(stream) => return Ok(Some((stream, tx))),
            Err(e) => e,
        };
        if !is_not_ready(&error) {
            return Err(ConsoleError::Open {
                vm: vm.clone(),
                source: Box::new(error),
            });
        }
        if halted(client, vm).await {
            return Err(ConsoleError::Stopped { vm: vm.clone() });
        }
        let waited = started.elapsed();
        if waited >= options.wait {
            return Err(ConsoleError::NotReady {
                vm: vm.clone(),
                waited,
                source: Box::new(error),
            });
        }
        if !announced {
            eprintln!(
                "Waiting for the console of VM {vm} ({})...",
                crate::commands::detail(&error)
            );
            announced = true;
        }
        debug!(error = %error, "console not available yet, retrying");
        let next = Instant::now() + RETRY_INTERVAL;
        if deadline.is_some_and(|d| d <= next) {
            if let Some(d) = deadline {
                tokio::time::sleep_until(d).await;
            }
            return Ok(None);
        }
        tokio::time::sleep_until(next).await;
    }
}

/// True when the VM is stopped and its run strategy will not start it, so waiting for
/// its console is pointless. Any doubt (the VM cannot be read) means "keep waiting".
async fn halted(client: &HandlerClient, vm: &ObjectRef) -> bool {
    match client.get(vm.clone()).await {
        Ok(view) => view.status == "Stopped" && view.run_strategy == "Halted",
        Err(e) => {
            debug!(error = %e, "cannot read the VM while waiting for its console");
            false
        }
    }
}

/// Copies standard input to the console and the console to standard output until the
/// session ends.
async fn pump(
    vm: &ObjectRef,
    output: &mut impl ConsoleSource,
    input: mpsc::Sender<Vec<u8>>,
    mut stdin: mpsc::Receiver<io::Result<Vec<u8>>>,
    deadline: Option<Instant>,
    signals: &mut Signals,
) -> Result<ConsoleEnd, ConsoleError> {
    let mut input = Some(input);
    let mut stdin_open = true;
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    loop {
        tokio::select! {
            chunk = output.next_chunk(vm) => match chunk {
                Ok(Some(bytes)) => write_stdout(&bytes)
                    .map_err(|source| ConsoleError::Stdout { vm: vm.clone(), source })?,
                Ok(None) => return Ok(ConsoleEnd::Closed),
                Err(error) => return Err(error),
            },
            read = stdin.recv(), if stdin_open => match read {
                Some(Ok(bytes)) => {
                    let (send, escape) = split_at_escape(&bytes);
                    if let (false, Some(tx)) = (send.is_empty(), &input) {
                        if tx.send(send.to_vec()).await.is_err() {
                            // The request stream is gone: the daemon ended the call; its
                            // reason arrives on the output side.
                            debug!("console input closed by the daemon");
                            input = None;
                        }
                    }
                    if escape {
                        return Ok(ConsoleEnd::Detached);
                    }
                }
                Some(Err(source)) => return Err(ConsoleError::Stdin { vm: vm.clone(), source }),
                None => {
                    debug!("standard input ended; closing the console input");
                    stdin_open = false;
                    input = None;
                }
            },
            () = &mut timeout => return Ok(ConsoleEnd::TimedOut),
            signal = signals.next() => {
                return Err(ConsoleError::Interrupted { vm: vm.clone(), signal });
            }
        }
    }
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Reads standard input on a thread of its own (a blocking read cannot be cancelled, and
/// the process exits without waiting for it). The channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; INPUT_CHUNK];
            loop {
                let message = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => Ok(buf[..n].to_vec()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = message.is_err();
                if tx.blocking_send(message).is_err() || failed {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::channel(1);
        // The receiver is alive and the channel empty, so this cannot fail.
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// The signals that end a session (and, in raw mode, would otherwise leave the terminal
/// unusable).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install(vm: &ObjectRef) -> Result<Self, ConsoleError> {
        let one = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| ConsoleError::Signal {
                vm: vm.clone(),
                signal: name,
                source,
            })
        };
        Ok(Self {
            term: one(SignalKind::terminate(), "SIGTERM")?,
            hangup: one(SignalKind::hangup(), "SIGHUP")?,
            interrupt: one(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Whether a console session on this process's standard input is interactive.
pub fn interactive() -> bool {
    terminal::stdin_is_tty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_splits_input() {
        assert_eq!(split_at_escape(b"ls -l\r"), (&b"ls -l\r"[..], false));
        assert_eq!(split_at_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_escape(b"\x1d"), (&b""[..], true));
        assert_eq!(split_at_escape(b""), (&b""[..], false));
    }

    #[test]
    fn only_unavailable_and_failed_precondition_are_retried() {
        let rejected = |code| ClientError::Rejected {
            path: "/s".into(),
            rpc: "Console",
            code,
            message: "VM default/a is starting".into(),
        };
        assert!(is_not_ready(&rejected(tonic::Code::Unavailable)));
        assert!(is_not_ready(&rejected(tonic::Code::FailedPrecondition)));
        assert!(!is_not_ready(&rejected(tonic::Code::NotFound)));
        assert!(!is_not_ready(&ClientError::DaemonNotRunning {
            path: "/s".into()
        }));
    }
}
