//! The hub wired to a real 8250 UART model (vm-superio), as the launcher wires it: the
//! guest's transmit register feeds `ConsoleOutput`, and client keystrokes reach the
//! UART's receive FIFO through `ConsoleInput`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvisor_console::{ConsoleHub, ConsoleInput, ConsoleOutput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vm_superio::{Serial, Trigger};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Transmit/receive holding register offset.
const DATA: u8 = 0;
/// Line status register offset and its "data ready" bit.
const LSR: u8 = 5;
const LSR_DATA_READY: u8 = 0x01;

struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

type Uart = Serial<NoIrq, vm_superio::serial::NoEvents, ConsoleOutput>;

/// What the VMM does: typed bytes go into the UART's receive FIFO.
struct UartInput(Arc<Mutex<Uart>>);

impl ConsoleInput for UartInput {
    fn send(&self, bytes: &[u8]) {
        self.0.lock().unwrap().enqueue_raw_bytes(bytes).unwrap();
    }
}

/// The guest driver: transmit a string one byte at a time.
fn guest_print(uart: &Mutex<Uart>, text: &[u8]) {
    let mut uart = uart.lock().unwrap();
    for byte in text {
        uart.write(DATA, *byte).unwrap();
    }
}

/// The guest driver: drain the receive FIFO.
fn guest_read(uart: &Mutex<Uart>) -> Vec<u8> {
    let mut uart = uart.lock().unwrap();
    let mut out = Vec::new();
    while uart.read(LSR) & LSR_DATA_READY != 0 {
        out.push(uart.read(DATA));
    }
    out
}

#[tokio::test]
async fn guest_output_and_user_input_round_trip_through_the_uart() {
    let hub = ConsoleHub::new(4096);
    let uart = Arc::new(Mutex::new(Serial::new(NoIrq, hub.output())));
    hub.set_input(Arc::new(UartInput(Arc::clone(&uart))));
    guest_print(&uart, b"Debian GNU/Linux 12 ttyS0\r\n");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let hub = hub.clone();
        let path = path.clone();
        tokio::spawn(async move {
            hub.serve_unix(&path, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut client = UnixStream::connect(&path).await.unwrap();
    let banner = b"Debian GNU/Linux 12 ttyS0\r\n";
    let mut buf = vec![0u8; banner.len()];
    tokio::time::timeout(TIMEOUT, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, banner);

    guest_print(&uart, b"login: ");
    let mut buf = [0u8; 7];
    tokio::time::timeout(TIMEOUT, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"login: ");

    client.write_all(b"root\r").await.unwrap();
    let mut typed = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while typed.len() < 5 {
            typed.extend(guest_read(&uart));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(typed, b"root\r");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!path.exists());
}
