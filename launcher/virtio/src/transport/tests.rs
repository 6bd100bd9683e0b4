use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use super::*;
use crate::block::BlockDevice;
use crate::interrupt::VIRTIO_INT_VRING;
use crate::test_utils::{test_memory, QueueDriver, DRIVER_SPAN};

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAKE_FEATURE: u64 = 1 << 5;

/// (index, size, desc, avail, used) of a queue handed to the device.
type QueueSummary = (usize, u16, u64, u64, u64);

/// What the fake device saw.
#[derive(Default, Debug)]
struct FakeLog {
    acked: Option<u64>,
    /// Per activation, each queue handed over.
    activations: Vec<Vec<QueueSummary>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

/// A device that records what the transport does to it.
struct FakeDevice {
    sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    active: bool,
    fail_activation: bool,
    log: Arc<Mutex<FakeLog>>,
}

impl FakeDevice {
    fn new(sizes: &[u16]) -> (Self, Arc<Mutex<FakeLog>>) {
        let log = Arc::new(Mutex::new(FakeLog::default()));
        (
            Self {
                sizes: sizes.to_vec(),
                features: VIRTIO_F_VERSION_1_BIT | FAKE_FEATURE,
                config: (0u8..16).collect(),
                active: false,
                fail_activation: false,
                log: log.clone(),
            },
            log,
        )
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        self.log.lock().expect("log").acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .expect("log")
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap<()>,
        _interrupt: Arc<Interrupt>,
        queues: Vec<DeviceQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::AlreadyActive { device: "fake" });
        }
        let summary = queues
            .iter()
            .map(|q| {
                (
                    q.index,
                    q.queue.size(),
                    q.queue.desc_table(),
                    q.queue.avail_ring(),
                    q.queue.used_ring(),
                )
            })
            .collect();
        self.log.lock().expect("log").activations.push(summary);
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().expect("log").resets += 1;
        self.active = false;
    }
    fn is_active(&self) -> bool {
        self.active
    }
}

fn irq() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("irq eventfd")
}

fn read32(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write32(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns the status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    write32(t, regs::VIRTIO_MMIO_STATUS, ACK);
    write32(t, regs::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write32(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(
        t,
        regs::VIRTIO_MMIO_DRIVER_FEATURES,
        (features >> 32) as u32,
    );
    write32(t, regs::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    read32(t, regs::VIRTIO_MMIO_STATUS)
}

/// Programs queue `index` with the rings of `driver` and enables it, as Linux does.
fn setup_queue(t: &mut MmioTransport, index: u32, driver: &QueueDriver<'_>) {
    let (desc, avail, used) = driver.ring_addresses();
    write32(t, regs::VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(read32(t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(driver.size()));
    write32(t, regs::VIRTIO_MMIO_QUEUE_NUM, u32::from(driver.size()));
    write32(t, regs::VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
    write32(t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(read32(t, regs::VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn identity_registers() {
    let (device, _) = FakeDevice::new(&[16, 64]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    assert_eq!(t.queue_events().len(), 2);

    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_READY), 0);

    // Registers are 32-bit only.
    let mut short = [0xffu8; 2];
    t.read(u64::from(regs::VIRTIO_MMIO_MAGIC_VALUE), &mut short);
    assert_eq!(short, [0, 0]);
}

#[test]
fn device_features_are_paged() {
    let (device, _) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    write32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES),
        FAKE_FEATURE as u32
    );
    write32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES), 1);
    write32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn features_ok_requires_version_1_and_offered_bits() {
    let (device, log) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    // Without VERSION_1 the device refuses FEATURES_OK.
    assert_eq!(negotiate(&mut t, FAKE_FEATURE), ACK | DRIVER);
    assert!(log.lock().expect("log").acked.is_none());
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);

    // A feature the device does not offer.
    assert_eq!(
        negotiate(&mut t, VIRTIO_F_VERSION_1_BIT | 1 << 7),
        ACK | DRIVER
    );
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);

    let wanted = VIRTIO_F_VERSION_1_BIT | FAKE_FEATURE;
    assert_eq!(negotiate(&mut t, wanted), ACK | DRIVER | FEATURES_OK);
    assert_eq!(log.lock().expect("log").acked, Some(wanted));

    // Features are frozen after FEATURES_OK.
    write32(&mut t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(&mut t, regs::VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(t.driver_features, wanted);
}

#[test]
fn driver_features_need_the_driver_bit() {
    let (device, _) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    write32(&mut t, regs::VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.driver_features, 0);
    // FEATURES_OK straight away (no ACKNOWLEDGE/DRIVER) is refused.
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, FEATURES_OK);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn status_bits_cannot_be_cleared_and_driver_ok_needs_features_ok() {
    let (device, log) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), ACK | DRIVER);
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, ACK | DRIVER | DRIVER_OK);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), ACK | DRIVER);
    assert!(log.lock().expect("log").activations.is_empty());
}

#[test]
fn reserved_and_device_status_bits_written_by_the_driver_are_dropped() {
    let (device, _log) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    // A hostile guest's random word: the driver's bits count, the rest does not.
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0x6791_ff00 | ACK | DRIVER);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // DEVICE_NEEDS_RESET is the device's to set.
    write32(
        &mut t,
        regs::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | VIRTIO_CONFIG_S_NEEDS_RESET,
    );
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Nothing of the driver's in it: nothing changes (only 0 resets).
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0x100);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), ACK | DRIVER);
}

#[test]
fn queue_configuration_and_activation() {
    let mem = test_memory();
    let (device, log) = FakeDevice::new(&[16, 32]);
    let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq()).expect("transport");
    let q0 = QueueDriver::new_at(&mem, 0, 16);
    let q1 = QueueDriver::new_at(&mem, DRIVER_SPAN, 32);
    negotiate(&mut t, VIRTIO_F_VERSION_1_BIT);

    // Invalid sizes are ignored: not a power of two, above the maximum.
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM, 12);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM, 32);
    assert_eq!(t.queues[0].size(), 16);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NUM, 8);
    assert_eq!(t.queues[0].size(), 8);
    // Misaligned descriptor table is ignored.
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
    assert_eq!(t.queues[0].desc_table(), 0);
    // High halves compose with low halves.
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_USED_HIGH, 0x1);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_USED_LOW, 0x2000);
    assert_eq!(t.queues[0].used_ring(), 0x1_0000_2000);

    setup_queue(&mut t, 0, &q0);
    setup_queue(&mut t, 1, &q1);
    write32(
        &mut t,
        regs::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert!(t.is_activated());
    {
        let log = log.lock().expect("log");
        assert_eq!(log.activations.len(), 1);
        let (d0, a0, u0) = q0.ring_addresses();
        let (d1, a1, u1) = q1.ring_addresses();
        assert_eq!(
            log.activations[0],
            vec![(0, 16, d0, a0, u0), (1, 32, d1, a1, u1)]
        );
    }

    // Queue registers are frozen while the driver runs.
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_READY), 1);

    // Reset: the device stops, everything returns to its initial state.
    t.interrupt().signal_used_queue().expect("signal");
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(t.queues[0].size(), 16);
    assert_eq!(t.driver_features, 0);
    assert_eq!(log.lock().expect("log").resets, 1);
    assert!(!t.is_activated());
}

#[test]
fn driver_ok_with_a_queue_not_ready_needs_reset() {
    let mem = test_memory();
    let (device, log) = FakeDevice::new(&[16, 16]);
    let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq()).expect("transport");
    let q0 = QueueDriver::new(&mem, 16);
    negotiate(&mut t, VIRTIO_F_VERSION_1_BIT);
    setup_queue(&mut t, 0, &q0);
    let generation = read32(&mut t, regs::VIRTIO_MMIO_CONFIG_GENERATION);
    write32(
        &mut t,
        regs::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    let status = read32(&mut t, regs::VIRTIO_MMIO_STATUS);
    assert_eq!(
        status & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert!(log.lock().expect("log").activations.is_empty());
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS),
        crate::interrupt::VIRTIO_INT_CONFIG
    );
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_CONFIG_GENERATION),
        generation + 1
    );
    assert!(!t.is_activated());
}

#[test]
fn driver_ok_with_rings_outside_memory_or_refused_activation_needs_reset() {
    let mem = test_memory();
    let (device, _) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq()).expect("transport");
    negotiate(&mut t, VIRTIO_F_VERSION_1_BIT);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
    write32(
        &mut t,
        regs::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(
        read32(&mut t, regs::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );

    let (mut device, _) = FakeDevice::new(&[16]);
    device.fail_activation = true;
    let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq()).expect("transport");
    let q0 = QueueDriver::new(&mem, 16);
    negotiate(&mut t, VIRTIO_F_VERSION_1_BIT);
    setup_queue(&mut t, 0, &q0);
    write32(
        &mut t,
        regs::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(
        read32(&mut t, regs::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    // A reset clears the condition.
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn interrupt_status_and_ack() {
    let irq = irq();
    let irq_probe = irq.try_clone().expect("clone");
    let (device, _) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq).expect("transport");
    t.interrupt().signal_used_queue().expect("signal");
    t.interrupt().signal_config_change().expect("signal");
    assert_eq!(irq_probe.read().expect("irq"), 2);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    write32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_VRING);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    write32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_ACK, 2);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn queue_notify_signals_the_queue_event() {
    let (device, _) = FakeDevice::new(&[16, 16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_events()[1].read().expect("event"), 1);
    assert!(
        t.queue_events()[0].read().is_err(),
        "queue 0 was not notified"
    );
    // Out of range: ignored.
    write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 7);
}

#[test]
fn config_space_accesses_go_to_the_device() {
    let (device, log) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(test_memory(), Box::new(device), irq()).expect("transport");
    let mut one = [0u8; 1];
    t.read(0x103, &mut one);
    assert_eq!(one, [3]);
    let mut eight = [0u8; 8];
    t.read(0x104, &mut eight);
    assert_eq!(eight, [4, 5, 6, 7, 8, 9, 10, 11]);
    let mut four = [0xffu8; 4];
    t.read(0x10e, &mut four);
    assert_eq!(four, [14, 15, 0, 0]);

    // Config writes only once the driver is there.
    t.write(0x100, &[1, 2]);
    assert!(log.lock().expect("log").config_writes.is_empty());
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    t.write(0x102, &[1, 2]);
    assert_eq!(
        log.lock().expect("log").config_writes,
        vec![(2, vec![1, 2])]
    );
}

#[test]
fn construction_errors() {
    let (device, _) = FakeDevice::new(&[]);
    assert!(matches!(
        MmioTransport::new(test_memory(), Box::new(device), irq()),
        Err(TransportError::NoQueues { .. })
    ));
    let (device, _) = FakeDevice::new(&[16, 24]);
    assert!(matches!(
        MmioTransport::new(test_memory(), Box::new(device), irq()),
        Err(TransportError::InvalidQueueSize {
            index: 1,
            size: 24,
            ..
        })
    ));
    let (mut device, _) = FakeDevice::new(&[16]);
    device.features = FAKE_FEATURE;
    assert!(matches!(
        MmioTransport::new(test_memory(), Box::new(device), irq()),
        Err(TransportError::NotModern { .. })
    ));
}

/// A whole driver session against a real block device and its worker thread: handshake,
/// a write and a read through MMIO notifications, the interrupt, a reset and a second
/// session.
#[test]
fn block_device_end_to_end() {
    let mut image = tempfile::NamedTempFile::new().expect("tempfile");
    image.write_all(&vec![0u8; 8 * 512]).expect("fill image");
    let disk = BlockDevice::new(image.path(), false, "e2e-disk").expect("block device");
    let mem = test_memory();
    let irq = irq();
    let irq_probe = irq.try_clone().expect("clone");
    let mut t = MmioTransport::new(mem.clone(), Box::new(disk), irq).expect("transport");

    for session in 0..2u8 {
        let mut q = QueueDriver::new(&mem, 128);
        write32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = read32(&mut t, regs::VIRTIO_MMIO_DEVICE_FEATURES);
        assert_eq!(high & 1, 1, "VERSION_1 offered");
        assert_eq!(
            negotiate(&mut t, VIRTIO_F_VERSION_1_BIT),
            ACK | DRIVER | FEATURES_OK
        );
        // Capacity through the config space.
        let mut capacity = [0u8; 8];
        t.read(0x100, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 8);
        setup_queue(&mut t, 0, &q);
        write32(
            &mut t,
            regs::VIRTIO_MMIO_STATUS,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(t.is_activated());

        // Write sector 3.
        let payload = vec![0xa0 + session; 512];
        let head = q.add_chain(&[(16, false), (512, false), (1, true)]);
        let mut request = Vec::new();
        request.extend_from_slice(&1u32.to_le_bytes());
        request.extend_from_slice(&0u32.to_le_bytes());
        request.extend_from_slice(&3u64.to_le_bytes());
        request.extend_from_slice(&payload);
        q.write_readable(head, &request);
        write32(&mut t, regs::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        q.wait_used(1);
        assert_eq!(q.used_entry(0), (head, 1));
        assert_eq!(q.read_writable(head, 1), vec![0]);
        let mut on_disk = vec![0u8; 512];
        image
            .as_file()
            .read_exact_at(&mut on_disk, 3 * 512)
            .expect("read image");
        assert_eq!(on_disk, payload);
        assert_eq!(
            read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_VRING,
            VIRTIO_INT_VRING
        );
        assert!(irq_probe.read().expect("irq raised") >= 1);
        write32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_VRING);

        // Read it back, the ioeventfd way.
        let head = q.add_chain(&[(16, false), (512, true), (1, true)]);
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&3u64.to_le_bytes());
        q.write_readable(head, &header);
        t.queue_events()[0].write(1).expect("notify");
        q.wait_used(2);
        assert_eq!(q.used_entry(1), (head, 513));
        let back = q.read_writable(head, 513);
        assert_eq!(&back[..512], &payload[..]);
        assert_eq!(back[512], 0);

        write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);
        assert!(!t.is_activated());
        assert!(!t.device().is_active());
    }
}

#[test]
fn a_worker_asking_for_a_reset_shows_needs_reset_until_the_driver_resets() {
    let mem = test_memory();
    let (device, _) = FakeDevice::new(&[16]);
    let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq()).expect("transport");
    let q0 = QueueDriver::new(&mem, 16);
    negotiate(&mut t, VIRTIO_F_VERSION_1_BIT);
    setup_queue(&mut t, 0, &q0);
    let running = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, running);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), running);

    // What a device worker does when the driver corrupted a ring.
    t.interrupt().signal_needs_reset().expect("signal");
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_STATUS),
        running | VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(
        read32(&mut t, regs::VIRTIO_MMIO_INTERRUPT_STATUS),
        crate::interrupt::VIRTIO_INT_CONFIG
    );
    write32(&mut t, regs::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&mut t, regs::VIRTIO_MMIO_STATUS), 0);
}
