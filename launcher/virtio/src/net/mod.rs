//! virtio-net over a tap device (virtio 1.x §5.1): one RX and one TX queue, no offloads,
//! no mergeable RX buffers.

mod tap;

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
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
use crate::queue_pass::{check_avail, Health, Pass, CHAINS_PER_PASS};
use crate::rate_limit::{Alarm, RateLimit, RateLimiter};
use crate::worker::{drain_event, EpollContext, EventHandler, EventToken, Worker};

use tap::Tap;

/// Size of `struct virtio_net_hdr_v1`, which precedes every frame on both queues (and on
/// the tap, through `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (header included) we move: a 65535-byte MTU plus Ethernet and VLAN headers.
const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65535 + 18;
const QUEUE_SIZE: u16 = 256;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// Bytes of configuration space: mac[6], status.
const CONFIG_LEN: usize = 8;
const KIND: &str = "virtio-net";

/// Why a net device could not be created, or why a frame could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap name cannot be an interface name.
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidTapName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {source}")]
    OpenTun {
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed (no CAP_NET_ADMIN, or an existing non-tap interface of that name).
    #[error("cannot create or attach tap {name} (TUNSETIFF): {source}")]
    CreateTap {
        /// Tap name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("cannot set the vnet header size of tap {name}: {source}")]
    VnetHeaderSize {
        /// Tap name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The tap could not be set up.
    #[error("cannot set tap {name} up: {source}")]
    LinkUp {
        /// Tap name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// A TX chain is shorter than the virtio-net header.
    #[error("tx chain {head}: {len} bytes, shorter than the 12-byte virtio-net header")]
    TxFrameTooShort {
        /// Chain head.
        head: u16,
        /// Readable bytes.
        len: usize,
    },
    /// A TX chain is larger than any frame we accept.
    #[error("tx chain {head}: {len} bytes, more than the {max}-byte maximum frame")]
    TxFrameTooLong {
        /// Chain head.
        head: u16,
        /// Readable bytes.
        len: usize,
        /// Largest accepted frame.
        max: usize,
    },
    /// An RX frame does not fit the driver's buffer (no mergeable RX buffers).
    #[error("rx chain {head}: frame of {frame} bytes does not fit the {capacity}-byte buffer")]
    RxBufferTooSmall {
        /// Chain head.
        head: u16,
        /// Frame length with header.
        frame: usize,
        /// Writable bytes of the chain.
        capacity: usize,
    },
    /// A frame read from the tap is shorter than the vnet header.
    #[error("rx frame of {len} bytes is shorter than the 12-byte vnet header")]
    RxFrameTooShort {
        /// Bytes read.
        len: usize,
    },
    /// Reading from or writing to the tap failed.
    #[error("tap {name}: {op} failed: {source}")]
    TapIo {
        /// Tap name.
        name: String,
        /// "read" or "write".
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor chain is malformed.
    #[error("malformed chain: {0}")]
    Chain(#[from] ChainError),
}

/// A virtio-net device over a tap.
pub struct NetDevice {
    tap: Arc<Tap>,
    mac: [u8; 6],
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    rate_limit: RateLimit,
    /// Each direction's buckets while the device is inactive (kept across resets).
    limiters: Limiters,
    /// The budget of the guest-triggered log lines of the configuration space.
    config_log: LogLimiter,
    worker: Option<Worker<NetWorker>>,
}

/// The buckets of the two directions: RX (tap to guest) and TX (guest to tap) are limited
/// separately, each to the device's [`RateLimit`].
#[derive(Debug, Clone, Default)]
struct Limiters {
    rx: Option<RateLimiter>,
    tx: Option<RateLimiter>,
}

impl Limiters {
    fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            rx: RateLimiter::new(limit, now),
            tx: RateLimiter::new(limit, now),
        }
    }
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("tap", &self.tap.name())
            .field("mac", &format_mac(&self.mac))
            .field("rate_limit", &self.rate_limit)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl NetDevice {
    /// Opens the tap `tap_name` (the kernel creates a non-persistent one if it does not
    /// exist) and builds a device with guest MAC `mac`.
    pub fn new(tap_name: &str, mac: [u8; 6]) -> Result<Self, NetError> {
        let tap = Tap::open(tap_name)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        tracing::info!(tap = tap.name(), mac = %format_mac(&mac), "virtio-net tap opened");
        Ok(Self {
            tap: Arc::new(tap),
            mac,
            avail_features: COMMON_FEATURES | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS),
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
            rate_limit: RateLimit::default(),
            limiters: Limiters::default(),
            config_log: LogLimiter::default(),
            worker: None,
        })
    }

    /// Limits the bytes and frames per second moved in each direction (the guest's sends
    /// and its receives are limited separately), from the next activation on; the buckets
    /// start full.
    pub fn set_rate_limit(&mut self, limit: RateLimit) {
        tracing::info!(tap = self.tap.name(), ?limit, "virtio-net rate limit");
        self.rate_limit = limit;
        self.limiters = Limiters::new(limit);
    }

    /// The configured rate limit (per direction).
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }

    /// Name of the tap interface (as the kernel reported it).
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Guest MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sets the host side of the tap administratively up (needed before frames flow when
    /// the tap was created by [`NetDevice::new`]).
    pub fn set_link_up(&self) -> Result<(), NetError> {
        self.tap.set_up()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

/// "52:54:00:12:34:56".
fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
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
        // The MAC is writable only for legacy drivers without VIRTIO_NET_F_CTRL_MAC_ADDR.
        guest_warn!(
            self.config_log,
            "config-write",
            tap = self.tap.name(),
            offset,
            len = data.len(),
            "write to the read-only virtio-net configuration, ignored"
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
        debug_assert_eq!((rx.index, tx.index), (RX_QUEUE, TX_QUEUE));
        let mut handler = NetWorker::new(mem, rx, tx, self.tap.clone(), interrupt);
        if self.limiters.rx.is_some() || self.limiters.tx.is_some() {
            // The alarm first: when it cannot be made, the buckets stay with the device.
            let alarm = Alarm::new().map_err(|source| ActivateError::Backend {
                device: KIND,
                source,
            })?;
            let limiters = std::mem::take(&mut self.limiters);
            handler.throttle = Some(NetThrottle {
                rx: limiters.rx,
                tx: limiters.tx,
                alarm,
            });
        }
        let name = format!("{KIND}-{}", self.tap.name());
        let worker = Worker::spawn(&name, handler).map_err(|source| {
            self.limiters = Limiters::new(self.rate_limit);
            ActivateError::Worker {
                device: KIND,
                source,
            }
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            // The buckets stay as drained as they were; full ones only after a panic.
            self.limiters = match worker.stop() {
                Some(handler) => handler
                    .throttle
                    .map(|throttle| Limiters {
                        rx: throttle.rx,
                        tx: throttle.tx,
                    })
                    .unwrap_or_default(),
                None => Limiters::new(self.rate_limit),
            };
        }
        self.acked_features = 0;
    }

    fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

/// Epoll dispatch ids of the net worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetToken {
    RxQueue,
    TxQueue,
    Tap,
    /// The rate-limit alarm: a held RX frame or throttled TX chains may now move.
    Throttle,
}

impl EventToken for NetToken {
    fn to_raw(self) -> u64 {
        match self {
            NetToken::RxQueue => 0,
            NetToken::TxQueue => 1,
            NetToken::Tap => 2,
            NetToken::Throttle => 3,
        }
    }

    fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(NetToken::RxQueue),
            1 => Some(NetToken::TxQueue),
            2 => Some(NetToken::Tap),
            3 => Some(NetToken::Throttle),
            _ => None,
        }
    }
}

/// The worker side: both queues and the tap.
struct NetWorker {
    mem: GuestMemoryMmap<()>,
    rx: Queue,
    rx_event: EventFd,
    tx: Queue,
    tx_event: EventFd,
    tap: Arc<Tap>,
    interrupt: Arc<Interrupt>,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
    /// A readable tap is waiting for the guest to post RX buffers.
    rx_waiting: bool,
    /// Length of a frame read from the tap into `rx_frame` that the RX limit held back.
    rx_held: Option<usize>,
    throttle: Option<NetThrottle>,
    health: Health,
    log: LogLimiter,
}

/// A rate-limited net worker's buckets (per direction) and its wake-up.
struct NetThrottle {
    rx: Option<RateLimiter>,
    tx: Option<RateLimiter>,
    alarm: Alarm,
}

impl NetThrottle {
    /// Admits a frame of `len` bytes in one direction, or arms the alarm for when it would
    /// be admitted and refuses it.
    fn admit(&mut self, tx: bool, len: usize, now: Instant) -> bool {
        let limiter = if tx { &mut self.tx } else { &mut self.rx };
        let Some(limiter) = limiter else {
            return true;
        };
        match limiter.admit(len as u64, now) {
            Ok(()) => true,
            Err(wait) => {
                tracing::trace!(tx, len, ?wait, "virtio-net throttled");
                self.alarm.ring_after(wait, now);
                false
            }
        }
    }
}

impl NetWorker {
    fn new(
        mem: GuestMemoryMmap<()>,
        rx: DeviceQueue,
        tx: DeviceQueue,
        tap: Arc<Tap>,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        Self {
            mem,
            rx: rx.queue,
            rx_event: rx.event,
            tx: tx.queue,
            tx_event: tx.event,
            tap,
            interrupt,
            rx_frame: vec![0; MAX_FRAME_LEN],
            tx_frame: vec![0; MAX_FRAME_LEN],
            rx_waiting: false,
            rx_held: None,
            throttle: None,
            health: Health::default(),
            log: LogLimiter::default(),
        }
    }

    fn signal(&self) {
        if let Err(err) = self.interrupt.signal_used_queue() {
            tracing::error!(%err, "cannot raise the used-buffer interrupt");
        }
    }

    /// Whether the guest posted an RX buffer we have not used yet (a corrupted RX ring
    /// marks the device broken and counts as none).
    fn rx_buffer_available(&mut self) -> bool {
        if let Err(fault) = check_avail(&self.rx, &self.mem) {
            self.health.fail(KIND, "rx", &fault, &self.interrupt);
            return false;
        }
        match self.rx.avail_idx(&self.mem, Ordering::Acquire) {
            Ok(idx) => idx.0 != self.rx.next_avail(),
            Err(err) => {
                tracing::error!(%err, "cannot read the rx available index");
                false
            }
        }
    }

    /// Moves frames from the tap to RX buffers until the tap is empty or the guest has no
    /// buffer left (then the next RX queue notification resumes). Returns whether buffers
    /// were used.
    fn process_rx(&mut self) -> bool {
        let mut used_any = false;
        for frame in 0.. {
            if frame == CHAINS_PER_PASS {
                // The tap stays readable (edge-triggered): come back through the RX queue
                // event after the loop looked at its other events.
                if let Err(err) = self.rx_event.write(1) {
                    tracing::error!(%err, "cannot re-arm rx; it resumes on the next notification");
                }
                break;
            }
            if !self.rx_buffer_available() {
                if !self.rx_waiting {
                    tracing::trace!("no rx buffers; waiting for the driver");
                }
                self.rx_waiting = true;
                break;
            }
            let read = match self.rx_held.take() {
                Some(len) => Ok(len),
                None => self.tap.read_frame(&mut self.rx_frame),
            };
            let len = match read {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.rx_waiting = false;
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let err = NetError::TapIo {
                        name: self.tap.name().to_string(),
                        op: "read",
                        source,
                    };
                    tracing::warn!(%err, "rx stopped");
                    break;
                }
            };
            if let Some(throttle) = &mut self.throttle {
                if !throttle.admit(false, len, Instant::now()) {
                    // Hold the frame; the alarm brings the worker back for it (the tap
                    // is edge-triggered and would not report it again).
                    self.rx_held = Some(len);
                    break;
                }
            }
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                tracing::error!("rx buffer vanished; frame dropped");
                break;
            };
            let head = chain.head_index();
            let result = ChainBuffers::parse(chain)
                .map_err(NetError::from)
                .and_then(|buffers| {
                    rx_frame_to_chain(&self.mem, &buffers, &mut self.rx_frame[..len])
                });
            match result {
                Ok(written) => {
                    if let Err(err) = self.rx.add_used(&self.mem, head, written) {
                        tracing::error!(head, %err, "cannot return an rx buffer");
                    }
                    used_any = true;
                }
                Err(err @ NetError::RxBufferTooSmall { .. }) => {
                    // Keep the buffer for the next (smaller) frame.
                    guest_warn!(self.log, "rx-buffer-too-small", %err, "rx frame dropped");
                    self.rx.set_next_avail(self.rx.next_avail().wrapping_sub(1));
                }
                Err(err) => {
                    guest_warn!(self.log, "bad-rx-buffer", %err, "rx frame dropped, buffer returned empty");
                    if let Err(err) = self.rx.add_used(&self.mem, head, 0) {
                        tracing::error!(head, %err, "cannot return an rx buffer");
                    }
                    used_any = true;
                }
            }
        }
        used_any
    }

    /// Sends every pending TX chain to the tap; returns whether buffers were used.
    fn process_tx(&mut self) -> bool {
        let mut used_any = false;
        let mut pass = Pass::new();
        while let Some(chain) = pass.next_healthy(
            &mut self.tx,
            &self.mem,
            &mut self.health,
            (KIND, "tx"),
            &self.interrupt,
        ) {
            let head = chain.head_index();
            let frame = ChainBuffers::parse(chain)
                .map_err(NetError::from)
                .and_then(|buffers| tx_frame_from_chain(&self.mem, &buffers, &mut self.tx_frame));
            if let (Ok(len), Some(throttle)) = (&frame, &mut self.throttle) {
                if !throttle.admit(true, *len, Instant::now()) {
                    // Leave it (and the chains behind it) in the available ring.
                    self.tx.go_to_previous_position();
                    return used_any;
                }
            }
            let result = frame.and_then(|len| {
                self.tap
                    .write_frame(&self.tx_frame[..len])
                    .map_err(|source| NetError::TapIo {
                        name: self.tap.name().to_string(),
                        op: "write",
                        source,
                    })
            });
            if let Err(err) = result {
                guest_warn!(self.log, "bad-tx-frame", %err, "tx frame dropped");
            }
            if let Err(err) = self.tx.add_used(&self.mem, head, 0) {
                tracing::error!(head, %err, "cannot return a tx buffer");
            }
            used_any = true;
        }
        pass.finish(&self.tx_event);
        used_any
    }
}

impl EventHandler for NetWorker {
    type Token = NetToken;

    fn register(&mut self, ctx: &EpollContext<'_, NetToken>) -> io::Result<()> {
        ctx.add(&self.rx_event, NetToken::RxQueue, EventSet::IN)?;
        ctx.add(&self.tx_event, NetToken::TxQueue, EventSet::IN)?;
        if let Some(throttle) = &self.throttle {
            ctx.add(&throttle.alarm, NetToken::Throttle, EventSet::IN)?;
        }
        // Edge-triggered: after an edge we read until the tap is empty or the guest runs out
        // of buffers; in the latter case the RX queue notification resumes reading.
        ctx.add(
            self.tap.as_ref(),
            NetToken::Tap,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )
    }

    fn handle_event(&mut self, _: &EpollContext<'_, NetToken>, token: NetToken, events: EventSet) {
        let span = tracing::trace_span!("virtio_net_event", tap = self.tap.name(), ?token);
        let _entered = span.enter();
        if self.health.is_broken() {
            drain_event(&self.rx_event);
            drain_event(&self.tx_event);
            return;
        }
        let used = match token {
            NetToken::RxQueue => {
                drain_event(&self.rx_event);
                self.process_rx()
            }
            NetToken::TxQueue => {
                drain_event(&self.tx_event);
                self.process_tx()
            }
            NetToken::Tap => {
                if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    tracing::warn!(?events, "tap reported an error condition");
                }
                self.process_rx()
            }
            NetToken::Throttle => {
                if let Some(throttle) = &mut self.throttle {
                    throttle.alarm.acknowledge();
                }
                let received = self.process_rx();
                self.process_tx() || received
            }
        };
        if used {
            self.signal();
        }
    }

    fn fail(&mut self, fault: &dyn std::fmt::Display) {
        self.health.fail(KIND, "all", fault, &self.interrupt);
    }
}

/// Gathers a TX chain (virtio-net header and frame) into `frame`; returns its length.
fn tx_frame_from_chain(
    mem: &GuestMemoryMmap<()>,
    buffers: &ChainBuffers,
    frame: &mut [u8],
) -> Result<usize, NetError> {
    let head = buffers.head();
    let len = buffers.readable_len();
    if len < VNET_HDR_LEN {
        return Err(NetError::TxFrameTooShort { head, len });
    }
    if len > frame.len() {
        return Err(NetError::TxFrameTooLong {
            head,
            len,
            max: frame.len(),
        });
    }
    Ok(buffers.gather(mem, 0, &mut frame[..len])?)
}

/// Scatters an RX frame (vnet header and frame, as read from the tap) into an RX chain,
/// setting `num_buffers` to 1; returns the bytes written.
fn rx_frame_to_chain(
    mem: &GuestMemoryMmap<()>,
    buffers: &ChainBuffers,
    frame: &mut [u8],
) -> Result<u32, NetError> {
    let capacity = buffers.writable_len();
    if frame.len() > capacity {
        return Err(NetError::RxBufferTooSmall {
            head: buffers.head(),
            frame: frame.len(),
            capacity,
        });
    }
    if frame.len() < VNET_HDR_LEN {
        return Err(NetError::RxFrameTooShort { len: frame.len() });
    }
    // The tap fills the first 10 header bytes; num_buffers is ours (always 1 without
    // VIRTIO_NET_F_MRG_RXBUF).
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    let written = buffers.scatter(mem, 0, frame)?;
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests;
