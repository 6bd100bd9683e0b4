//! virtio-rng (virtio 1.x §5.4): one request queue, no configuration space, no
//! device-specific features. Each device-writable buffer the driver posts is filled with
//! bytes from the host kernel's CSPRNG (`getrandom(2)`), and the used length is the number
//! of bytes written.
//!
//! The entropy handed to the guest is rate-limited by a token bucket of `bytes_per_second`
//! tokens per second holding at most one second's worth (the burst). A request is served
//! whole (or, when it is larger than the burst, with a full bucket's worth) once the bucket
//! holds enough tokens for it; until then it stays in the available ring, and so do the
//! requests behind it. The worker then sets its rate-limit [`Alarm`] for the moment the
//! bucket will hold enough, and serves the queue again when it rings (a guest notification
//! in the meantime also re-checks the bucket): the same [`RateLimiter`] and alarm as
//! virtio-blk and virtio-net. The bucket survives driver resets, so resetting the device
//! does not refill it.

use std::io;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
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
use crate::queue_pass::{Health, Pass};
use crate::rate_limit::{Alarm, RateLimiter};
use crate::worker::{drain_event, EpollContext, EventHandler, EventToken, Worker};

/// Size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Bytes of host entropy fetched per `getrandom` call (and the scratch buffer size).
const CHUNK: usize = 64 * 1024;
const KIND: &str = "virtio-rng";

/// Why a virtio-rng device could not be created, or a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// A rate of zero bytes per second would never serve a request.
    #[error("virtio-rng rate must be at least 1 byte per second")]
    ZeroRate,
    /// The host kernel refused to hand out random bytes.
    #[error("getrandom failed: {0}")]
    Entropy(#[source] io::Error),
    /// The descriptor chain is malformed.
    #[error("malformed chain: {0}")]
    Chain(#[from] ChainError),
}

/// A virtio entropy device fed from `getrandom(2)`, rate-limited.
pub struct RngDevice {
    bytes_per_second: NonZeroU64,
    /// The bucket while the device is inactive (kept across resets).
    limiter: Option<RateLimiter>,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    /// The budget of the guest-triggered log lines of the configuration space.
    config_log: LogLimiter,
    worker: Option<Worker<RngWorker>>,
}

impl std::fmt::Debug for RngDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RngDevice")
            .field("bytes_per_second", &self.bytes_per_second)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl RngDevice {
    /// A device handing the guest at most `bytes_per_second` bytes per second, with a
    /// burst of one second's worth (the bucket starts full).
    pub fn new(bytes_per_second: u64) -> Result<Self, RngError> {
        let rate = NonZeroU64::new(bytes_per_second).ok_or(RngError::ZeroRate)?;
        tracing::info!(bytes_per_second, "virtio-rng created");
        Ok(Self {
            bytes_per_second: rate,
            limiter: Some(RateLimiter::bytes(rate, Instant::now())),
            avail_features: COMMON_FEATURES,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            config_log: LogLimiter::default(),
            worker: None,
        })
    }

    /// The configured rate.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second.get()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl VirtioDevice for RngDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
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
        // No configuration space: everything reads as zero.
        read_config_bytes(&[], offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            self.config_log,
            "config-write",
            offset,
            len = data.len(),
            "write to the (empty) virtio-rng configuration, ignored"
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
        expect_queue_count(KIND, &queues, 1)?;
        let Some(queue) = queues.into_iter().next() else {
            return Err(ActivateError::QueueCount {
                device: KIND,
                expected: 1,
                actual: 0,
            });
        };
        let alarm = Alarm::new().map_err(|source| ActivateError::Backend {
            device: KIND,
            source,
        })?;
        // No bucket only after a worker panicked: start over with a full one.
        let limiter = self
            .limiter
            .take()
            .unwrap_or_else(|| RateLimiter::bytes(self.bytes_per_second, Instant::now()));
        let handler = RngWorker {
            mem,
            queue: queue.queue,
            queue_event: queue.event,
            interrupt,
            alarm,
            limiter,
            burst: self.bytes_per_second.get(),
            scratch: Vec::new(),
            health: Health::default(),
            log: LogLimiter::default(),
        };
        let worker = match Worker::spawn(KIND, handler) {
            Ok(worker) => worker,
            Err(source) => {
                // The bucket went down with the handler; start over with a full one.
                self.limiter = Some(RateLimiter::bytes(self.bytes_per_second, Instant::now()));
                return Err(ActivateError::Worker {
                    device: KIND,
                    source,
                });
            }
        };
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            // The bucket stays as drained as it was: a reset must not buy a new burst.
            self.limiter = worker.stop().map(|handler| handler.limiter);
        }
        self.acked_features = 0;
    }

    fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

/// Fills `buf` from the host kernel's CSPRNG (blocking only before the host pool is
/// initialised, which is long past once a VM runs).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RngError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable slice of `rest.len()` bytes for the whole
        // call; getrandom writes at most that many bytes into it.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngError::Entropy(err));
        }
        // 0 <= ret <= rest.len().
        filled += ret as usize;
    }
    Ok(())
}

/// Epoll dispatch ids of the rng worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RngToken {
    Queue,
    Timer,
}

impl EventToken for RngToken {
    fn to_raw(self) -> u64 {
        match self {
            RngToken::Queue => 0,
            RngToken::Timer => 1,
        }
    }

    fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(RngToken::Queue),
            1 => Some(RngToken::Timer),
            _ => None,
        }
    }
}

/// The worker side: the request queue, the bucket and its alarm.
struct RngWorker {
    mem: GuestMemoryMmap<()>,
    queue: Queue,
    queue_event: EventFd,
    interrupt: Arc<Interrupt>,
    alarm: Alarm,
    limiter: RateLimiter,
    /// The bucket's capacity: the most one request gets.
    burst: u64,
    /// Reused host buffer for `getrandom` (grows up to [`CHUNK`] bytes).
    scratch: Vec<u8>,
    health: Health,
    log: LogLimiter,
}

/// What serving the queue ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every available request was served.
    Drained,
    /// The bucket is short: the next request waits this long.
    Throttled(Duration),
}

impl EventHandler for RngWorker {
    type Token = RngToken;

    fn register(&mut self, ctx: &EpollContext<'_, RngToken>) -> io::Result<()> {
        ctx.add(&self.queue_event, RngToken::Queue, EventSet::IN)?;
        ctx.add(&self.alarm, RngToken::Timer, EventSet::IN)
    }

    fn handle_event(&mut self, _: &EpollContext<'_, RngToken>, token: RngToken, _: EventSet) {
        let span = tracing::trace_span!("virtio_rng_event", ?token);
        let _entered = span.enter();
        match token {
            RngToken::Queue => drain_event(&self.queue_event),
            RngToken::Timer => self.alarm.acknowledge(),
        }
        if self.health.is_broken() {
            return;
        }
        let now = Instant::now();
        let (used, outcome) = self.process_queue(now);
        if used {
            if let Err(err) = self.interrupt.signal_used_queue() {
                tracing::error!(%err, "cannot raise the used-buffer interrupt");
            }
        }
        if let Outcome::Throttled(wait) = outcome {
            tracing::trace!(?wait, "virtio-rng throttled");
            self.alarm.ring_after(wait, now);
        }
    }

    fn fail(&mut self, fault: &dyn std::fmt::Display) {
        self.health.fail(KIND, "requests", fault, &self.interrupt);
    }
}

impl RngWorker {
    /// Serves available requests while the bucket allows; returns whether any request was
    /// returned to the used ring, and whether the queue was drained or throttled.
    fn process_queue(&mut self, now: Instant) -> (bool, Outcome) {
        let mut used_any = false;
        let mut pass = Pass::new();
        while let Some(chain) = pass.next_healthy(
            &mut self.queue,
            &self.mem,
            &mut self.health,
            (KIND, "requests"),
            &self.interrupt,
        ) {
            let head = chain.head_index();
            let used_len = match ChainBuffers::parse(chain) {
                Ok(buffers) => {
                    let wanted = buffers.writable_len() as u64;
                    // A request larger than the burst gets a full bucket's worth.
                    let grant = wanted.min(self.burst);
                    if let Err(wait) = self.limiter.admit(grant, now) {
                        // Leave it (and everything behind it) in the available ring.
                        self.queue.go_to_previous_position();
                        return (used_any, Outcome::Throttled(wait));
                    }
                    self.serve(&buffers, grant)
                }
                Err(err) => {
                    let err = RngError::from(err);
                    guest_warn!(self.log, "malformed-chain", head, %err, "virtio-rng request returned empty");
                    0
                }
            };
            if let Err(err) = self.queue.add_used(&self.mem, head, used_len) {
                tracing::error!(head, %err, "cannot return a virtio-rng request");
            }
            used_any = true;
        }
        pass.finish(&self.queue_event);
        (used_any, Outcome::Drained)
    }

    /// Writes `len` random bytes to the writable part of `buffers`; returns the used length
    /// (what was actually written; 0 when the request had no writable buffer).
    fn serve(&mut self, buffers: &ChainBuffers, len: u64) -> u32 {
        let head = buffers.head();
        if buffers.writable().is_empty() {
            guest_warn!(
                self.log,
                "no-writable-buffer",
                head,
                readable = buffers.readable_len(),
                "virtio-rng request without a device-writable buffer, returned empty"
            );
            return 0;
        }
        let total = usize::try_from(len).unwrap_or(usize::MAX);
        let mut written = 0usize;
        while written < total {
            let step = (total - written).min(CHUNK);
            if self.scratch.len() < step {
                self.scratch.resize(step, 0);
            }
            let chunk = &mut self.scratch[..step];
            if let Err(err) = fill_random(chunk) {
                tracing::error!(head, %err, "virtio-rng request cut short");
                break;
            }
            match buffers.scatter(&self.mem, written, chunk) {
                Ok(copied) => {
                    written += copied;
                    if copied < step {
                        break;
                    }
                }
                Err(err) => {
                    let err = RngError::from(err);
                    tracing::warn!(head, %err, "virtio-rng request cut short");
                    break;
                }
            }
        }
        // Leave no copy of guest entropy behind in host memory.
        self.scratch.fill(0);
        tracing::trace!(head, written, "virtio-rng request served");
        u32::try_from(written).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests;
