use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::test_utils::{test_memory, wait_until, QueueDriver};

struct Running {
    notify: EventFd,
    interrupt: Arc<Interrupt>,
}

fn activate(
    device: &mut RngDevice,
    mem: &GuestMemoryMmap<()>,
    driver: &QueueDriver<'_>,
) -> Running {
    let notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    device
        .activate(
            mem.clone(),
            interrupt.clone(),
            vec![DeviceQueue {
                index: 0,
                queue: driver.queue(),
                event: notify.try_clone().expect("clone"),
            }],
        )
        .expect("activate");
    Running { notify, interrupt }
}

fn nz(rate: u64) -> NonZeroU64 {
    NonZeroU64::new(rate).expect("nonzero rate")
}

/// A worker driven by hand (no thread), for deterministic queue tests.
fn manual_worker(mem: &GuestMemoryMmap<()>, driver: &QueueDriver<'_>, rate: u64) -> RngWorker {
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    RngWorker {
        mem: mem.clone(),
        queue: driver.queue(),
        queue_event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        interrupt,
        alarm: Alarm::new().expect("alarm"),
        limiter: RateLimiter::bytes(nz(rate), Instant::now()),
        burst: rate,
        scratch: Vec::new(),
        health: crate::queue_pass::Health::default(),
        log: crate::log_limit::LogLimiter::default(),
    }
}

#[test]
fn identity_and_empty_config() {
    let device = RngDevice::new(1 << 20).expect("device");
    assert_eq!(device.device_type(), 4);
    assert_eq!(device.kind(), "virtio-rng");
    assert_eq!(device.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(device.avail_features(), COMMON_FEATURES);
    assert_eq!(device.bytes_per_second(), 1 << 20);
    let mut config = [0xffu8; 8];
    device.read_config(0, &mut config);
    assert_eq!(config, [0; 8]);
    assert!(matches!(RngDevice::new(0), Err(RngError::ZeroRate)));
}

#[test]
fn fill_random_fills_large_buffers() {
    let mut buf = vec![0u8; 3 * CHUNK + 17];
    fill_random(&mut buf).expect("getrandom");
    // 200 KiB of zeros from a CSPRNG would be astronomically unlikely.
    assert!(buf.iter().any(|&b| b != 0));
    assert!(buf[3 * CHUNK..].iter().any(|&b| b != 0));
}

#[test]
fn a_request_is_filled_with_random_bytes() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = manual_worker(&mem, &driver, 1 << 20);
    // Scattered buffers of an ordinary chain, and an indirect one.
    let first = driver.add_chain(&[(16, true), (48, true), (700, true)]);
    let second = driver.add_indirect_chain(&[(256, true)]);
    let (used, outcome) = worker.process_queue(Instant::now());
    assert!(used);
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(driver.used_idx(), 2);
    assert_eq!(driver.used_entry(0), (first, 764));
    assert_eq!(driver.used_entry(1), (second, 256));
    let bytes = driver.writable_bytes(first);
    assert!(bytes[..16].iter().any(|&b| b != 0));
    assert!(bytes[16..64].iter().any(|&b| b != 0));
    assert!(bytes[64..].iter().any(|&b| b != 0));
    assert!(driver.writable_bytes(second).iter().any(|&b| b != 0));
    assert_ne!(
        driver.writable_bytes(first)[..256],
        driver.writable_bytes(second)[..]
    );
    // Nothing left to serve.
    assert_eq!(
        worker.process_queue(Instant::now()),
        (false, Outcome::Drained)
    );
}

#[test]
fn read_only_buffers_are_not_written() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = manual_worker(&mem, &driver, 1 << 20);
    let pattern: Vec<u8> = (0..32).collect();
    // Only driver-readable buffers: returned with length 0, left untouched.
    let read_only = driver.add_chain(&[(32, false)]);
    driver.write_readable(read_only, &pattern);
    // A readable header before a writable buffer: only the writable part is filled.
    let mixed = driver.add_chain(&[(32, false), (64, true)]);
    driver.write_readable(mixed, &pattern);
    // A malformed chain (readable after writable) is returned empty.
    let bad = driver.add_chain(&[(8, true), (8, false)]);
    // A buffer outside guest memory is returned empty too.
    let outside = driver.add_raw_chain(&[(0xffff_0000, 64, true)]);
    let before = worker.limiter.available_bytes(Instant::now());

    let (used, outcome) = worker.process_queue(Instant::now());
    assert!(used);
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(driver.used_idx(), 4);
    assert_eq!(driver.used_entry(0), (read_only, 0));
    assert_eq!(driver.used_entry(1), (mixed, 64));
    assert_eq!(driver.used_entry(2), (bad, 0));
    assert_eq!(driver.used_entry(3), (outside, 0));
    assert!(driver.writable_bytes(mixed).iter().any(|&b| b != 0));
    assert_eq!(driver.writable_bytes(bad), vec![0u8; 8]);

    let mut back = vec![0u8; 32];
    for head in [read_only, mixed] {
        let addr = first_buffer(&mem, &driver, head);
        mem.read_slice(&mut back, addr).expect("read");
        assert_eq!(back, pattern, "chain {head}");
    }
    // Only the 64 written bytes were charged.
    assert!(before - worker.limiter.available_bytes(Instant::now()) <= 64);
}

/// Guest address of the first buffer of chain `head`, read back from the descriptor
/// table.
fn first_buffer(mem: &GuestMemoryMmap<()>, driver: &QueueDriver<'_>, head: u16) -> GuestAddress {
    let (table, _, _) = driver.ring_addresses();
    let addr: u64 = mem
        .read_obj(GuestAddress(table + 16 * u64::from(head)))
        .expect("descriptor");
    GuestAddress(addr)
}

#[test]
fn the_limiter_holds_requests_until_tokens_refill() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut worker = manual_worker(&mem, &driver, 1000);
    let t0 = Instant::now();
    worker.limiter = RateLimiter::bytes(nz(1000), t0);
    let heads: Vec<u16> = (0..4).map(|_| driver.add_chain(&[(400, true)])).collect();

    // The burst covers two requests; the third waits for 200 more tokens.
    let (used, outcome) = worker.process_queue(t0);
    assert!(used);
    assert_eq!(outcome, Outcome::Throttled(Duration::from_millis(200)));
    assert_eq!(driver.used_idx(), 2);
    assert_eq!(driver.used_entry(1), (heads[1], 400));

    // Too early: nothing more is served, the request stays queued.
    let (used, outcome) = worker.process_queue(t0 + Duration::from_millis(100));
    assert!(!used);
    assert_eq!(outcome, Outcome::Throttled(Duration::from_millis(100)));
    assert_eq!(driver.used_idx(), 2);

    // Once refilled, the queued request (not a later one) is served, in order.
    let (used, outcome) = worker.process_queue(t0 + Duration::from_millis(200));
    assert!(used);
    assert_eq!(outcome, Outcome::Throttled(Duration::from_millis(400)));
    assert_eq!(driver.used_idx(), 3);
    assert_eq!(driver.used_entry(2), (heads[2], 400));

    let (_, outcome) = worker.process_queue(t0 + Duration::from_millis(600));
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(driver.used_entry(3), (heads[3], 400));

    // A request larger than the burst gets a full bucket's worth, no more.
    let big = driver.add_chain(&[(1500, true)]);
    let (_, outcome) = worker.process_queue(t0 + Duration::from_millis(600));
    assert_eq!(outcome, Outcome::Throttled(Duration::from_secs(1)));
    let (_, outcome) = worker.process_queue(t0 + Duration::from_millis(1600));
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(driver.used_entry(4), (big, 1000));
}

#[test]
fn the_running_device_serves_the_burst_then_waits_for_the_timer() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut device = RngDevice::new(8192).expect("device");
    let running = activate(&mut device, &mem, &driver);
    assert!(device.is_active());

    let start = Instant::now();
    for _ in 0..3 {
        driver.add_chain(&[(4096, true)]);
    }
    running.notify.write(1).expect("notify");
    driver.wait_used(2);
    wait_until("used-buffer interrupt", || {
        running.interrupt.status() & 1 == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        driver.used_idx(),
        2,
        "third request served before the refill"
    );
    // No further notification: the refill timer serves the third request after ~0.5 s.
    driver.wait_used(3);
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(driver.used_entry(2).1, 4096);
    device.reset();
    assert!(!device.is_active());
}

#[test]
fn activate_and_reset() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut device = RngDevice::new(4096).expect("device");

    // Wrong number of queues.
    let err = device
        .activate(
            mem.clone(),
            Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
            Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            actual: 0,
            ..
        }
    ));
    assert!(!device.is_active());

    device.ack_features(u64::MAX);
    assert_eq!(device.acked_features(), COMMON_FEATURES);
    let running = activate(&mut device, &mem, &driver);
    let err = device
        .activate(
            mem.clone(),
            running.interrupt.clone(),
            vec![DeviceQueue {
                index: 0,
                queue: driver.queue(),
                event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            }],
        )
        .unwrap_err();
    assert!(matches!(err, ActivateError::AlreadyActive { .. }));

    // Drain the whole burst, then reset: the reset does not refill the bucket.
    driver.add_chain(&[(4096, true)]);
    running.notify.write(1).expect("notify");
    driver.wait_used(1);
    device.reset();
    assert!(!device.is_active());
    assert_eq!(device.acked_features(), 0);
    // Resetting an inactive device is a no-op.
    device.reset();
    let limiter = device
        .limiter
        .as_mut()
        .expect("bucket kept across the reset");
    assert!(limiter.available_bytes(Instant::now()) < 4096);

    // A fresh driver after the reset: the device serves again.
    let mut driver = QueueDriver::new(&mem, 16);
    let running = activate(&mut device, &mem, &driver);
    let head = driver.add_chain(&[(16, true)]);
    running.notify.write(1).expect("notify");
    driver.wait_used(1);
    assert_eq!(driver.used_entry(0), (head, 16));
    drop(device);
}
