//! The i8042 controller as the guest sees it: port 0x60/0x64 reads and writes, with
//! Ctrl+Alt+Del from the host in between.

#![no_main]

use ironvisor_launcher::vmm::bus::BusDevice;
use ironvisor_launcher::vmm::events::channel;
use ironvisor_launcher::vmm::legacy::i8042::I8042;
use ironvisor_launcher::vmm::legacy::irq::IrqLine;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let (events, mut received) = channel();
    let mut i8042 = I8042::new(
        IrqLine::new(irq.try_clone().expect("eventfd clone")),
        events,
    );
    // 2 bytes per step: kind (access, port, width), value.
    for step in data.chunks(2) {
        let kind = step[0];
        let value = step.get(1).copied().unwrap_or(0);
        let offset = match (kind >> 2) & 3 {
            0 => 0,
            1 => 4,
            2 => u64::from(value % 8),
            _ => u64::from(value) << 32,
        };
        let width = [1usize, 1, 2, 0][usize::from((kind >> 4) & 3)];
        match kind & 3 {
            0 => {
                let mut buf = [0u8; 2];
                i8042.read(offset, &mut buf[..width]);
            }
            1 => i8042.write(offset, &[value, 0][..width]),
            2 => i8042.send_ctrl_alt_del(),
            _ => {
                let _ = irq.read();
            }
        }
    }
    // Reset requests go to the VMM's event loop; none may be lost or invented per step.
    let mut count = 0;
    while received.try_recv().is_ok() {
        count += 1;
    }
    assert!(count <= data.len());
});
