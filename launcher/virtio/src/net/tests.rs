use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::test_utils::{test_memory, wait_until, QueueDriver, DRIVER_SPAN};

/// IEEE 802 local experimental ethertype: nothing else on the host speaks it.
const ETH_P_TEST: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn ethernet_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETH_P_TEST.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn parse(driver: &QueueDriver<'_>, queue: &mut Queue) -> ChainBuffers {
    ChainBuffers::parse(driver.pop(queue).expect("chain")).expect("valid chain")
}

#[test]
fn tx_frame_is_gathered_from_gapped_buffers() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend(ethernet_frame(
        [0xff; 6],
        GUEST_MAC,
        b"gathered payload bytes",
    ));
    // Header split across buffers, frame split unevenly.
    let head = driver.add_chain(&[(5, false), (7, false), (20, false), (16, false)]);
    assert_eq!(frame.len(), 48);
    driver.write_readable(head, &frame);
    let mut queue = driver.queue();
    let buffers = parse(&driver, &mut queue);
    let mut out = vec![0u8; MAX_FRAME_LEN];
    let len = tx_frame_from_chain(&mem, &buffers, &mut out).expect("tx frame");
    assert_eq!(len, frame.len());
    assert_eq!(&out[..len], &frame[..]);

    // Too short for a header.
    driver.add_chain(&[(6, false), (4, false)]);
    let buffers = parse(&driver, &mut queue);
    assert!(matches!(
        tx_frame_from_chain(&mem, &buffers, &mut out),
        Err(NetError::TxFrameTooShort { len: 10, .. })
    ));

    // Larger than the frame buffer.
    driver.add_chain(&[(64, false)]);
    let buffers = parse(&driver, &mut queue);
    let mut small = vec![0u8; 32];
    assert!(matches!(
        tx_frame_from_chain(&mem, &buffers, &mut small),
        Err(NetError::TxFrameTooLong {
            len: 64,
            max: 32,
            ..
        })
    ));
}

#[test]
fn rx_frame_is_scattered_with_num_buffers_set() {
    let mem = test_memory();
    let mut driver = QueueDriver::new(&mem, 16);
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame[10] = 0xaa; // whatever the tap left there
    frame.extend(ethernet_frame(GUEST_MAC, [2, 0, 0, 0, 0, 1], &[0x5a; 46]));
    let head = driver.add_chain(&[(7, true), (30, true), (100, true)]);
    let mut queue = driver.queue();
    let buffers = parse(&driver, &mut queue);
    let written = rx_frame_to_chain(&mem, &buffers, &mut frame.clone()).expect("rx frame");
    assert_eq!(written as usize, frame.len());
    let got = driver.read_writable(head, frame.len());
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[12..], &frame[12..]);

    // A frame that does not fit.
    driver.add_chain(&[(12, true), (20, true)]);
    let buffers = parse(&driver, &mut queue);
    assert!(matches!(
        rx_frame_to_chain(&mem, &buffers, &mut frame.clone()),
        Err(NetError::RxBufferTooSmall { capacity: 32, .. })
    ));

    // Shorter than a vnet header.
    driver.add_chain(&[(64, true)]);
    let buffers = parse(&driver, &mut queue);
    assert!(matches!(
        rx_frame_to_chain(&mem, &buffers, &mut [0u8; 4]),
        Err(NetError::RxFrameTooShort { len: 4 })
    ));
}

#[test]
fn mac_formatting() {
    assert_eq!(format_mac(&GUEST_MAC), "52:54:00:12:34:56");
}

// ---- Tests against a real tap (need CAP_NET_ADMIN and /dev/net/tun). ----

/// A unique, short tap name for this process and test.
fn tap_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ivt{}n{n}", std::process::id() % 1_000_000)
}

/// Creates a device on a fresh tap, set up and quiet (no IPv6 chatter). The host must
/// allow taps (root, /dev/net/tun); once it does, any failure is the device's.
fn test_device() -> NetDevice {
    ironvisor_prereq::root();
    ironvisor_prereq::path("/dev/net/tun", "the tun driver: modprobe tun");
    let name = tap_name();
    let device = NetDevice::new(&name, GUEST_MAC)
        .unwrap_or_else(|err| panic!("creating tap {name} as root: {err}"));
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", device.tap_name()),
        "1",
    );
    device
        .set_link_up()
        .unwrap_or_else(|err| panic!("setting tap {name} up: {err}"));
    device
}

/// An AF_PACKET socket on the host side of the tap, for our test ethertype.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> Self {
        let proto = ETH_P_TEST.to_be();
        // SAFETY: plain socket(2) call, result checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
        // SAFETY: fresh fd owned by nobody else.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let cname = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        // SAFETY: all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a sockaddr_ll of the given size.
        let ret = unsafe {
            libc::bind(
                socket.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind packet socket: {}", io::Error::last_os_error());
        socket
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: valid buffer and fd.
        let ret = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            ret,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame whose payload starts with `marker`, within 5 s.
    fn recv_marked(&self, marker: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no frame with marker {marker:?}");
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if ready <= 0 {
                continue;
            }
            let mut buf = vec![0u8; 2048];
            // SAFETY: valid buffer and fd.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                continue;
            }
            buf.truncate(n as usize);
            if buf.len() >= 14 + marker.len() && &buf[14..14 + marker.len()] == marker {
                return buf;
            }
        }
    }
}

fn sync_worker(
    mem: &GuestMemoryMmap<()>,
    device: &NetDevice,
    rx: Queue,
    tx: Queue,
) -> (NetWorker, Arc<Interrupt>) {
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let queue = |index, queue| DeviceQueue {
        index,
        queue,
        event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    };
    let worker = NetWorker::new(
        mem.clone(),
        queue(RX_QUEUE, rx),
        queue(TX_QUEUE, tx),
        device.tap.clone(),
        interrupt.clone(),
    );
    (worker, interrupt)
}

/// Activates `device` with a worker thread on both drivers' queues; returns the RX and
/// TX notification events.
fn activate_threaded(
    device: &mut NetDevice,
    mem: &GuestMemoryMmap<()>,
    interrupt: Arc<Interrupt>,
    (rx_driver, tx_driver): (&QueueDriver<'_>, &QueueDriver<'_>),
) -> (EventFd, EventFd) {
    let rx_notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let tx_notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let queue = |index, driver: &QueueDriver<'_>, notify: &EventFd| DeviceQueue {
        index,
        queue: driver.queue(),
        event: notify.try_clone().expect("clone"),
    };
    device
        .activate(
            mem.clone(),
            interrupt,
            vec![
                queue(RX_QUEUE, rx_driver, &rx_notify),
                queue(TX_QUEUE, tx_driver, &tx_notify),
            ],
        )
        .expect("activate");
    (rx_notify, tx_notify)
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun"]
fn tap_device_identity_and_config() {
    let device = test_device();
    assert!(device.tap_name().starts_with("ivt"));
    assert_eq!(device.mac(), GUEST_MAC);
    assert_eq!(device.device_type(), VIRTIO_ID_NET);
    assert_eq!(device.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let features = device.avail_features();
    assert_eq!(
        features,
        COMMON_FEATURES | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    );
    let mut config = [0u8; 8];
    device.read_config(0, &mut config);
    assert_eq!(&config[..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    // The tap exists while the device lives, and vanishes with it.
    let sysfs = format!("/sys/class/net/{}", device.tap_name());
    assert!(Path::new(&sysfs).exists());
    drop(device);
    assert!(!Path::new(&sysfs).exists());
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun"]
fn tap_tx_reaches_the_host() {
    let device = test_device();
    let host = PacketSocket::bind(device.tap_name());
    let mem = test_memory();
    let rx_driver = QueueDriver::new_at(&mem, 0, 16);
    let mut tx_driver = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let (mut worker, _) = sync_worker(&mem, &device, rx_driver.queue(), tx_driver.queue());

    let mut chain = vec![0u8; VNET_HDR_LEN];
    chain.extend(ethernet_frame(
        [0xff; 6],
        GUEST_MAC,
        b"tx-marker: hello from the guest",
    ));
    let len = chain.len() as u32;
    // The header straddles two buffers; the frame is split again.
    let head = tx_driver.add_chain(&[(5, false), (9, false), (len - 14, false)]);
    tx_driver.write_readable(head, &chain);
    assert!(worker.process_tx());
    assert_eq!(tx_driver.used_entry(0), (head, 0));
    let got = host.recv_marked(b"tx-marker");
    assert_eq!(got, chain[VNET_HDR_LEN..].to_vec());
    assert!(!worker.process_tx(), "nothing left to send");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun"]
fn tap_rx_drops_oversized_frames_and_keeps_the_buffer() {
    let device = test_device();
    let host = PacketSocket::bind(device.tap_name());
    let mem = test_memory();
    let mut rx_driver = QueueDriver::new_at(&mem, 0, 16);
    let tx_driver = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let (mut worker, _) = sync_worker(&mem, &device, rx_driver.queue(), tx_driver.queue());

    // Nothing to read yet: no buffer used.
    let head = rx_driver.add_chain(&[(12, true), (50, true), (60, true)]);
    assert!(!worker.process_rx());

    // 12 + 14 + 200 bytes do not fit the 122-byte buffer: dropped, buffer kept.
    host.send(&ethernet_frame(GUEST_MAC, [2, 0, 0, 0, 0, 9], &[0x11; 200]));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!worker.process_rx());
    assert_eq!(rx_driver.used_idx(), 0);

    let small = ethernet_frame(GUEST_MAC, [2, 0, 0, 0, 0, 9], b"rx-marker small frame");
    host.send(&small);
    wait_until("small frame delivered", || {
        worker.process_rx();
        rx_driver.used_idx() == 1
    });
    let (used_head, len) = rx_driver.used_entry(0);
    assert_eq!(used_head, head);
    assert_eq!(len as usize, VNET_HDR_LEN + small.len());
    let got = rx_driver.read_writable(head, len as usize);
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[VNET_HDR_LEN..], &small[..]);
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun"]
fn tap_rx_waits_for_guest_buffers_then_delivers() {
    let mut device = test_device();
    let host = PacketSocket::bind(device.tap_name());
    let mem = test_memory();
    let mut rx_driver = QueueDriver::new_at(&mem, 0, 16);
    let mut tx_driver = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq_probe = irq.try_clone().expect("clone");
    let interrupt = Arc::new(Interrupt::new(irq));
    let (rx_notify, tx_notify) = activate_threaded(
        &mut device,
        &mem,
        interrupt.clone(),
        (&rx_driver, &tx_driver),
    );

    // A frame arrives before the guest posted any buffer: it waits in the tap.
    let frame = ethernet_frame(GUEST_MAC, [2, 0, 0, 0, 0, 7], b"rx-marker early frame");
    host.send(&frame);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rx_driver.used_idx(), 0);
    assert_eq!(interrupt.status(), 0);

    // The guest posts buffers (MTU-sized, split) and notifies: the frame is delivered.
    let heads: Vec<u16> = (0..4)
        .map(|_| rx_driver.add_chain(&[(12, true), (600, true), (914, true)]))
        .collect();
    rx_notify.write(1).expect("notify");
    wait_until("rx delivery", || rx_driver.used_idx() >= 1);
    let found = (0..rx_driver.used_idx()).any(|pos| {
        let (head, len) = rx_driver.used_entry(pos);
        assert!(heads.contains(&head));
        let got = rx_driver.read_writable(head, len as usize);
        got[VNET_HDR_LEN..] == frame[..]
    });
    assert!(found, "early frame not delivered");
    wait_until("rx interrupt", || interrupt.status() & 1 == 1);
    assert!(irq_probe.read().expect("irq") >= 1);

    // Later frames go straight to the remaining buffers.
    let later = ethernet_frame(GUEST_MAC, [2, 0, 0, 0, 0, 7], b"rx-marker later frame");
    let before = rx_driver.used_idx();
    host.send(&later);
    wait_until("second delivery", || rx_driver.used_idx() > before);

    // TX through the worker thread too.
    let mut chain = vec![0u8; VNET_HDR_LEN];
    chain.extend(ethernet_frame([0xff; 6], GUEST_MAC, b"tx-marker threaded"));
    let head = tx_driver.add_chain(&[(12, false), (chain.len() as u32 - 12, false)]);
    tx_driver.write_readable(head, &chain);
    tx_notify.write(1).expect("notify");
    let got = host.recv_marked(b"tx-marker threaded");
    assert_eq!(got, chain[VNET_HDR_LEN..].to_vec());
    tx_driver.wait_used(1);

    device.reset();
    assert!(!device.is_active());
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun"]
fn tap_frames_are_limited_per_direction_and_held_ones_move_on_the_alarm() {
    let mut device = test_device();
    device.set_rate_limit(RateLimit {
        bytes_per_second: None,
        ops_per_second: std::num::NonZeroU64::new(4),
    });
    let host = PacketSocket::bind(device.tap_name());
    let mem = test_memory();
    let mut rx_driver = QueueDriver::new_at(&mem, 0, 32);
    let mut tx_driver = QueueDriver::new_at(&mem, DRIVER_SPAN, 32);
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let (rx_notify, tx_notify) =
        activate_threaded(&mut device, &mem, interrupt, (&rx_driver, &tx_driver));

    // TX: six frames and one notification; four go at once, the alarm sends the rest.
    let started = Instant::now();
    for n in 0..6 {
        let mut chain = vec![0u8; VNET_HDR_LEN];
        chain.extend(ethernet_frame(
            [0xff; 6],
            GUEST_MAC,
            format!("tx-limited {n}").as_bytes(),
        ));
        let head = tx_driver.add_chain(&[(chain.len() as u32, false)]);
        tx_driver.write_readable(head, &chain);
    }
    tx_notify.write(1).expect("notify");
    for n in 0..6 {
        host.recv_marked(format!("tx-limited {n}").as_bytes());
    }
    tx_driver.wait_used(6);
    assert!(started.elapsed() >= Duration::from_millis(450));

    // RX, limited separately: six frames from the host, buffers for all of them.
    for _ in 0..8 {
        rx_driver.add_chain(&[(1526, true)]);
    }
    rx_notify.write(1).expect("notify");
    let started = Instant::now();
    for n in 0..6 {
        host.send(&ethernet_frame(
            GUEST_MAC,
            [2, 0, 0, 0, 0, 7],
            format!("rx-limited {n}").as_bytes(),
        ));
    }
    wait_until("six rx frames", || rx_driver.used_idx() >= 6);
    assert!(started.elapsed() >= Duration::from_millis(450));
    let delivered: Vec<Vec<u8>> = (0..6)
        .map(|pos| {
            let (head, len) = rx_driver.used_entry(pos);
            rx_driver.read_writable(head, len as usize)[VNET_HDR_LEN..].to_vec()
        })
        .collect();
    for n in 0..6 {
        let marker = format!("rx-limited {n}");
        assert!(
            delivered
                .iter()
                .any(|frame| frame[14..].starts_with(marker.as_bytes())),
            "{marker} delivered"
        );
    }
    device.reset();
}
