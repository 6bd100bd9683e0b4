//! The console hub: one writer (the guest's UART), a boot-log ring and many readers.
//!
//! The vCPU thread writes guest output through [`ConsoleOutput`]. Each write takes one
//! short-lived mutex, appends to the ring and to every attached client's queue, and
//! returns; it never performs I/O for a client and never waits for one. Client
//! connections (socket or stdio) run as tokio tasks that drain their queue and write it
//! to their sink at their own pace.
//!
//! # Slow clients
//!
//! Every client queue is bounded (`client_queue_bytes`, [`DEFAULT_CLIENT_QUEUE_BYTES`]
//! unless set with [`ConsoleHub::with_client_queue`]). What happens when a client falls
//! that far behind depends on its kind:
//!
//! - socket clients are **disconnected**: their queue is freed at once and their
//!   connection closed. They can reattach and receive the ring, so they lose nothing the
//!   ring still holds, and a stuck client never holds memory for long.
//! - the stdio client (foreground mode) **loses bytes**: output that does not fit is
//!   discarded and counted, and a warning is logged when it catches up.
//!
//! # Batching
//!
//! A UART hands the guest's output over one byte per port write, so a client that woke
//! for every byte would wake tens of thousands of times while a kernel boots (measured in
//! nested KVM: ~60,000 wake-ups of the runtime's threads and ~4 s of their CPU time for
//! 21 KB of boot log, which crowded the vCPU thread off its CPU). After each write a
//! client waits [`OUTPUT_BATCH_INTERVAL`] before it drains its queue again: the first
//! byte after a quiet spell goes out at once, a stream goes out in batches.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::ring::Ring;

/// Default bound of each client's queue of not-yet-sent output.
pub const DEFAULT_CLIENT_QUEUE_BYTES: usize = 1024 * 1024;

/// The shortest time between two writes to one client (see "Batching" above): short
/// enough that a console user never notices it, long enough that a line of boot log is
/// one write rather than eighty.
pub const OUTPUT_BATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Size of the buffer used to read a client's keystrokes.
const INPUT_CHUNK: usize = 4096;

/// Where bytes typed by console users go: the VMM implements this by feeding the UART's
/// receive FIFO.
///
/// `send` is called from tokio tasks and from the stdin thread, never with a hub lock
/// held (so it may take the UART's lock even though the vCPU writes output while holding
/// it); it should queue the bytes and return quickly.
pub trait ConsoleInput: Send + Sync {
    /// Delivers bytes typed by a user, in the order they were typed.
    fn send(&self, bytes: &[u8]);
}

/// Serial console fan-out: keeps the last `ring_bytes` bytes of guest output and copies
/// live output to every attached client.
///
/// Cloning is cheap and every clone refers to the same hub.
#[derive(Clone)]
pub struct ConsoleHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock_state();
        f.debug_struct("ConsoleHub")
            .field("ring_capacity", &state.ring_capacity)
            .field("clients", &state.clients.len())
            .field("total_bytes", &state.total_bytes)
            .finish()
    }
}

struct Inner {
    state: Mutex<State>,
    input: RwLock<Option<Arc<dyn ConsoleInput>>>,
    client_queue_bytes: usize,
}

struct State {
    ring: Ring,
    ring_capacity: usize,
    clients: Vec<ClientSlot>,
    next_client_id: u64,
    /// Bytes the guest wrote since the hub was created.
    total_bytes: u64,
}

/// What to do with a client whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Close the client's connection.
    Disconnect,
    /// Discard the bytes that do not fit.
    DropBytes,
}

struct ClientSlot {
    id: u64,
    queue: VecDeque<u8>,
    overflow: Overflow,
    /// Bytes discarded since the client last drained its queue (`Overflow::DropBytes`).
    dropped: u64,
    /// Signalled when the queue goes from empty to non-empty.
    data_ready: Arc<Notify>,
    /// Signalled when the hub disconnects the client.
    kicked: Arc<Notify>,
}

/// Handles a newly registered client needs.
pub(crate) struct Registration {
    pub(crate) id: u64,
    /// The ring contents at the moment of registration; live output continues from there.
    pub(crate) backlog: Vec<u8>,
    data_ready: Arc<Notify>,
    kicked: Arc<Notify>,
}

/// How a client connection ended.
#[derive(Debug)]
pub(crate) enum ClientEnd {
    /// The client closed its side of the connection.
    Detached,
    /// The client fell too far behind and was disconnected.
    Overrun,
    /// Writing console output to the client failed.
    WriteFailed(io::Error),
    /// Reading the client's keystrokes failed.
    ReadFailed(io::Error),
}

impl ConsoleHub {
    /// Creates a hub that keeps the last `ring_bytes` bytes of output for late attachers.
    pub fn new(ring_bytes: usize) -> Self {
        Self::with_client_queue(ring_bytes, DEFAULT_CLIENT_QUEUE_BYTES)
    }

    /// Like [`ConsoleHub::new`], with an explicit bound on each client's queue of unsent
    /// output (see the module documentation for what happens when it fills).
    pub fn with_client_queue(ring_bytes: usize, client_queue_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    ring: Ring::new(ring_bytes),
                    ring_capacity: ring_bytes,
                    clients: Vec::new(),
                    next_client_id: 0,
                    total_bytes: 0,
                }),
                input: RwLock::new(None),
                client_queue_bytes,
            }),
        }
    }

    /// A writer for guest output, to hand to the UART. It never blocks on clients.
    pub fn output(&self) -> ConsoleOutput {
        ConsoleOutput {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Sets where bytes typed by clients go, replacing any previous input.
    pub fn set_input(&self, input: Arc<dyn ConsoleInput>) {
        let mut slot = self
            .inner
            .input
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *slot = Some(input);
    }

    /// The ring contents: the last `ring_bytes` bytes of output, oldest first.
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.lock_state().ring.to_vec()
    }

    /// Number of clients attached right now (socket clients and stdio).
    pub fn client_count(&self) -> usize {
        self.inner.lock_state().clients.len()
    }

    /// Total number of bytes the guest has written since the hub was created.
    pub fn total_output_bytes(&self) -> u64 {
        self.inner.lock_state().total_bytes
    }

    /// Passes bytes typed by a client to the input, or drops them if none is set.
    pub(crate) fn send_input(&self, bytes: &[u8]) {
        let input = self
            .inner
            .input
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match input {
            Some(input) => input.send(bytes),
            None => debug!(
                len = bytes.len(),
                "console input dropped: no input attached"
            ),
        }
    }

    /// Registers a client. The backlog and the registration are taken under the same lock
    /// as writes, so the client sees every byte exactly once: backlog, then its queue.
    pub(crate) fn register(&self, overflow: Overflow) -> Registration {
        let mut state = self.inner.lock_state();
        let id = state.next_client_id;
        state.next_client_id += 1;
        let data_ready = Arc::new(Notify::new());
        let kicked = Arc::new(Notify::new());
        state.clients.push(ClientSlot {
            id,
            queue: VecDeque::new(),
            overflow,
            dropped: 0,
            data_ready: Arc::clone(&data_ready),
            kicked: Arc::clone(&kicked),
        });
        Registration {
            id,
            backlog: state.ring.to_vec(),
            data_ready,
            kicked,
        }
    }

    /// Removes a client; does nothing if the hub already dropped it.
    pub(crate) fn unregister(&self, id: u64) {
        self.inner.lock_state().clients.retain(|c| c.id != id);
    }

    /// Moves the client's queued output into `out` (which is cleared first). Returns the
    /// number of bytes discarded since the last drain, or `None` if the client is no
    /// longer registered.
    fn drain(&self, id: u64, out: &mut Vec<u8>) -> Option<u64> {
        out.clear();
        let mut state = self.inner.lock_state();
        let slot = state.clients.iter_mut().find(|c| c.id == id)?;
        out.extend(slot.queue.drain(..));
        Some(std::mem::take(&mut slot.dropped))
    }

    /// Runs one client until it detaches, fails or is disconnected: sends the backlog and
    /// then live output to `writer`, and passes what `reader` yields to the input.
    ///
    /// With no reader the client is output-only. The client is unregistered when this
    /// returns or when its future is dropped.
    pub(crate) async fn run_client<R, W>(
        &self,
        registration: Registration,
        reader: Option<R>,
        mut writer: W,
    ) -> ClientEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Registration {
            id,
            backlog,
            data_ready,
            kicked,
        } = registration;
        let _unregister = UnregisterOnDrop { hub: self, id };

        let output = async {
            writer.write_all(&backlog).await?;
            writer.flush().await?;
            drop(backlog);
            let mut chunk = Vec::new();
            loop {
                data_ready.notified().await;
                let Some(dropped) = self.drain(id, &mut chunk) else {
                    // Unregistered by the hub; the `kicked` branch reports why.
                    std::future::pending::<()>().await;
                    return Ok(());
                };
                if dropped > 0 {
                    warn!(
                        client = id,
                        dropped, "console client fell behind; output lost"
                    );
                }
                if !chunk.is_empty() {
                    writer.write_all(&chunk).await?;
                    writer.flush().await?;
                    // What the guest writes meanwhile waits in the queue (its notification
                    // is kept), so the next drain takes it in one piece.
                    tokio::time::sleep(OUTPUT_BATCH_INTERVAL).await;
                }
            }
        };

        let input = async {
            let Some(mut reader) = reader else {
                return std::future::pending::<io::Result<()>>().await;
            };
            let mut buf = vec![0u8; INPUT_CHUNK];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                self.send_input(&buf[..n]);
            }
        };

        tokio::select! {
            biased;
            () = kicked.notified() => ClientEnd::Overrun,
            result = output => match result {
                Ok(()) => ClientEnd::Detached,
                Err(err) => ClientEnd::WriteFailed(err),
            },
            result = input => match result {
                Ok(()) => ClientEnd::Detached,
                Err(err) => ClientEnd::ReadFailed(err),
            },
        }
    }

    /// Registers a client and runs it (see [`ConsoleHub::run_client`]), logging how it
    /// ended.
    pub(crate) fn client_task<R, W>(
        &self,
        overflow: Overflow,
        reader: Option<R>,
        writer: W,
    ) -> impl Future<Output = ClientEnd> + Send + 'static
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let hub = self.clone();
        let registration = self.register(overflow);
        async move {
            let id = registration.id;
            info!(
                client = id,
                backlog = registration.backlog.len(),
                "console client attached"
            );
            let end = hub.run_client(registration, reader, writer).await;
            match &end {
                ClientEnd::Detached => info!(client = id, "console client detached"),
                ClientEnd::Overrun => warn!(
                    client = id,
                    limit = hub.inner.client_queue_bytes,
                    "console client disconnected: it fell too far behind the output"
                ),
                ClientEnd::WriteFailed(err) => {
                    info!(client = id, error = %err, "console client gone: writing output failed")
                }
                ClientEnd::ReadFailed(err) => {
                    info!(client = id, error = %err, "console client gone: reading input failed")
                }
            }
            end
        }
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere cannot have
        // left it half-written: keep going with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let limit = self.client_queue_bytes;
        let mut state = self.lock_state();
        state.ring.push(data);
        state.total_bytes += data.len() as u64;
        state.clients.retain_mut(|client| {
            let room = limit.saturating_sub(client.queue.len());
            let was_empty = client.queue.is_empty();
            if data.len() <= room {
                client.queue.extend(data);
            } else {
                match client.overflow {
                    Overflow::Disconnect => {
                        client.kicked.notify_one();
                        return false;
                    }
                    Overflow::DropBytes => {
                        client.queue.extend(&data[..room]);
                        client.dropped += (data.len() - room) as u64;
                    }
                }
            }
            if was_empty && !client.queue.is_empty() {
                client.data_ready.notify_one();
            }
            true
        });
    }
}

/// Unregisters a client when its connection future finishes or is dropped.
struct UnregisterOnDrop<'a> {
    hub: &'a ConsoleHub,
    id: u64,
}

impl Drop for UnregisterOnDrop<'_> {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

/// The guest-output side of a [`ConsoleHub`], written by the UART emulation.
///
/// `write` always accepts the whole buffer and returns without waiting for any client.
pub struct ConsoleOutput {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").finish_non_exhaustive()
    }
}

impl io::Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<u8>>);

    impl ConsoleInput for Collect {
        fn send(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    #[test]
    fn hub_and_output_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<ConsoleHub>();
        send::<ConsoleOutput>();
    }

    #[test]
    fn snapshot_follows_output_and_wraps() {
        let hub = ConsoleHub::new(10);
        let mut out = hub.output();
        out.write_all(b"0123456789").unwrap();
        assert_eq!(hub.snapshot(), b"0123456789");
        out.write_all(b"abc").unwrap();
        assert_eq!(hub.snapshot(), b"3456789abc");
        assert_eq!(hub.total_output_bytes(), 13);
    }

    #[test]
    fn registration_backlog_is_the_ring_and_queue_continues_it() {
        let hub = ConsoleHub::new(64);
        let mut out = hub.output();
        out.write_all(b"early ").unwrap();
        let reg = hub.register(Overflow::Disconnect);
        assert_eq!(reg.backlog, b"early ");
        out.write_all(b"late").unwrap();
        let mut chunk = Vec::new();
        assert_eq!(hub.drain(reg.id, &mut chunk), Some(0));
        assert_eq!(chunk, b"late");
        hub.unregister(reg.id);
        assert_eq!(hub.drain(reg.id, &mut chunk), None);
    }

    #[test]
    fn full_queue_disconnects_socket_clients_and_drops_bytes_for_stdio() {
        let hub = ConsoleHub::with_client_queue(0, 4);
        let socket = hub.register(Overflow::Disconnect);
        let stdio = hub.register(Overflow::DropBytes);
        let mut out = hub.output();
        out.write_all(b"abc").unwrap();
        assert_eq!(hub.client_count(), 2);
        out.write_all(b"de").unwrap();
        assert_eq!(hub.client_count(), 1, "the socket client is dropped");
        let mut chunk = Vec::new();
        assert_eq!(hub.drain(socket.id, &mut chunk), None);
        assert_eq!(hub.drain(stdio.id, &mut chunk), Some(1));
        assert_eq!(chunk, b"abcd");
    }

    #[test]
    fn input_goes_to_the_current_sink() {
        let hub = ConsoleHub::new(0);
        hub.send_input(b"lost");
        let sink = Arc::new(Collect::default());
        hub.set_input(sink.clone());
        hub.send_input(b"ls\r");
        assert_eq!(*sink.0.lock().unwrap(), b"ls\r");
    }

    /// An `AsyncWrite` that records the length of every write it is given.
    #[derive(Clone, Default)]
    struct WriteLog(Arc<Mutex<Vec<usize>>>);

    impl WriteLog {
        fn bytes(&self) -> usize {
            self.0.lock().unwrap().iter().sum()
        }

        fn writes(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl AsyncWrite for WriteLog {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn until_written(log: &WriteLog, bytes: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while log.bytes() < bytes {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the client writes the output");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_byte_at_a_time_reaches_the_client_in_batches() {
        let hub = ConsoleHub::new(0);
        let log = WriteLog::default();
        let task = tokio::spawn(hub.client_task(
            Overflow::Disconnect,
            None::<tokio::io::Empty>,
            log.clone(),
        ));
        while hub.client_count() == 0 {
            tokio::task::yield_now().await;
        }
        let mut out = hub.output();
        out.write_all(b"$").unwrap();
        until_written(&log, 1).await;
        assert_eq!(
            log.writes(),
            1,
            "the first byte after a quiet spell goes out alone"
        );
        // The way a UART sees a line of boot log: a byte per port write, 50 us apart.
        let writer = std::thread::spawn(move || {
            for _ in 0..200 {
                out.write_all(b"x").unwrap();
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        until_written(&log, 201).await;
        writer.join().unwrap();
        assert!(
            log.writes() <= 1 + 200 / 20,
            "200 one-byte writes took {} client writes",
            log.writes() - 1
        );
        task.abort();
    }

    #[tokio::test]
    async fn run_client_streams_backlog_then_live_output_and_forwards_input() {
        let hub = ConsoleHub::new(1024);
        let sink = Arc::new(Collect::default());
        hub.set_input(sink.clone());
        hub.output().write_all(b"boot\n").unwrap();

        let (client_side, hub_side) = tokio::io::duplex(4096);
        let (hub_read, hub_write) = tokio::io::split(hub_side);
        let task = tokio::spawn(hub.client_task(Overflow::Disconnect, Some(hub_read), hub_write));
        let (mut client_read, mut client_write) = tokio::io::split(client_side);

        let mut buf = [0u8; 5];
        client_read.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"boot\n");
        hub.output().write_all(b"live").unwrap();
        let mut buf = [0u8; 4];
        client_read.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"live");

        client_write.write_all(b"root\n").await.unwrap();
        client_write.shutdown().await.unwrap();
        let end = task.await.unwrap();
        assert!(matches!(end, ClientEnd::Detached), "{end:?}");
        assert_eq!(*sink.0.lock().unwrap(), b"root\n");
        assert_eq!(hub.client_count(), 0);
    }
}
