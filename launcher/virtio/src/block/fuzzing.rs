//! virtio-blk requests from fuzzer bytes, served by the real worker handler over small raw
//! and qcow2 images.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use vmm_sys_util::epoll::EventSet;

use super::{BlockDevice, BlockToken, BlockWorker, DiskFormat, DiskImage, SECTOR_SIZE};
use crate::fuzzing::guest::{event, memory, Input, QueueLayout, PASSES};
use crate::interrupt::Interrupt;
use crate::log_limit::LogLimiter;
use crate::queue_pass::Health;
use crate::worker::fuzzing::with_context;
use crate::worker::EventHandler;

/// Sectors of every fuzz disk (64 KiB).
const DISK_SECTORS: u64 = 128;

/// The disks a request can go to, made once per process.
struct Disks {
    _dir: tempfile::TempDir,
    disks: Vec<Arc<DiskImage>>,
}

fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let dir = scratch_dir();
        let raw = |name: &str| {
            let path = dir.path().join(name);
            let bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE).map(|i| i as u8).collect();
            std::fs::write(&path, bytes).expect("raw image");
            path
        };
        let overlay = |name: &str, base: &Path| {
            let path = dir.path().join(name);
            ironvisor_diskimage::create_overlay(&path, base, DiskFormat::Raw).expect("overlay");
            path
        };
        let base = raw("base.raw");
        let rw = raw("rw.raw");
        let overlay_rw = overlay("rw.qcow2", &base);
        let overlay_ro = overlay("ro.qcow2", &base);
        let open = |path: &Path, format, read_only| {
            BlockDevice::with_format(path, format, read_only, "fuzz-serial")
                .expect("block device")
                .disk
        };
        let disks = vec![
            open(&rw, DiskFormat::Raw, false),
            open(&base, DiskFormat::Raw, true),
            open(&overlay_rw, DiskFormat::Qcow2, false),
            open(&overlay_ro, DiskFormat::Qcow2, true),
        ];
        Disks { _dir: dir, disks }
    })
}

/// A scratch directory in memory when the host has one.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("scratch directory")
}

/// Input: one byte choosing the disk (raw or qcow2, read-write or read-only), the queue
/// layout, then guest memory. The request queue is notified [`PASSES`] times.
pub fn blk_requests(data: &[u8]) {
    let mut input = Input::new(data);
    let disks = &disks().disks;
    let disk = disks[usize::from(input.u8()) % disks.len()].clone();
    let layout = QueueLayout::read(&mut input);
    let mem = memory(input.rest());
    let queue = layout.queue(&mem);
    let mut worker = BlockWorker {
        mem,
        queue,
        queue_event: event(),
        interrupt: Arc::new(Interrupt::new(event())),
        disk,
        throttle: None,
        health: Health::default(),
        log: LogLimiter::default(),
    };
    with_context(|ctx| {
        for _ in 0..PASSES {
            worker.handle_event(ctx, BlockToken::Queue, EventSet::IN);
        }
    });
}
