//! The serial console pump: QEMU's first UART is a unix socket (libvirt `<serial
//! type='unix'>` in bind mode); the launcher connects to it once, before the guest runs,
//! and copies guest output into the [`ConsoleHub`] (boot-log ring, socket clients, stdio)
//! and console input back to the UART.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironvisor_console::{ConsoleHub, ConsoleInput};

/// How long to keep retrying the connection to QEMU's serial socket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks of typed input queued for the UART before further input is dropped.
pub const INPUT_QUEUE_CHUNKS: usize = 256;
/// How long [`SerialPump::close`] waits for the output thread to drain what QEMU wrote.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

const READ_CHUNK: usize = 16 * 1024;

/// Why the console pump could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// QEMU's serial socket did not accept a connection in time.
    #[error("connecting to QEMU's serial socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// Duplicating the socket for the input thread failed.
    #[error("duplicating the serial socket {path}: {source}")]
    Clone {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A pump thread could not be started.
    #[error("spawning the serial console {which} thread: {source}")]
    Spawn {
        /// "output" or "input".
        which: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Bytes typed by console users, queued for the UART; implements [`ConsoleInput`].
pub struct SerialInput {
    queue: Mutex<Option<SyncSender<Vec<u8>>>>,
}

impl SerialInput {
    fn new(queue: SyncSender<Vec<u8>>) -> Self {
        Self {
            queue: Mutex::new(Some(queue)),
        }
    }

    /// Stops accepting input; the input thread ends once the queue is drained.
    fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl ConsoleInput for SerialInput {
    fn send(&self, bytes: &[u8]) {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queue.as_ref() else {
            tracing::debug!(
                len = bytes.len(),
                "console input after the VM ended: dropped"
            );
            return;
        };
        match queue.try_send(bytes.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(len = bytes.len(), "serial input queue full: input dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!(len = bytes.len(), "serial input thread gone: input dropped");
            }
        }
    }
}

/// The running pump: one thread copying guest output into the hub, one copying queued
/// input to QEMU.
pub struct SerialPump {
    path: PathBuf,
    stream: UnixStream,
    input: Arc<SerialInput>,
    output_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SerialPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPump")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SerialPump {
    /// Connects to the serial socket at `path` (retrying until [`CONNECT_TIMEOUT`]) and
    /// starts copying in both directions; registers the input with `hub`.
    pub fn start(path: &Path, hub: &ConsoleHub) -> Result<Self, ConsoleError> {
        let stream = connect_with_retry(path, CONNECT_TIMEOUT)?;
        Self::with_stream(path, stream, hub)
    }

    fn with_stream(
        path: &Path,
        stream: UnixStream,
        hub: &ConsoleHub,
    ) -> Result<Self, ConsoleError> {
        let clone_err = |source| ConsoleError::Clone {
            path: path.to_path_buf(),
            source,
        };
        let reader = stream.try_clone().map_err(clone_err)?;
        let writer = stream.try_clone().map_err(clone_err)?;
        let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE_CHUNKS);
        let input = Arc::new(SerialInput::new(tx));
        let output = hub.output();
        let output_thread = std::thread::Builder::new()
            .name("serial-output".into())
            .spawn(move || copy_output(reader, output))
            .map_err(|source| ConsoleError::Spawn {
                which: "output",
                source,
            })?;
        std::thread::Builder::new()
            .name("serial-input".into())
            .spawn(move || copy_input(rx, writer))
            .map_err(|source| ConsoleError::Spawn {
                which: "input",
                source,
            })?;
        hub.set_input(input.clone());
        tracing::debug!(path = %path.display(), "serial console attached");
        Ok(Self {
            path: path.to_path_buf(),
            stream,
            input,
            output_thread: Some(output_thread),
        })
    }

    /// Stops the pump: stops input, lets the output thread drain what QEMU already wrote
    /// (it ends at EOF, once QEMU is gone) for up to [`DRAIN_TIMEOUT`], then cuts the
    /// socket. Idempotent.
    pub fn close(&mut self) {
        self.input.close();
        let Some(thread) = self.output_thread.take() else {
            return;
        };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !thread.is_finished() {
            tracing::debug!("serial output still open after the VM ended; closing it");
        }
        if let Err(err) = self.stream.shutdown(Shutdown::Both) {
            if err.kind() != io::ErrorKind::NotConnected {
                tracing::debug!(%err, "shutting down the serial socket");
            }
        }
        if thread.join().is_err() {
            tracing::error!("serial output thread panicked");
        }
    }
}

impl Drop for SerialPump {
    fn drop(&mut self) {
        self.close();
    }
}

fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream, ConsoleError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(source) if Instant::now() >= deadline => {
                return Err(ConsoleError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn copy_output(mut reader: UnixStream, mut output: impl Write) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = output.write_all(&buf[..n]) {
                    tracing::error!(%err, "writing guest console output to the hub");
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::debug!(%err, "reading QEMU's serial socket");
                break;
            }
        }
    }
    tracing::debug!("serial output ended");
}

fn copy_input(queue: Receiver<Vec<u8>>, mut writer: UnixStream) {
    for chunk in queue {
        if let Err(err) = writer.write_all(&chunk) {
            tracing::debug!(%err, "writing console input to QEMU's serial socket");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn output_reaches_the_hub_and_input_reaches_the_uart() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let hub = ConsoleHub::new(4096);
        let mut pump = SerialPump::with_stream(Path::new("/test/serial.sock"), ours, &hub).unwrap();

        qemu.write_all(b"[    0.000000] Linux version 6.1\r\nIRONVISOR-GUEST-INIT-REACHED\r\n")
            .unwrap();
        wait_for(|| hub.snapshot().ends_with(b"REACHED\r\n"));

        let input: Arc<SerialInput> = pump.input.clone();
        input.send(b"echo hi\r");
        let mut typed = [0u8; 8];
        qemu.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"echo hi\r");

        // QEMU exits: the output thread sees EOF and close() returns promptly.
        qemu.write_all(b"last words").unwrap();
        drop(qemu);
        let started = Instant::now();
        pump.close();
        assert!(started.elapsed() < DRAIN_TIMEOUT);
        assert!(hub.snapshot().ends_with(b"last words"));
        // Input after close is dropped without panicking.
        input.send(b"x");
    }

    #[test]
    fn close_cuts_a_socket_that_stays_open() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let hub = ConsoleHub::new(1024);
        let mut pump = SerialPump::with_stream(Path::new("/test/s.sock"), ours, &hub).unwrap();
        // QEMU's end never closes; close() must not wait for it and must cut the socket.
        pump.close();
        assert!(
            pump.output_thread.is_none(),
            "the output thread was not joined"
        );
        qemu.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            qemu.read(&mut buf).unwrap(),
            0,
            "QEMU's end did not see the socket shut down"
        );
        // Closing again is a no-op.
        pump.close();
        assert!(pump.output_thread.is_none());
    }

    #[test]
    fn connect_names_the_socket_when_nobody_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        let err = connect_with_retry(&path, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("nobody.sock"), "{err}");
    }
}
