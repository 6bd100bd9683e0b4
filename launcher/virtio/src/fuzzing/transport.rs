//! The virtio-mmio register window: a sequence of guest reads and writes, with a device
//! that, once activated, serves each queue it was handed for one pass.

use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::guest::{event, memory, Input};
use crate::chain::ChainBuffers;
use crate::device::{read_config_bytes, ActivateError, DeviceQueue, VirtioDevice, COMMON_FEATURES};
use crate::interrupt::Interrupt;
use crate::queue_pass::Pass;
use crate::transport::MmioTransport;

/// Register offsets a driver uses, so that short inputs hit real registers.
const REGISTERS: [u64; 28] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b8, 0x0fc,
    0x100, 0x104,
];
/// Bytes per register access in the input.
const OP_LEN: usize = 7;
/// Most accesses one input makes.
const MAX_OPS: usize = 256;

/// A device with fuzzer-chosen queue sizes that pops every chain of its queues when
/// activated, the way a worker's first pass would.
struct FuzzDevice {
    queue_sizes: Vec<u16>,
    features: u64,
    config: [u8; 16],
    active: bool,
}

impl VirtioDevice for FuzzDevice {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }

    fn kind(&self) -> &'static str {
        "virtio-fuzz"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        assert_eq!(features & !self.features, 0, "acked features never offered");
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = start.checked_add(i).and_then(|at| self.config.get_mut(at)) {
                *slot = *byte;
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        _interrupt: Arc<Interrupt>,
        queues: Vec<DeviceQueue>,
    ) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::AlreadyActive {
                device: self.kind(),
            });
        }
        assert_eq!(queues.len(), self.queue_sizes.len());
        for mut device_queue in queues {
            let queue = &mut device_queue.queue;
            assert!(
                queue.is_valid(&mem),
                "the transport handed over a bad queue"
            );
            let mut pass = Pass::new();
            while let Ok(Some(chain)) = pass.next(queue, &mem) {
                let head = chain.head_index();
                let _ = ChainBuffers::parse(chain);
                let _ = queue.add_used(&mem, head, 0);
            }
        }
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = false;
    }

    fn is_active(&self) -> bool {
        self.active
    }
}

/// Input: one byte of device shape, one byte of access count, the accesses
/// (7 bytes each: kind, offset, value), then guest memory.
pub fn mmio_transport(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.u8();
    let queue_sizes = match shape % 4 {
        0 => vec![256],
        1 => vec![256, 256],
        2 => vec![16, 1024, 2],
        _ => vec![32768],
    };
    let features = COMMON_FEATURES | (u64::from(shape >> 2) << 1);
    let ops = usize::from(input.u8()).min(MAX_OPS);
    let ops = input.take(ops * OP_LEN);
    let mem = memory(input.rest());
    let device = FuzzDevice {
        queue_sizes,
        features,
        config: [0; 16],
        active: false,
    };
    let mut transport =
        MmioTransport::new(mem, Box::new(device), event()).expect("transport for a valid device");
    for op in ops.chunks(OP_LEN) {
        let mut op = Input::new(op);
        let kind = op.u8();
        let selector = op.u16();
        let offset = if kind & 0x80 == 0 {
            REGISTERS[usize::from(selector) % REGISTERS.len()]
        } else {
            u64::from(selector)
        };
        let width = [4usize, 4, 4, 1, 2, 8, 0, 3][usize::from(kind >> 4) & 7];
        let value = u64::from(op.u32());
        let value = value | (value << 32);
        if kind & 1 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        } else {
            transport.write(offset, &value.to_le_bytes()[..width]);
        }
        if transport.is_activated() {
            assert!(transport.device().is_active());
        }
    }
}
