use std::io::Write as _;
use std::os::unix::fs::FileExt;

use tempfile::NamedTempFile;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::test_utils::{test_memory, QueueDriver};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// A raw image of `sectors` sectors filled with `pattern`.
fn image(sectors: usize) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("tempfile");
    file.write_all(&pattern(0, sectors * 512)).expect("fill");
    file
}

fn header(request_type: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&request_type.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn worker_for(mem: &GuestMemoryMmap<()>, device: &BlockDevice, queue: Queue) -> BlockWorker {
    BlockWorker {
        mem: mem.clone(),
        queue,
        queue_event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
        disk: device.disk.clone(),
        throttle: None,
        health: Health::default(),
        log: LogLimiter::default(),
    }
}

/// Processes the queue and returns (used len, status byte) of the chain at `head`, which
/// must be the `pos`-th completion.
fn complete(worker: &mut BlockWorker, driver: &QueueDriver<'_>, pos: u16, head: u16) -> (u32, u8) {
    assert!(worker.process_queue(Instant::now()));
    assert_eq!(driver.used_idx(), pos + 1);
    let (used_head, len) = driver.used_entry(pos);
    assert_eq!(used_head, head);
    let writable = driver.writable_bytes(head);
    (len, *writable.last().expect("status byte"))
}

#[test]
fn new_checks_the_image_and_serial() {
    let img = image(4);
    let device = BlockDevice::new(img.path(), false, "serial-1").expect("device");
    assert_eq!(device.capacity_sectors(), 4);
    assert_eq!(device.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(device.queue_max_sizes(), &[QUEUE_SIZE]);
    assert!(!device.is_read_only());
    let features = device.avail_features();
    assert_ne!(features & (1 << 32), 0, "VERSION_1");
    assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_BLK_SIZE), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(features & (1 << 29), 0, "no EVENT_IDX");

    let mut capacity = [0u8; 8];
    device.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 4);
    let mut word = [0u8; 4];
    device.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), u32::from(QUEUE_SIZE) - 2);
    device.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);

    let ro = BlockDevice::new(img.path(), true, "").expect("read-only device");
    assert!(ro.is_read_only());
    assert_ne!(ro.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    // Opened O_RDONLY.
    let Backing::Raw(file) = &ro.disk.backing else {
        panic!("a raw image is served from its file");
    };
    assert!(file.write_at(&[0], 0).is_err());

    let mut odd = NamedTempFile::new().expect("tempfile");
    odd.write_all(&[0u8; 1000]).expect("fill");
    assert!(matches!(
        BlockDevice::new(odd.path(), false, "x"),
        Err(BlockError::SizeNotSectorMultiple { size: 1000, .. })
    ));
    assert!(matches!(
        BlockDevice::new(Path::new("/nonexistent/disk.img"), false, "x"),
        Err(BlockError::Open { .. })
    ));
    assert!(matches!(
        BlockDevice::new(img.path(), false, "123456789012345678901"),
        Err(BlockError::SerialTooLong { len: 21, .. })
    ));
}

#[test]
fn read_spans_gapped_descriptors() {
    let img = image(8);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());

    // Header split in two, three sectors of data over three uneven buffers, status alone.
    let head = driver.add_chain(&[
        (7, false),
        (9, false),
        (100, true),
        (412, true),
        (1024, true),
        (1, true),
    ]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 2));
    let (len, status) = complete(&mut worker, &driver, 0, head);
    assert_eq!(status, OK);
    assert_eq!(len, 1536 + 1);
    assert_eq!(driver.read_writable(head, 1536), pattern(1024, 1536));

    // A data buffer straddling the boundary between the two guest memory regions.
    let boundary = crate::test_utils::TEST_MEM_SIZE / 2;
    let head = driver.add_raw_chain(&[
        (0x20_0000, 16, false),
        (boundary - 700, 1024, true),
        (0x20_1000, 1, true),
    ]);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 4), GuestAddress(0x20_0000))
        .expect("header");
    let (len, status) = complete(&mut worker, &driver, 1, head);
    assert_eq!((len, status), (1025, OK));
    assert_eq!(driver.read_writable(head, 1024), pattern(4 * 512, 1024));
}

#[test]
fn write_spans_descriptors_and_reads_back() {
    let img = image(8);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());

    let data: Vec<u8> = (0..1024).map(|i| (i * 7 % 256) as u8).collect();
    let head = driver.add_chain(&[(16, false), (300, false), (724, false), (1, true)]);
    let mut request = header(VIRTIO_BLK_T_OUT, 5);
    request.extend_from_slice(&data);
    driver.write_readable(head, &request);
    let (len, status) = complete(&mut worker, &driver, 0, head);
    assert_eq!((len, status), (1, OK));
    let mut on_disk = vec![0u8; 1024];
    img.as_file()
        .read_exact_at(&mut on_disk, 5 * 512)
        .expect("read image");
    assert_eq!(on_disk, data);
    // Neighbours untouched.
    let mut before = vec![0u8; 512];
    img.as_file()
        .read_exact_at(&mut before, 4 * 512)
        .expect("read image");
    assert_eq!(before, pattern(4 * 512, 512));

    // Data and status in one writable buffer.
    let head = driver.add_chain(&[(16, false), (1025, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 5));
    let (len, status) = complete(&mut worker, &driver, 1, head);
    assert_eq!((len, status), (1025, OK));
    assert_eq!(driver.read_writable(head, 1024), data);
}

#[test]
fn flush_and_get_id() {
    let img = image(2);
    let device = BlockDevice::new(img.path(), false, "disk-serial").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());

    let head = driver.add_chain(&[(16, false), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_FLUSH, 0));
    assert_eq!(complete(&mut worker, &driver, 0, head), (1, OK));

    let head = driver.add_chain(&[(16, false), (20, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_GET_ID, 0));
    assert_eq!(complete(&mut worker, &driver, 1, head), (21, OK));
    let mut expected = b"disk-serial".to_vec();
    expected.resize(20, 0);
    assert_eq!(driver.read_writable(head, 20), expected);
}

#[test]
fn read_only_disk_refuses_writes() {
    let img = image(2);
    let device = BlockDevice::new(img.path(), true, "ro").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());

    let head = driver.add_chain(&[(16, false), (512, false), (1, true)]);
    let mut request = header(VIRTIO_BLK_T_OUT, 0);
    request.extend_from_slice(&[0xee; 512]);
    driver.write_readable(head, &request);
    assert_eq!(complete(&mut worker, &driver, 0, head), (1, IOERR));
    let mut on_disk = vec![0u8; 512];
    img.as_file().read_exact_at(&mut on_disk, 0).expect("read");
    assert_eq!(on_disk, pattern(0, 512));

    let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 1));
    assert_eq!(complete(&mut worker, &driver, 1, head), (513, OK));
    assert_eq!(driver.read_writable(head, 512), pattern(512, 512));

    let head = driver.add_chain(&[(16, false), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_FLUSH, 0));
    assert_eq!(complete(&mut worker, &driver, 2, head), (1, OK));
}

#[test]
fn out_of_range_and_misaligned_requests_fail() {
    let img = image(4);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 64);
    let mut worker = worker_for(&mem, &device, driver.queue());
    let cases: [(u32, u64, u32); 6] = [
        (VIRTIO_BLK_T_IN, 4, 512),              // starts at the end
        (VIRTIO_BLK_T_IN, 3, 1024),             // runs past the end
        (VIRTIO_BLK_T_IN, u64::MAX / 256, 512), // offset overflows
        (VIRTIO_BLK_T_IN, 0, 100),              // not whole sectors
        (VIRTIO_BLK_T_OUT, 0, 511),             // not whole sectors
        (VIRTIO_BLK_T_OUT, 4, 512),             // past the end
    ];
    for (pos, &(request_type, sector, len)) in cases.iter().enumerate() {
        let head = if request_type == VIRTIO_BLK_T_IN {
            let head = driver.add_chain(&[(16, false), (len, true), (1, true)]);
            driver.write_readable(head, &header(request_type, sector));
            head
        } else {
            let head = driver.add_chain(&[(16, false), (len, false), (1, true)]);
            let mut request = header(request_type, sector);
            request.resize(16 + len as usize, 0x55);
            driver.write_readable(head, &request);
            head
        };
        assert_eq!(
            complete(&mut worker, &driver, pos as u16, head),
            (1, IOERR),
            "case {pos}: type {request_type} sector {sector} len {len}"
        );
    }
    // The image was not modified.
    let mut on_disk = vec![0u8; 4 * 512];
    img.as_file().read_exact_at(&mut on_disk, 0).expect("read");
    assert_eq!(on_disk, pattern(0, 4 * 512));
}

#[test]
fn malformed_chains_get_errors_not_panics() {
    let img = image(4);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 64);
    let mut worker = worker_for(&mem, &device, driver.queue());

    // No writable byte for the status: returned with nothing written.
    let head = driver.add_chain(&[(16, false), (512, false)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0));
    assert!(worker.process_queue(Instant::now()));
    assert_eq!(driver.used_entry(0), (head, 0));

    // Header too short.
    let head = driver.add_chain(&[(8, false), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0)[..8]);
    assert_eq!(complete(&mut worker, &driver, 1, head), (1, IOERR));

    // Unsupported request type.
    let head = driver.add_chain(&[(16, false), (1, true)]);
    driver.write_readable(head, &header(99, 0));
    assert_eq!(complete(&mut worker, &driver, 2, head), (1, UNSUPP));

    // A buffer outside guest memory.
    let head = driver.add_raw_chain(&[
        (0x1000, 16, false),
        (0xffff_f000, 512, true),
        (0x2000, 1, true),
    ]);
    assert!(worker.process_queue(Instant::now()));
    assert_eq!(driver.used_entry(3), (head, 0));

    // Readable after writable.
    let head = driver.add_chain(&[(16, false), (1, true), (512, false)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0));
    assert!(worker.process_queue(Instant::now()));
    assert_eq!(driver.used_entry(4), (head, 0));

    // The queue still works afterwards.
    let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0));
    assert_eq!(complete(&mut worker, &driver, 5, head), (513, OK));
}

#[test]
fn indirect_chain_request() {
    let img = image(4);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());
    let head = driver.add_indirect_chain(&[(16, false), (256, true), (256, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 3));
    assert_eq!(complete(&mut worker, &driver, 0, head), (513, OK));
    assert_eq!(driver.read_writable(head, 512), pattern(3 * 512, 512));
}

#[test]
fn worker_thread_serves_notifications_until_reset() {
    let img = image(4);
    let mut device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq_probe = irq.try_clone().expect("clone");
    let interrupt = Arc::new(Interrupt::new(irq));

    // Wrong queue count.
    assert!(matches!(
        device.activate(mem.clone(), interrupt.clone(), Vec::new()),
        Err(ActivateError::QueueCount {
            expected: 1,
            actual: 0,
            ..
        })
    ));

    for round in 0..2u16 {
        let mut driver = QueueDriver::new(&mem, 16);
        let notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let queue = DeviceQueue {
            index: 0,
            queue: driver.queue(),
            event: notify.try_clone().expect("clone"),
        };
        device
            .activate(mem.clone(), interrupt.clone(), vec![queue])
            .expect("activate");
        assert!(device.is_active());
        let again = DeviceQueue {
            index: 0,
            queue: driver.queue(),
            event: notify.try_clone().expect("clone"),
        };
        assert!(matches!(
            device.activate(mem.clone(), interrupt.clone(), vec![again]),
            Err(ActivateError::AlreadyActive { .. })
        ));

        let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
        driver.write_readable(head, &header(VIRTIO_BLK_T_IN, u64::from(round)));
        notify.write(1).expect("notify");
        driver.wait_used(1);
        assert_eq!(driver.used_entry(0), (head, 513));
        assert_eq!(
            driver.read_writable(head, 512),
            pattern(usize::from(round) * 512, 512)
        );
        crate::test_utils::wait_until("interrupt", || {
            interrupt.status() & crate::interrupt::VIRTIO_INT_VRING != 0
        });
        assert!(irq_probe.read().expect("irq") >= 1);
        interrupt.clear();

        device.reset();
        assert!(!device.is_active());
        // After the reset nobody serves the queue.
        let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
        driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0));
        notify.write(1).expect("notify");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(driver.used_idx(), 1);
    }
}

#[test]
fn a_qcow2_overlay_reads_its_base_and_keeps_writes_to_itself() {
    let base = image(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = dir.path().join("overlay.qcow2");
    ironvisor_diskimage::create_overlay(&overlay, base.path(), DiskFormat::Raw).expect("overlay");
    let device =
        BlockDevice::with_format(&overlay, DiskFormat::Qcow2, false, "cow").expect("device");
    // The guest sees the base's size, not the overlay file's.
    assert_eq!(device.capacity_sectors(), 64);
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());

    // Reads fall through to the base, across uneven descriptors.
    let head = driver.add_chain(&[(16, false), (700, true), (324, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 10));
    let (len, status) = complete(&mut worker, &driver, 0, head);
    assert_eq!((len, status), (1025, OK));
    assert_eq!(driver.read_writable(head, 1024), pattern(10 * 512, 1024));

    // Writes land in the overlay and read back; the base is untouched.
    let data: Vec<u8> = (0..1024).map(|i| (i * 13 % 256) as u8).collect();
    let head = driver.add_chain(&[(16, false), (1024, false), (1, true)]);
    let mut request = header(VIRTIO_BLK_T_OUT, 10);
    request.extend_from_slice(&data);
    driver.write_readable(head, &request);
    assert_eq!(complete(&mut worker, &driver, 1, head), (1, OK));
    let head = driver.add_chain(&[(16, false), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_FLUSH, 0));
    assert_eq!(complete(&mut worker, &driver, 2, head), (1, OK));
    let head = driver.add_chain(&[(16, false), (1025, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 10));
    assert_eq!(complete(&mut worker, &driver, 3, head), (1025, OK));
    assert_eq!(driver.read_writable(head, 1024), data);
    let mut on_base = vec![0u8; 1024];
    base.as_file()
        .read_exact_at(&mut on_base, 10 * 512)
        .expect("read base");
    assert_eq!(
        on_base,
        pattern(10 * 512, 1024),
        "the base image was modified"
    );

    // Past the end is refused, as for raw images.
    let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 64));
    assert_eq!(complete(&mut worker, &driver, 4, head).1, IOERR);
}

/// Peak resident set of this test process, in KiB.
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the zero-initialised struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_maxrss
}

#[test]
fn qcow2_segments_bounce_in_bounded_chunks() {
    // A sparse 5 GiB base under a qcow2 overlay, so a ~4 GiB segment is inside the disk.
    let base = NamedTempFile::new().expect("tempfile");
    base.as_file().set_len(5 << 30).expect("sparse base");
    let data: Vec<u8> = (0..(5 * BOUNCE_CHUNK / 2))
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    base.as_file().write_all_at(&data, 4096).expect("base data");
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = dir.path().join("overlay.qcow2");
    ironvisor_diskimage::create_overlay(&overlay, base.path(), DiskFormat::Raw).expect("overlay");
    let device =
        BlockDevice::with_format(&overlay, DiskFormat::Qcow2, false, "big").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());
    let (header_at, data_at, status_at) = (8u64 << 20, 9u64 << 20, 12u64 << 20);

    // A 2.5 MiB segment crosses chunk boundaries and arrives whole.
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 8), GuestAddress(header_at))
        .expect("header");
    let head = driver.add_raw_chain(&[
        (header_at, 16, false),
        (data_at, data.len() as u32, true),
        (status_at, 1, true),
    ]);
    assert!(worker.process_queue(Instant::now()));
    assert_eq!(driver.used_entry(0).0, head);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status_at)).expect("status"),
        OK
    );
    let mut read = vec![0u8; data.len()];
    mem.read_slice(&mut read, GuestAddress(data_at))
        .expect("read back");
    assert_eq!(read, data);

    // A write of a 240 MiB segment of (untouched, so not resident) guest memory: the host
    // moves it through one chunk-sized buffer instead of a buffer as large as the segment.
    let big_mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).expect("memory");
    let mut big_driver = QueueDriver::new(&big_mem, 16);
    let mut big_worker = worker_for(&big_mem, &device, big_driver.queue());
    let segment = 240u32 << 20;
    big_mem
        .write_slice(&header(VIRTIO_BLK_T_OUT, 16), GuestAddress(header_at))
        .expect("header");
    let before = peak_rss_kib();
    let head = big_driver.add_raw_chain(&[
        (header_at, 16, false),
        (16 << 20, segment, false),
        (status_at, 1, true),
    ]);
    assert!(big_worker.process_queue(Instant::now()));
    assert_eq!(big_driver.used_entry(0).0, head);
    let status: u8 = big_mem.read_obj(GuestAddress(status_at)).expect("status");
    assert_eq!(status, OK);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 96,
        "the host buffered {grown_mib} MiB for a {} MiB segment",
        segment >> 20
    );
}

/// Activates `device` on `driver`'s queue with a worker thread.
fn activate_on(
    device: &mut BlockDevice,
    mem: &GuestMemoryMmap<()>,
    driver: &QueueDriver<'_>,
) -> (EventFd, Arc<Interrupt>) {
    let notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let queue = DeviceQueue {
        index: 0,
        queue: driver.queue(),
        event: notify.try_clone().expect("clone"),
    };
    device
        .activate(mem.clone(), interrupt.clone(), vec![queue])
        .expect("activate");
    (notify, interrupt)
}

#[test]
fn reset_returns_while_a_hostile_driver_keeps_the_ring_full() {
    let img = image(4);
    let mut device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let (_, avail_ring, used_ring) = driver.ring_addresses();
    let head = driver.add_chain(&[(16, false), (20, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_GET_ID, 0));
    let (notify, interrupt) = activate_on(&mut device, &mem, &driver);

    // The "guest" keeps the available index a ring ahead of what the device used (with a
    // notification each time), so the device never runs out of work: the first entry is a
    // GET_ID request, the others name whatever heads the ring slots hold.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refiller = {
        let (mem, stop) = (mem.clone(), stop.clone());
        let notify = notify.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut avail = 1u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let used: u16 = mem.read_obj(GuestAddress(used_ring + 2)).expect("used");
                // Only forward: a stale read must not move the index back.
                let target = used.wrapping_add(15);
                if target.wrapping_sub(avail) < 0x8000 {
                    avail = target;
                    mem.write_obj(avail, GuestAddress(avail_ring + 2))
                        .expect("avail");
                    notify.write(1).expect("notify");
                }
            }
        })
    };
    notify.write(1).expect("notify");
    crate::test_utils::wait_until("requests served", || driver.used_idx() > 100);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let resetter = std::thread::spawn(move || {
        device.reset();
        done_tx.send(device.is_active()).expect("send");
    });
    let outcome = done_rx.recv_timeout(std::time::Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    refiller.join().expect("refiller");
    assert_eq!(outcome, Ok(false), "reset did not stop the worker");
    resetter.join().expect("resetter");
    assert!(
        !interrupt.needs_reset(),
        "a well-formed ring was reported as corrupted"
    );
}

#[test]
fn a_corrupted_avail_index_asks_the_driver_for_a_reset() {
    let img = image(4);
    let mut device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let driver = QueueDriver::new(&mem, 16);
    let (_, avail_ring, _) = driver.ring_addresses();
    let (notify, interrupt) = activate_on(&mut device, &mem, &driver);
    mem.write_obj(40u16, GuestAddress(avail_ring + 2))
        .expect("avail");
    notify.write(1).expect("notify");
    crate::test_utils::wait_until("needs reset", || interrupt.needs_reset());
    assert_ne!(interrupt.status() & crate::interrupt::VIRTIO_INT_CONFIG, 0);
    assert_eq!(driver.used_idx(), 0);
    device.reset();
    assert!(!device.is_active());
}

fn read_request(driver: &mut QueueDriver<'_>, sector: u64) -> u16 {
    let head = driver.add_chain(&[(16, false), (512, true), (1, true)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, sector));
    head
}

#[test]
fn a_byte_limit_leaves_requests_in_the_ring_until_the_bucket_refills() {
    let img = image(8);
    let device = BlockDevice::new(img.path(), false, "d").expect("device");
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = worker_for(&mem, &device, driver.queue());
    let t0 = Instant::now();
    let limit = RateLimit {
        bytes_per_second: std::num::NonZeroU64::new(1024),
        ops_per_second: None,
    };
    worker.throttle = Some(Throttle {
        limiter: RateLimiter::new(limit, t0).expect("limited"),
        alarm: Alarm::new().expect("alarm"),
    });
    let heads: Vec<u16> = (0..3)
        .map(|sector| read_request(&mut driver, sector))
        .collect();
    // The burst (one second's worth) serves two 512-byte reads; the third waits.
    assert!(worker.process_queue(t0));
    assert_eq!(driver.used_idx(), 2);
    assert!(!worker.process_queue(t0 + std::time::Duration::from_millis(250)));
    assert_eq!(driver.used_idx(), 2);
    assert!(worker.process_queue(t0 + std::time::Duration::from_millis(500)));
    assert_eq!(driver.used_idx(), 3);
    assert_eq!(driver.read_writable(heads[2], 512), pattern(2 * 512, 512));
}

#[test]
fn an_ops_limit_is_served_by_the_alarm_without_more_notifications() {
    let img = image(8);
    let mut device = BlockDevice::new(img.path(), false, "d").expect("device");
    device.set_rate_limit(RateLimit {
        bytes_per_second: None,
        ops_per_second: std::num::NonZeroU64::new(4),
    });
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 32);
    let (notify, _interrupt) = activate_on(&mut device, &mem, &driver);
    let started = Instant::now();
    for sector in 0..6 {
        read_request(&mut driver, sector);
    }
    notify.write(1).expect("notify");
    driver.wait_used(6);
    // Four in the burst, then one every 250 ms: at least 500 ms for the last two.
    assert!(started.elapsed() >= std::time::Duration::from_millis(450));
    device.reset();
    assert_eq!(device.rate_limit().ops_per_second.map(|n| n.get()), Some(4));
}
