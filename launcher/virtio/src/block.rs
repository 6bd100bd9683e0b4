//! virtio-blk over a raw or qcow2 image file (virtio 1.x §5.2).
//!
//! One request queue served synchronously by the worker thread. Raw images move data with
//! positioned reads and writes (`pread64`/`pwrite64`) straight between the image and guest
//! memory; qcow2 images (per-VM copy-on-write overlays) go through `ironvisor-diskimage`
//! with a bounce buffer of at most [`BOUNCE_CHUNK`] bytes, whatever length a segment
//! claims.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use ironvisor_diskimage::DiskFormat;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap, ReadVolatile, VolatileMemoryError,
    VolatileSlice, WriteVolatile,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{sub_range, ChainBuffers, ChainError};
use crate::device::{
    expect_queue_count, read_config_bytes, ActivateError, DeviceQueue, VirtioDevice,
    COMMON_FEATURES,
};
use crate::interrupt::Interrupt;
use crate::log_limit::{guest_warn, LogLimiter};
use crate::queue_pass::{Health, Pass};
use crate::rate_limit::{Alarm, RateLimit, RateLimiter};
use crate::worker::{drain_event, EpollContext, EventHandler, EventToken, Worker};

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Size of a request header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// Length of the GET_ID answer.
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The largest host buffer a request to a non-raw image bounces through: a segment is
/// moved in pieces of this size, so a guest naming a 4 GiB segment costs the host 1 MiB.
pub(crate) const BOUNCE_CHUNK: usize = 1 << 20;
/// Bytes of configuration space we expose: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_LEN: usize = 24;
const KIND: &str = "virtio-blk";

/// Why a block device could not be created, or why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The serial is longer than the 20 bytes GET_ID can return.
    #[error("disk serial {serial:?} is {len} bytes long, at most 20 are allowed")]
    SerialTooLong {
        /// The serial.
        serial: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The image could not be opened.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// Image path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The image size could not be determined.
    #[error("cannot determine the size of disk image {}: {source}", path.display())]
    Size {
        /// Image path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The image size is not a whole number of sectors.
    #[error("disk image {} is {size} bytes, not a multiple of 512", path.display())]
    SizeNotSectorMultiple {
        /// Image path.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// A request chain has no device-writable byte for the status.
    #[error("request {head}: no device-writable byte for the status")]
    MissingStatus {
        /// Chain head.
        head: u16,
    },
    /// A request's readable part is shorter than the 16-byte header.
    #[error("request {head}: header is {len} bytes, 16 expected")]
    HeaderTooShort {
        /// Chain head.
        head: u16,
        /// Readable bytes found.
        len: usize,
    },
    /// The data length of a read or write is not a whole number of sectors.
    #[error("request {head}: data length {len} is not a multiple of 512")]
    DataNotSectorMultiple {
        /// Chain head.
        head: u16,
        /// Data length in bytes.
        len: usize,
    },
    /// A read or write goes beyond the end of the disk.
    #[error(
        "request {head}: {len} bytes at sector {sector} go past the disk end ({capacity} sectors)"
    )]
    OutOfRange {
        /// Chain head.
        head: u16,
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: usize,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("request {head}: write to a read-only disk")]
    ReadOnly {
        /// Chain head.
        head: u16,
    },
    /// A request type this device does not implement.
    #[error("request {head}: unsupported request type {request_type}")]
    Unsupported {
        /// Chain head.
        head: u16,
        /// The `type` field.
        request_type: u32,
    },
    /// Moving data between the image and guest memory failed.
    #[error("request {head}: {op} of {len} bytes at image offset {offset} failed: {source}")]
    Io {
        /// Chain head.
        head: u16,
        /// "read" or "write".
        op: &'static str,
        /// Image byte offset.
        offset: u64,
        /// Length of the failed piece.
        len: usize,
        /// What failed.
        #[source]
        source: GuestMemoryError,
    },
    /// A qcow2 image could not be opened.
    #[error(transparent)]
    Image(#[from] ironvisor_diskimage::DiskImageError),
    /// Reading or writing a qcow2 image failed.
    #[error("request {head}: {op} of {len} bytes at disk offset {offset} failed: {source}")]
    ImageIo {
        /// Chain head.
        head: u16,
        /// "read" or "write".
        op: &'static str,
        /// Guest-visible disk byte offset.
        offset: u64,
        /// Length of the failed piece.
        len: usize,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// fdatasync failed.
    #[error("request {head}: flushing disk image {} failed: {source}", path.display())]
    Flush {
        /// Chain head.
        head: u16,
        /// Image path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor chain is malformed.
    #[error("malformed request chain: {0}")]
    Chain(#[from] ChainError),
}

impl BlockError {
    /// The virtio-blk status reported to the driver for this failure.
    fn status(&self) -> u8 {
        match self {
            BlockError::Unsupported { .. } => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Where the guest's sectors live.
enum Backing {
    /// A raw file: guest offset == file offset, zero-copy.
    Raw(File),
    /// Any other format, through `ironvisor-diskimage` (used by the worker thread only;
    /// the lock is never contended).
    Image(Mutex<Box<dyn ironvisor_diskimage::DiskImage>>),
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::Raw(_) => "Raw",
            Backing::Image(_) => "Image",
        })
    }
}

/// The backing image, shared by the device and its worker.
#[derive(Debug)]
struct DiskImage {
    backing: Backing,
    path: PathBuf,
    read_only: bool,
    capacity_sectors: u64,
    serial: [u8; ID_LEN],
}

impl DiskImage {
    /// Copies `len` disk bytes at `offset` into guest memory at `addr`.
    fn read_into(
        &self,
        head: u16,
        mem: &GuestMemoryMmap<()>,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> Result<(), BlockError> {
        match &self.backing {
            Backing::Raw(file) => {
                let mut src = FileAt::new(file, offset);
                mem.read_exact_volatile_from(addr, &mut src, len)
                    .map_err(|source| BlockError::Io {
                        head,
                        op: "read",
                        offset,
                        len,
                        source,
                    })
            }
            Backing::Image(image) => {
                let mut buf = vec![0u8; len.min(BOUNCE_CHUNK)];
                for (done, piece) in bounce_pieces(len) {
                    let at = offset + done as u64;
                    let chunk = &mut buf[..piece];
                    lock(image)
                        .read_at(chunk, at)
                        .map_err(|source| BlockError::ImageIo {
                            head,
                            op: "read",
                            offset: at,
                            len: piece,
                            source,
                        })?;
                    mem.write_slice(chunk, offset_addr(addr, done))
                        .map_err(|source| BlockError::Io {
                            head,
                            op: "read",
                            offset: at,
                            len: piece,
                            source,
                        })?;
                }
                Ok(())
            }
        }
    }

    /// Copies `len` bytes of guest memory at `addr` to the disk at `offset`.
    fn write_from(
        &self,
        head: u16,
        mem: &GuestMemoryMmap<()>,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> Result<(), BlockError> {
        match &self.backing {
            Backing::Raw(file) => {
                let mut dst = FileAt::new(file, offset);
                mem.write_all_volatile_to(addr, &mut dst, len)
                    .map_err(|source| BlockError::Io {
                        head,
                        op: "write",
                        offset,
                        len,
                        source,
                    })
            }
            Backing::Image(image) => {
                let mut buf = vec![0u8; len.min(BOUNCE_CHUNK)];
                for (done, piece) in bounce_pieces(len) {
                    let at = offset + done as u64;
                    let chunk = &mut buf[..piece];
                    mem.read_slice(chunk, offset_addr(addr, done))
                        .map_err(|source| BlockError::Io {
                            head,
                            op: "write",
                            offset: at,
                            len: piece,
                            source,
                        })?;
                    lock(image)
                        .write_at(chunk, at)
                        .map_err(|source| BlockError::ImageIo {
                            head,
                            op: "write",
                            offset: at,
                            len: piece,
                            source,
                        })?;
                }
                Ok(())
            }
        }
    }

    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()> {
        match &self.backing {
            Backing::Raw(file) => file.sync_data(),
            Backing::Image(image) => lock(image).flush(),
        }
    }

    /// Checks that `len` bytes at `sector` are whole sectors inside the disk; returns the
    /// byte offset.
    fn check_range(&self, head: u16, sector: u64, len: usize) -> Result<u64, BlockError> {
        if !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::DataNotSectorMultiple { head, len });
        }
        let out_of_range = || BlockError::OutOfRange {
            head,
            sector,
            len,
            capacity: self.capacity_sectors,
        };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
        let end = offset.checked_add(len as u64).ok_or_else(out_of_range)?;
        if end > self.capacity_sectors * SECTOR_SIZE {
            return Err(out_of_range());
        }
        Ok(offset)
    }
}

/// `(bytes already moved, length of the next piece)` for a transfer of `len` bytes in
/// pieces of at most [`BOUNCE_CHUNK`].
fn bounce_pieces(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(BOUNCE_CHUNK)
        .map(move |done| (done, (len - done).min(BOUNCE_CHUNK)))
}

fn offset_addr(addr: GuestAddress, offset: usize) -> GuestAddress {
    GuestAddress(addr.0.wrapping_add(offset as u64))
}

/// A virtio-blk device over a raw image file.
pub struct BlockDevice {
    disk: Arc<DiskImage>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 1],
    rate_limit: RateLimit,
    /// The buckets while the device is inactive (kept across resets, so that resetting
    /// the device does not buy a new burst).
    limiter: Option<RateLimiter>,
    /// The budget of the guest-triggered log lines of the configuration space.
    config_log: LogLimiter,
    worker: Option<Worker<BlockWorker>>,
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("path", &self.disk.path)
            .field("read_only", &self.disk.read_only)
            .field("capacity_sectors", &self.disk.capacity_sectors)
            .field("rate_limit", &self.rate_limit)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl BlockDevice {
    /// Opens the raw image at `path` (`O_RDONLY` when `read_only`) whose size must be a
    /// multiple of 512; `serial` (at most 20 bytes) is what GET_ID returns.
    pub fn new(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        Self::with_format(path, DiskFormat::Raw, read_only, serial)
    }

    /// Opens the image at `path` in `format` (as recorded when the disk was made: never
    /// probed, since a guest can write any header into a raw disk).
    pub fn with_format(
        path: &Path,
        format: DiskFormat,
        read_only: bool,
        serial: &str,
    ) -> Result<Self, BlockError> {
        if serial.len() > ID_LEN {
            return Err(BlockError::SerialTooLong {
                serial: serial.to_string(),
                len: serial.len(),
            });
        }
        let (backing, size) = match format {
            DiskFormat::Raw => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .open(path)
                    .map_err(|source| BlockError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?;
                // Seeking works for regular files and block devices alike.
                let size = file
                    .seek(SeekFrom::End(0))
                    .map_err(|source| BlockError::Size {
                        path: path.to_path_buf(),
                        source,
                    })?;
                (Backing::Raw(file), size)
            }
            DiskFormat::Qcow2 => {
                let image = ironvisor_diskimage::open_as(path, format, read_only)?;
                let size = image.size();
                (Backing::Image(Mutex::new(image)), size)
            }
        };
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::SizeNotSectorMultiple {
                path: path.to_path_buf(),
                size,
            });
        }
        let capacity_sectors = size / SECTOR_SIZE;
        let mut id = [0u8; ID_LEN];
        id[..serial.len()].copy_from_slice(serial.as_bytes());

        let mut avail_features = COMMON_FEATURES
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        // seg_max: data segments per request; header and status take two more descriptors.
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        tracing::info!(
            path = %path.display(),
            %format,
            read_only,
            capacity_sectors,
            "virtio-blk image opened"
        );
        Ok(Self {
            disk: Arc::new(DiskImage {
                backing,
                path: path.to_path_buf(),
                read_only,
                capacity_sectors,
                serial: id,
            }),
            avail_features,
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE],
            rate_limit: RateLimit::default(),
            limiter: None,
            config_log: LogLimiter::default(),
            worker: None,
        })
    }

    /// Limits the bytes (request data) and requests per second the guest gets served,
    /// from the next activation on; each bucket starts full.
    pub fn set_rate_limit(&mut self, limit: RateLimit) {
        tracing::info!(path = %self.disk.path.display(), ?limit, "virtio-blk rate limit");
        self.rate_limit = limit;
        self.limiter = RateLimiter::new(limit, Instant::now());
    }

    /// The configured rate limit.
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// Path of the backing image.
    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// Whether the disk is read-only.
    pub fn is_read_only(&self) -> bool {
        self.disk.read_only
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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
        guest_warn!(
            self.config_log,
            "config-write",
            path = %self.disk.path.display(),
            offset,
            len = data.len(),
            "write to the read-only virtio-blk configuration, ignored"
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
        let throttle = match self.limiter.take() {
            Some(limiter) => match Alarm::new() {
                Ok(alarm) => Some(Throttle { limiter, alarm }),
                Err(source) => {
                    self.limiter = Some(limiter);
                    return Err(ActivateError::Backend {
                        device: KIND,
                        source,
                    });
                }
            },
            None => None,
        };
        let handler = BlockWorker {
            mem,
            queue: queue.queue,
            queue_event: queue.event,
            interrupt,
            disk: self.disk.clone(),
            throttle,
            health: Health::default(),
            log: LogLimiter::default(),
        };
        let worker = Worker::spawn(KIND, handler).map_err(|source| {
            // The buckets went down with the handler; start over with full ones.
            self.limiter = RateLimiter::new(self.rate_limit, Instant::now());
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
            let handler = worker.stop();
            // The buckets stay as drained as they were; full ones only after a panic.
            self.limiter = match handler {
                Some(handler) => handler.throttle.map(|throttle| throttle.limiter),
                None => RateLimiter::new(self.rate_limit, Instant::now()),
            };
        }
        self.acked_features = 0;
    }

    fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

/// Epoll dispatch ids of the block worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockToken {
    Queue,
    /// The rate-limit alarm: throttled requests may now be served.
    Throttle,
}

impl EventToken for BlockToken {
    fn to_raw(self) -> u64 {
        match self {
            BlockToken::Queue => 0,
            BlockToken::Throttle => 1,
        }
    }

    fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(BlockToken::Queue),
            1 => Some(BlockToken::Throttle),
            _ => None,
        }
    }
}

/// A rate-limited worker's buckets and its wake-up.
struct Throttle {
    limiter: RateLimiter,
    alarm: Alarm,
}

/// The worker side: the request queue and the image.
struct BlockWorker {
    mem: GuestMemoryMmap<()>,
    queue: Queue,
    queue_event: EventFd,
    interrupt: Arc<Interrupt>,
    disk: Arc<DiskImage>,
    throttle: Option<Throttle>,
    health: Health,
    log: LogLimiter,
}

impl EventHandler for BlockWorker {
    type Token = BlockToken;

    fn register(&mut self, ctx: &EpollContext<'_, BlockToken>) -> io::Result<()> {
        ctx.add(&self.queue_event, BlockToken::Queue, EventSet::IN)?;
        if let Some(throttle) = &self.throttle {
            ctx.add(&throttle.alarm, BlockToken::Throttle, EventSet::IN)?;
        }
        Ok(())
    }

    fn handle_event(&mut self, _: &EpollContext<'_, BlockToken>, token: BlockToken, _: EventSet) {
        match token {
            BlockToken::Queue => drain_event(&self.queue_event),
            BlockToken::Throttle => {
                if let Some(throttle) = &mut self.throttle {
                    throttle.alarm.acknowledge();
                }
            }
        }
        if self.health.is_broken() {
            return;
        }
        if self.process_queue(Instant::now()) {
            if let Err(err) = self.interrupt.signal_used_queue() {
                tracing::error!(%err, "cannot raise the used-buffer interrupt");
            }
        }
    }

    fn fail(&mut self, fault: &dyn std::fmt::Display) {
        self.health.fail(KIND, "requests", fault, &self.interrupt);
    }
}

impl BlockWorker {
    /// Serves the available requests, one bounded pass, as far as the rate limit allows at
    /// `now`; returns whether any was completed. A throttled request stays in the available
    /// ring (and so do those behind it) until the alarm rings.
    fn process_queue(&mut self, now: Instant) -> bool {
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
                    if let Some(throttle) = &mut self.throttle {
                        if let Err(wait) = throttle.limiter.admit(data_len(&buffers), now) {
                            self.queue.go_to_previous_position();
                            tracing::trace!(head, ?wait, "virtio-blk throttled");
                            throttle.alarm.ring_after(wait, now);
                            return used_any;
                        }
                    }
                    self.serve(&buffers)
                }
                Err(err) => {
                    guest_warn!(self.log, "malformed-chain", path = %self.disk.path.display(), %err, "request dropped");
                    0
                }
            };
            if let Err(err) = self.queue.add_used(&self.mem, head, used_len) {
                tracing::error!(head, %err, "cannot return a request to the used ring");
            }
            used_any = true;
        }
        pass.finish(&self.queue_event);
        used_any
    }

    /// Executes one request and writes its status; returns the bytes written to the
    /// device-writable part.
    fn serve(&self, buffers: &ChainBuffers) -> u32 {
        let head = buffers.head();
        let span = tracing::trace_span!("virtio_blk_request", head);
        let _entered = span.enter();
        let writable = buffers.writable_len();
        if writable == 0 {
            guest_warn!(
                self.log,
                "missing-status",
                path = %self.disk.path.display(),
                err = %BlockError::MissingStatus { head },
                "request dropped"
            );
            return 0;
        }
        let (status, data_len) = match execute(&self.disk, &self.mem, buffers) {
            Ok(len) => (VIRTIO_BLK_S_OK as u8, len),
            Err(err) => {
                guest_warn!(self.log, "request-failed", path = %self.disk.path.display(), %err, "request failed");
                (err.status(), 0)
            }
        };
        if let Err(err) = buffers.scatter(&self.mem, writable - 1, &[status]) {
            tracing::error!(%err, "cannot write the request status");
        }
        u32::try_from(data_len + 1).unwrap_or(u32::MAX)
    }
}

/// The data bytes a request moves, as the byte limit counts them: its buffers without the
/// header and the status byte.
fn data_len(buffers: &ChainBuffers) -> u64 {
    let total = buffers.readable_len() as u64 + buffers.writable_len() as u64;
    total.saturating_sub(HEADER_LEN as u64 + 1)
}

/// Executes the request in `buffers`; returns the data bytes written to guest memory.
fn execute(
    disk: &DiskImage,
    mem: &GuestMemoryMmap<()>,
    buffers: &ChainBuffers,
) -> Result<usize, BlockError> {
    let head = buffers.head();
    let mut header = [0u8; HEADER_LEN];
    let got = buffers.gather(mem, 0, &mut header)?;
    if got < HEADER_LEN {
        return Err(BlockError::HeaderTooShort { head, len: got });
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    // The status byte is the last writable byte; data comes before it.
    let writable_data = buffers.writable_len().saturating_sub(1);
    match request_type {
        VIRTIO_BLK_T_IN => {
            let mut offset = disk.check_range(head, sector, writable_data)?;
            for (segment, seg_offset, len) in sub_range(buffers.writable(), 0, writable_data) {
                let addr = GuestAddress(segment.addr.0 + seg_offset as u64);
                disk.read_into(head, mem, addr, offset, len)?;
                offset += len as u64;
            }
            Ok(writable_data)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(BlockError::ReadOnly { head });
            }
            let data_len = buffers.readable_len() - HEADER_LEN;
            let mut offset = disk.check_range(head, sector, data_len)?;
            for (segment, seg_offset, len) in sub_range(buffers.readable(), HEADER_LEN, data_len) {
                let addr = GuestAddress(segment.addr.0 + seg_offset as u64);
                disk.write_from(head, mem, addr, offset, len)?;
                offset += len as u64;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.flush().map_err(|source| BlockError::Flush {
                    head,
                    path: disk.path.clone(),
                    source,
                })?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let len = writable_data.min(ID_LEN);
            Ok(buffers.scatter(mem, 0, &disk.serial[..len])?)
        }
        request_type => Err(BlockError::Unsupported { head, request_type }),
    }
}

/// The image lock; a worker that panicked while holding it left the image as consistent as
/// any crash would.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The image seen as a stream starting at a byte offset, read and written with
/// `pread64`/`pwrite64` so that no shared file position is involved.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        Self { file, offset }
    }

    fn os_offset(&self) -> Result<libc::off64_t, VolatileMemoryError> {
        libc::off64_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::new(
                io::ErrorKind::InvalidInput,
                "image offset does not fit off64_t",
            ))
        })
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard_mut();
            let offset = self.os_offset()?;
            // SAFETY: the fd is valid for the lifetime of `self.file`; `guard` points to
            // `rest.len()` bytes of mapped guest memory that stay mapped while the guard lives,
            // and pread64 writes at most that many bytes there.
            let ret = unsafe {
                libc::pread64(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    offset,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                buf.bitmap().mark_dirty(done, buf.len() - done);
                return Err(VolatileMemoryError::IOError(err));
            }
            let read = ret as usize;
            if read == 0 {
                break;
            }
            buf.bitmap().mark_dirty(done, read);
            done += read;
            self.offset += read as u64;
        }
        Ok(done)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard();
            let offset = self.os_offset()?;
            // SAFETY: the fd is valid for the lifetime of `self.file`; `guard` points to
            // `rest.len()` readable bytes of mapped guest memory while the guard lives.
            let ret = unsafe {
                libc::pwrite64(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    offset,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VolatileMemoryError::IOError(err));
            }
            let written = ret as usize;
            if written == 0 {
                break;
            }
            done += written;
            self.offset += written as u64;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
