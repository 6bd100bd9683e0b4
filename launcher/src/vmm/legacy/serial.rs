//! COM1: a 16550A-compatible UART (vm-superio) whose output goes to the console hub and
//! whose receive FIFO is fed from console clients.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::irq::IrqLine;
use crate::vmm::bus::BusDevice;

/// Input bytes kept while the guest's receive FIFO is full. Beyond this, typing is dropped.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The UART plus the input that did not fit its FIFO yet.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
    pending_input: VecDeque<u8>,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, output: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(irq, output),
            pending_input: VecDeque::new(),
        }
    }

    /// Queues console input for the guest; bytes enter the FIFO as the guest drains it.
    pub fn push_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending_input.len());
        if room < bytes.len() {
            tracing::warn!(
                dropped = bytes.len() - room,
                "serial input backlog full; dropping input"
            );
        }
        self.pending_input.extend(&bytes[..bytes.len().min(room)]);
        self.fill_fifo();
    }

    fn fill_fifo(&mut self) {
        while !self.pending_input.is_empty() {
            let room = self.uart.fifo_capacity();
            if room == 0 {
                break;
            }
            let chunk: Vec<u8> = self.pending_input.iter().take(room).copied().collect();
            match self.uart.enqueue_raw_bytes(&chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending_input.drain(..n);
                }
                Err(err) => {
                    tracing::warn!(?err, "serial input could not be queued");
                    break;
                }
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(offset) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset);
        }
        // A read of the receive buffer may have made room for queued input.
        self.fill_fifo();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(err) = self.uart.write(offset, value) {
            tracing::debug!(?err, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Captured, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = Captured::default();
        let dev = SerialDevice::new(
            IrqLine::new(evt.try_clone().unwrap()),
            Box::new(out.clone()),
        );
        (dev, out, evt)
    }

    #[test]
    fn guest_writes_to_thr_reach_the_output() {
        let (mut dev, out, _evt) = device();
        for b in b"hello" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello");
    }

    #[test]
    fn input_larger_than_the_fifo_is_delivered_in_order_as_the_guest_reads() {
        let (mut dev, _out, evt) = device();
        // Enable the received-data interrupt like a driver would.
        dev.write(1, &[0x01]);
        let input: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        dev.push_input(&input);
        assert!(evt.read().unwrap() >= 1, "input raises the interrupt");
        let mut got = Vec::new();
        for _ in 0..input.len() {
            let mut lsr = [0u8];
            dev.read(5, &mut lsr);
            assert_eq!(lsr[0] & 0x01, 0x01, "data ready while input remains");
            let mut byte = [0u8];
            dev.read(0, &mut byte);
            got.push(byte[0]);
        }
        assert_eq!(got, input);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0, "no data left");
    }
}
