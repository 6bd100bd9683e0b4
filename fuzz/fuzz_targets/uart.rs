//! COM1 (16550A) as the guest sees it: port reads and writes, with console input arriving
//! in between.

#![no_main]

use ironvisor_launcher::vmm::bus::BusDevice;
use ironvisor_launcher::vmm::legacy::irq::IrqLine;
use ironvisor_launcher::vmm::legacy::serial::SerialDevice;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let line = IrqLine::new(irq.try_clone().expect("eventfd clone"));
    let mut uart = SerialDevice::new(line, Box::new(std::io::sink()));
    // 3 bytes per step: kind (access, port offset, width), value, and a spare byte.
    for step in data.chunks(3) {
        let kind = step[0];
        let value = step.get(1).copied().unwrap_or(0);
        let offset = if kind & 0x80 == 0 {
            u64::from((kind >> 2) & 7)
        } else {
            // Offsets beyond the eight ports (the bus never sends them; the device must
            // still cope).
            u64::from(value) << (kind & 0x3f)
        };
        let width = [1usize, 1, 2, 0][usize::from((kind >> 5) & 3)];
        match kind & 3 {
            0 => {
                let mut buf = [0u8; 2];
                uart.read(offset, &mut buf[..width]);
            }
            1 => uart.write(offset, &[value, 0][..width]),
            2 => {
                // Console input: up to 64 KiB at once, the backlog's bound.
                let len = usize::from(value) << 8 | usize::from(step.get(2).copied().unwrap_or(0));
                uart.push_input(&vec![value; len]);
            }
            _ => {
                let _ = irq.read();
            }
        }
    }
});
