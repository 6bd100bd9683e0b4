use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::test_utils::{test_memory, wait_until, QueueDriver, DRIVER_SPAN};

struct Running {
    rx_notify: EventFd,
    tx_notify: EventFd,
    interrupt: Arc<Interrupt>,
}

fn activate(
    device: &mut ConsoleDevice,
    mem: &GuestMemoryMmap<()>,
    rx: &QueueDriver<'_>,
    tx: &QueueDriver<'_>,
) -> Running {
    let rx_notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let tx_notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    device
        .activate(
            mem.clone(),
            interrupt.clone(),
            vec![
                DeviceQueue {
                    index: 0,
                    queue: rx.queue(),
                    event: rx_notify.try_clone().expect("clone"),
                },
                DeviceQueue {
                    index: 1,
                    queue: tx.queue(),
                    event: tx_notify.try_clone().expect("clone"),
                },
            ],
        )
        .expect("activate");
    Running {
        rx_notify,
        tx_notify,
        interrupt,
    }
}

fn connect(path: &Path) -> UnixStream {
    let client = UnixStream::connect(path).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client
}

/// Guest output: one TX chain of `data` split in two buffers.
fn guest_write(tx: &mut QueueDriver<'_>, running: &Running, data: &[u8]) -> u16 {
    let first = (data.len() / 2).max(1) as u32;
    let head = tx.add_chain(&[(first, false), (data.len() as u32 - first, false)]);
    tx.write_readable(head, data);
    running.tx_notify.write(1).expect("notify");
    head
}

#[test]
fn new_validates_and_cleans_the_socket_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope").join("agent.sock");
    assert!(matches!(
        ConsoleDevice::new(&missing),
        Err(ConsoleError::ParentMissing { .. })
    ));

    // A stale file is replaced by the socket.
    let path = dir.path().join("agent.sock");
    std::fs::write(&path, b"stale").expect("stale file");
    let device = ConsoleDevice::new(&path).expect("device");
    assert_eq!(device.socket_path(), path);
    let meta = std::fs::symlink_metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    // A socket that is being served is not stale.
    assert!(matches!(
        ConsoleDevice::new(&path),
        Err(ConsoleError::InUse { .. })
    ));
    drop(device);
    assert!(!path.exists(), "socket removed on drop");

    // A socket left behind by a dead process is stale.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let device = ConsoleDevice::new(&path).expect("device over a stale socket");
    drop(device);

    // A directory in the way is an error, not silently removed.
    let blocker = dir.path().join("dir.sock");
    std::fs::create_dir(&blocker).expect("dir");
    assert!(matches!(
        ConsoleDevice::new(&blocker),
        Err(ConsoleError::RemoveStale { .. })
    ));
    assert!(blocker.is_dir());
}

#[test]
fn identity_and_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = ConsoleDevice::new(&dir.path().join("c.sock")).expect("device");
    assert_eq!(device.device_type(), VIRTIO_ID_CONSOLE);
    assert_eq!(device.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(device.avail_features(), COMMON_FEATURES);
    let mut config = [0xffu8; 12];
    device.read_config(0, &mut config);
    assert_eq!(config, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn round_trip_through_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut device = ConsoleDevice::new(&path).expect("device");
    let mem = test_memory();
    let mut rx = QueueDriver::new_at(&mem, 0, 16);
    let mut tx = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let running = activate(&mut device, &mem, &rx, &tx);

    // Client bytes sent before the guest posted buffers are kept.
    let mut client = connect(&path);
    client.write_all(b"hello guest\n").expect("client write");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.used_idx(), 0);

    let head = rx.add_chain(&[(4, true), (5, true), (64, true)]);
    running.rx_notify.write(1).expect("notify");
    rx.wait_used(1);
    assert_eq!(rx.used_entry(0), (head, 12));
    assert_eq!(rx.read_writable(head, 12), b"hello guest\n");
    wait_until("rx interrupt", || running.interrupt.status() & 1 == 1);

    // With a buffer already posted, bytes flow at once.
    let head = rx.add_chain(&[(3, true), (61, true)]);
    running.rx_notify.write(1).expect("notify");
    client.write_all(b"second").expect("client write");
    rx.wait_used(2);
    assert_eq!(rx.used_entry(1), (head, 6));
    assert_eq!(rx.read_writable(head, 6), b"second");

    // Guest output reaches the client.
    let head = guest_write(&mut tx, &running, b"hello host");
    let mut got = [0u8; 10];
    client.read_exact(&mut got).expect("client read");
    assert_eq!(&got, b"hello host");
    tx.wait_used(1);
    assert_eq!(tx.used_entry(0), (head, 0));
}

#[test]
fn a_new_client_replaces_the_old_and_output_without_client_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut device = ConsoleDevice::new(&path).expect("device");
    let mem = test_memory();
    let rx = QueueDriver::new_at(&mem, 0, 16);
    let mut tx = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let running = activate(&mut device, &mem, &rx, &tx);

    // No client: the output is consumed and dropped.
    guest_write(&mut tx, &running, b"nobody listens");
    tx.wait_used(1);

    let mut first = connect(&path);
    // Make sure the first client was accepted before the second arrives.
    guest_write(&mut tx, &running, b"to first");
    let mut got = [0u8; 8];
    first.read_exact(&mut got).expect("first read");
    assert_eq!(&got, b"to first");

    let mut second = connect(&path);
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).expect("first client sees EOF");
    assert!(rest.is_empty());

    guest_write(&mut tx, &running, b"to second");
    let mut got = [0u8; 9];
    second.read_exact(&mut got).expect("second read");
    assert_eq!(&got, b"to second");

    // The second client leaves: output is dropped again, the device keeps working.
    drop(second);
    guest_write(&mut tx, &running, b"gone");
    tx.wait_used(4);
    let mut third = connect(&path);
    guest_write(&mut tx, &running, b"third");
    let mut got = [0u8; 5];
    third.read_exact(&mut got).expect("third read");
    assert_eq!(&got, b"third");
}

#[test]
fn large_input_is_buffered_until_the_guest_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut device = ConsoleDevice::new(&path).expect("device");
    let mem = test_memory();
    let mut rx = QueueDriver::new_at(&mem, 0, 256);
    let tx = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
    let running = activate(&mut device, &mem, &rx, &tx);

    // More than the device buffers: the writer blocks until the guest catches up.
    let total = 3 * INPUT_CAPACITY + 1234;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let mut client = connect(&path);
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        client.write_all(&to_send).expect("client write");
        client
    });

    let mut received = Vec::new();
    let mut heads = Vec::new();
    let mut used = 0u16;
    while received.len() < total {
        assert!(heads.len() < 128, "ran out of descriptors");
        // Post buffers a few at a time, as a slow guest would.
        for _ in 0..4 {
            heads.push(rx.add_chain(&[(2048, true), (2048, true)]));
        }
        running.rx_notify.write(1).expect("notify");
        let target = heads.len() as u16;
        wait_until("rx progress", || {
            rx.used_idx() == target || {
                // The tail of the stream may not fill every buffer.
                let pending: usize = (used..rx.used_idx())
                    .map(|pos| rx.used_entry(pos).1 as usize)
                    .sum();
                received.len() + pending == total
            }
        });
        while used < rx.used_idx() {
            let (head, len) = rx.used_entry(used);
            received.extend(rx.read_writable(head, len as usize));
            used += 1;
        }
    }
    assert_eq!(received.len(), total);
    assert!(received == data, "stream corrupted or reordered");
    drop(writer.join().expect("writer"));
}

#[test]
fn reset_keeps_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut device = ConsoleDevice::new(&path).expect("device");
    let mem = test_memory();
    let mut client = connect(&path);
    for round in 0..2u8 {
        let rx = QueueDriver::new_at(&mem, 0, 16);
        let mut tx = QueueDriver::new_at(&mem, DRIVER_SPAN, 16);
        let running = activate(&mut device, &mem, &rx, &tx);
        assert!(device.is_active());
        let message = [b'r', b'0' + round];
        guest_write(&mut tx, &running, &message);
        let mut got = [0u8; 2];
        client.read_exact(&mut got).expect("client read");
        assert_eq!(got, message);
        device.reset();
        assert!(!device.is_active());
    }
}

#[test]
fn a_tx_chain_repeating_one_buffer_is_copied_only_up_to_the_output_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut device = ConsoleDevice::new(&path).expect("device");
    let mem = test_memory();
    let rx = QueueDriver::new_at(&mem, 0, 16);
    let mut tx = QueueDriver::new_at(&mem, DRIVER_SPAN, 256);
    let running = activate(&mut device, &mem, &rx, &tx);
    let mut client = connect(&path);
    guest_write(&mut tx, &running, b"hello");
    let mut got = [0u8; 5];
    client.read_exact(&mut got).expect("client accepted");

    // 200 descriptors that all name the same 1 MiB buffer: 200 MiB offered.
    let buffer = 3 * DRIVER_SPAN;
    mem.write_slice(&[b'x'; 1 << 20], GuestAddress(buffer))
        .expect("fill");
    let descs = vec![(buffer, 1u32 << 20, false); 200];
    tx.add_raw_chain(&descs);
    running.tx_notify.write(1).expect("notify");
    tx.wait_used(2);

    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut received = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match client.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("read: {err}"),
        }
    }
    assert_eq!(received.len(), OUTPUT_CAPACITY);
    assert!(received.iter().all(|&b| b == b'x'));
}
