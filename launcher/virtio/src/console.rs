//! virtio-console with a single port (no `VIRTIO_CONSOLE_F_MULTIPORT`, virtio 1.x §5.3)
//! whose host side is a unix socket: the channel for a future guest agent. The guest sees
//! the port as `/dev/hvc0`.
//!
//! One client at a time: a new connection replaces the previous one. Bytes from the client
//! wait in a bounded buffer until the guest posts receive buffers (beyond that the socket
//! itself applies back-pressure); guest output goes to the client, or is dropped when no
//! client is connected.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{ChainBuffers, ChainError};
use crate::device::{
    expect_queue_count, read_config_bytes, ActivateError, DeviceQueue, VirtioDevice,
    COMMON_FEATURES,
};
use crate::interrupt::Interrupt;
use crate::log_limit::{guest_warn, LogLimiter};
use crate::queue_pass::{Health, Pass};
use crate::worker::{drain_event, EpollContext, EventHandler, EventToken, Worker};

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

const QUEUE_SIZE: u16 = 256;
/// Bytes of configuration space: cols, rows, max_nr_ports, emerg_wr.
const CONFIG_LEN: usize = 12;
/// Client bytes buffered while the guest has no receive buffers.
const INPUT_CAPACITY: usize = 64 * 1024;
/// Guest bytes buffered while the client socket is full.
const OUTPUT_CAPACITY: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;
const KIND: &str = "virtio-console";

/// Why a console device could not be created, or why its socket I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The directory that should hold the socket does not exist.
    #[error("cannot create console socket {}: directory {} does not exist", path.display(), dir.display())]
    ParentMissing {
        /// Socket path.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// Another process is accepting connections on the socket path.
    #[error("console socket {} is in use by another process", path.display())]
    InUse {
        /// Socket path.
        path: PathBuf,
    },
    /// A stale file at the socket path could not be removed.
    #[error("cannot remove stale file at console socket path {}: {source}", path.display())]
    RemoveStale {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// bind/listen failed, or the listener could not be made non-blocking.
    #[error("cannot listen on console socket {}: {source}", path.display())]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// I/O with the connected client failed.
    #[error("console socket {}: client {op} failed: {source}", path.display())]
    Client {
        /// Socket path.
        path: PathBuf,
        /// "accept", "read" or "write".
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor chain is malformed.
    #[error("malformed chain: {0}")]
    Chain(#[from] ChainError),
}

/// A single-port virtio-console over a host unix socket.
pub struct ConsoleDevice {
    path: PathBuf,
    listener: Arc<UnixListener>,
    /// The connected client while the device is inactive (kept across resets).
    client: Option<UnixStream>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    /// The budget of the guest-triggered log lines of the configuration space.
    config_log: LogLimiter,
    worker: Option<Worker<ConsoleWorker>>,
}

impl std::fmt::Debug for ConsoleDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleDevice")
            .field("path", &self.path)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl ConsoleDevice {
    /// Listens on a unix socket at `socket_path`, replacing a stale file there (but not a
    /// socket another process still serves); the parent directory must exist.
    pub fn new(socket_path: &Path) -> Result<Self, ConsoleError> {
        let path = socket_path.to_path_buf();
        let dir = match socket_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(ConsoleError::ParentMissing { path, dir });
        }
        if UnixStream::connect(socket_path).is_ok() {
            // Someone is serving this socket: it is not stale.
            return Err(ConsoleError::InUse { path });
        }
        match std::fs::remove_file(socket_path) {
            Ok(()) => {
                tracing::debug!(path = %socket_path.display(), "removed stale console socket")
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConsoleError::RemoveStale { path, source }),
        }
        let listener = UnixListener::bind(socket_path).map_err(|source| ConsoleError::Listen {
            path: path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ConsoleError::Listen {
                path: path.clone(),
                source,
            })?;
        let mut config = [0u8; CONFIG_LEN];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        tracing::info!(path = %socket_path.display(), "virtio-console listening");
        Ok(Self {
            path,
            listener: Arc::new(listener),
            client: None,
            avail_features: COMMON_FEATURES,
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
            config_log: LogLimiter::default(),
            worker: None,
        })
    }

    /// The host socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl Drop for ConsoleDevice {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot remove the console socket")
            }
        }
    }
}

impl VirtioDevice for ConsoleDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr exists only with VIRTIO_CONSOLE_F_EMERG_WRITE, which we do not offer.
        guest_warn!(
            self.config_log,
            "config-write",
            path = %self.path.display(),
            offset,
            len = data.len(),
            "write to the virtio-console configuration, ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        interrupt: Arc<Interrupt>,
        queues: Vec<DeviceQueue>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive { device: KIND });
        }
        expect_queue_count(KIND, &queues, 2)?;
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                device: KIND,
                expected: 2,
                actual: 0,
            });
        };
        let handler = ConsoleWorker {
            mem,
            rx: rx.queue,
            rx_event: rx.event,
            tx: tx.queue,
            tx_event: tx.event,
            interrupt,
            path: self.path.clone(),
            listener: self.listener.clone(),
            client: self.client.take(),
            input: VecDeque::new(),
            input_full: false,
            output: VecDeque::new(),
            health: Health::default(),
            log: LogLimiter::default(),
        };
        let worker = Worker::spawn(KIND, handler).map_err(|source| ActivateError::Worker {
            device: KIND,
            source,
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            // The client stays connected across a guest driver reset.
            self.client = worker.stop().and_then(|handler| handler.client);
        }
        self.acked_features = 0;
    }

    fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

/// Epoll dispatch ids of the console worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConsoleToken {
    RxQueue,
    TxQueue,
    Listener,
    Client,
}

impl EventToken for ConsoleToken {
    fn to_raw(self) -> u64 {
        match self {
            ConsoleToken::RxQueue => 0,
            ConsoleToken::TxQueue => 1,
            ConsoleToken::Listener => 2,
            ConsoleToken::Client => 3,
        }
    }

    fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(ConsoleToken::RxQueue),
            1 => Some(ConsoleToken::TxQueue),
            2 => Some(ConsoleToken::Listener),
            3 => Some(ConsoleToken::Client),
            _ => None,
        }
    }
}

/// Events of a connected client: edge-triggered, so every handler drains what it can.
fn client_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// The worker side: both queues, the listener and the client.
struct ConsoleWorker {
    mem: GuestMemoryMmap<()>,
    rx: Queue,
    rx_event: EventFd,
    tx: Queue,
    tx_event: EventFd,
    interrupt: Arc<Interrupt>,
    path: PathBuf,
    listener: Arc<UnixListener>,
    client: Option<UnixStream>,
    /// Client bytes waiting for guest receive buffers.
    input: VecDeque<u8>,
    /// Reading from the client stopped because `input` is full.
    input_full: bool,
    /// Guest bytes waiting for the client socket.
    output: VecDeque<u8>,
    health: Health,
    log: LogLimiter,
}

impl EventHandler for ConsoleWorker {
    type Token = ConsoleToken;

    fn register(&mut self, ctx: &EpollContext<'_, ConsoleToken>) -> io::Result<()> {
        ctx.add(&self.rx_event, ConsoleToken::RxQueue, EventSet::IN)?;
        ctx.add(&self.tx_event, ConsoleToken::TxQueue, EventSet::IN)?;
        ctx.add(self.listener.as_ref(), ConsoleToken::Listener, EventSet::IN)?;
        if let Some(client) = &self.client {
            ctx.add(client, ConsoleToken::Client, client_events())?;
        }
        Ok(())
    }

    fn handle_event(
        &mut self,
        ctx: &EpollContext<'_, ConsoleToken>,
        token: ConsoleToken,
        events: EventSet,
    ) {
        let span = tracing::trace_span!("virtio_console_event", ?token);
        let _entered = span.enter();
        let mut used = false;
        match token {
            ConsoleToken::RxQueue => {
                drain_event(&self.rx_event);
                used |= self.fill_rx();
                if self.input_full {
                    used |= self.read_client(ctx);
                }
            }
            ConsoleToken::TxQueue => {
                drain_event(&self.tx_event);
                used |= self.process_tx(ctx);
            }
            ConsoleToken::Listener => {
                self.accept_clients(ctx);
                used |= self.read_client(ctx);
            }
            ConsoleToken::Client => {
                if events.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    used |= self.read_client(ctx);
                }
                if events.contains(EventSet::OUT) && self.client.is_some() {
                    self.flush_output(ctx);
                }
            }
        }
        if token != ConsoleToken::TxQueue {
            // Output may have been held back for a client that has since drained its
            // socket or gone away; either way pending guest output can move again.
            used |= self.process_tx(ctx);
        }
        if used {
            if let Err(err) = self.interrupt.signal_used_queue() {
                tracing::error!(%err, "cannot raise the used-buffer interrupt");
            }
        }
    }

    fn fail(&mut self, fault: &dyn std::fmt::Display) {
        self.health.fail(KIND, "all", fault, &self.interrupt);
    }
}

impl ConsoleWorker {
    fn client_error(&self, op: &'static str, source: io::Error) -> ConsoleError {
        ConsoleError::Client {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Accepts pending connections; the newest one becomes the client.
    fn accept_clients(&mut self, ctx: &EpollContext<'_, ConsoleToken>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let err = self.client_error("accept", source);
                    tracing::warn!(%err, "console accept failed");
                    return;
                }
            };
            if let Err(source) = stream.set_nonblocking(true) {
                let err = self.client_error("accept", source);
                tracing::warn!(%err, "console client refused");
                continue;
            }
            if self.client.is_some() {
                tracing::info!(path = %self.path.display(), "new console client replaces the previous one");
                self.disconnect(ctx);
            }
            if let Err(source) = ctx.add(&stream, ConsoleToken::Client, client_events()) {
                let err = self.client_error("accept", source);
                tracing::warn!(%err, "console client refused");
                continue;
            }
            tracing::info!(path = %self.path.display(), "console client connected");
            self.client = Some(stream);
        }
    }

    fn disconnect(&mut self, ctx: &EpollContext<'_, ConsoleToken>) {
        if let Some(client) = self.client.take() {
            if let Err(err) = ctx.delete(&client) {
                tracing::warn!(%err, "cannot unregister the console client");
            }
            tracing::info!(path = %self.path.display(), "console client disconnected");
        }
        self.output.clear();
        self.input_full = false;
    }

    /// Reads the client into `input` (until it would block, hangs up, or `input` is full),
    /// then hands what it can to the guest. Returns whether RX buffers were used.
    fn read_client(&mut self, ctx: &EpollContext<'_, ConsoleToken>) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        let mut used = false;
        while let Some(client) = self.client.as_mut() {
            let room = INPUT_CAPACITY - self.input.len();
            if room == 0 {
                // Resumed by the next RX queue notification.
                self.input_full = true;
                break;
            }
            let want = room.min(READ_CHUNK);
            match client.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.disconnect(ctx);
                    break;
                }
                Ok(read) => {
                    self.input.extend(&chunk[..read]);
                    used |= self.fill_rx();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.input_full = false;
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let err = self.client_error("read", source);
                    tracing::warn!(%err, "dropping the console client");
                    self.disconnect(ctx);
                    break;
                }
            }
        }
        used | self.fill_rx()
    }

    /// Copies buffered client bytes into guest receive buffers; returns whether any buffer
    /// was used.
    fn fill_rx(&mut self) -> bool {
        let mut used = false;
        if self.health.is_broken() {
            return false;
        }
        let mut pass = Pass::new();
        while !self.input.is_empty() {
            let Some(chain) = pass.next_healthy(
                &mut self.rx,
                &self.mem,
                &mut self.health,
                (KIND, "rx"),
                &self.interrupt,
            ) else {
                break;
            };
            let head = chain.head_index();
            let written = match ChainBuffers::parse(chain) {
                Ok(buffers) => {
                    let len = buffers.writable_len().min(self.input.len());
                    let data = self.input.make_contiguous();
                    match buffers.scatter(&self.mem, 0, &data[..len]) {
                        Ok(written) => {
                            self.input.drain(..written);
                            written
                        }
                        Err(err) => {
                            guest_warn!(self.log, "bad-rx-buffer", %err, "console rx buffer returned empty");
                            0
                        }
                    }
                }
                Err(err) => {
                    guest_warn!(self.log, "bad-rx-buffer", %err, "console rx buffer returned empty");
                    0
                }
            };
            if let Err(err) =
                self.rx
                    .add_used(&self.mem, head, u32::try_from(written).unwrap_or(u32::MAX))
            {
                tracing::error!(head, %err, "cannot return a console rx buffer");
            }
            used = true;
        }
        pass.finish(&self.rx_event);
        used
    }

    /// Consumes guest output while there is room to buffer it, then writes it to the client
    /// (dropping it when none is connected). Returns whether TX buffers were used.
    fn process_tx(&mut self, ctx: &EpollContext<'_, ConsoleToken>) -> bool {
        let mut used = false;
        if self.health.is_broken() {
            return false;
        }
        let mut pass = Pass::new();
        while self.output.len() < OUTPUT_CAPACITY {
            let Some(chain) = pass.next_healthy(
                &mut self.tx,
                &self.mem,
                &mut self.health,
                (KIND, "tx"),
                &self.interrupt,
            ) else {
                break;
            };
            let head = chain.head_index();
            match ChainBuffers::parse(chain) {
                Ok(buffers) => self.take_output(&buffers),
                Err(err) => {
                    guest_warn!(self.log, "bad-tx-chain", %err, "console tx chain dropped");
                }
            }
            if let Err(err) = self.tx.add_used(&self.mem, head, 0) {
                tracing::error!(head, %err, "cannot return a console tx buffer");
            }
            used = true;
        }
        pass.finish(&self.tx_event);
        self.flush_output(ctx);
        used
    }

    /// Copies one TX chain into `output`, never more than the room left in it: the chain's
    /// length is the guest's to choose (descriptors may all point at one buffer, up to the
    /// chain's 4 GiB cap), so the copy is bounded by what the host buffers, not by it.
    /// What does not fit is dropped, as output is when no client is connected.
    fn take_output(&mut self, buffers: &ChainBuffers) {
        let offered = buffers.readable_len();
        if self.client.is_none() {
            tracing::trace!(len = offered, "console output dropped, no client");
            return;
        }
        let room = OUTPUT_CAPACITY.saturating_sub(self.output.len());
        let mut data = vec![0u8; offered.min(room)];
        match buffers.gather(&self.mem, 0, &mut data) {
            Ok(len) => {
                self.output.extend(&data[..len]);
                if offered > len {
                    tracing::debug!(
                        offered,
                        kept = len,
                        "console tx chain larger than the output buffer; the rest is dropped"
                    );
                }
            }
            Err(err) => {
                guest_warn!(self.log, "bad-tx-chain", %err, "console tx chain dropped");
            }
        }
    }

    /// Writes buffered output to the client until it would block.
    fn flush_output(&mut self, ctx: &EpollContext<'_, ConsoleToken>) {
        while !self.output.is_empty() {
            let Some(client) = self.client.as_ref() else {
                self.output.clear();
                return;
            };
            let (front, _) = self.output.as_slices();
            match send_nosignal(client, front) {
                Ok(written) => {
                    self.output.drain(..written);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let err = self.client_error("write", source);
                    tracing::warn!(%err, "dropping the console client");
                    self.disconnect(ctx);
                    return;
                }
            }
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL`, so a vanished client is an `EPIPE` error rather than a
/// `SIGPIPE` for the whole launcher.
fn send_nosignal(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for reads of `data.len()` bytes and the fd is owned
    // by `stream` for the duration of the call.
    let ret = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast::<libc::c_void>(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

#[cfg(test)]
mod tests;
