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
    }
}

/// Processes the queue and returns (used len, status byte) of the chain at `head`, which
/// must be the `pos`-th completion.
fn complete(worker: &mut BlockWorker, driver: &QueueDriver<'_>, pos: u16, head: u16) -> (u32, u8) {
    assert!(worker.process_queue());
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
    assert!(worker.process_queue());
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
    assert!(worker.process_queue());
    assert_eq!(driver.used_entry(3), (head, 0));

    // Readable after writable.
    let head = driver.add_chain(&[(16, false), (1, true), (512, false)]);
    driver.write_readable(head, &header(VIRTIO_BLK_T_IN, 0));
    assert!(worker.process_queue());
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
