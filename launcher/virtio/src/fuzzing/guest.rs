//! Guest memory and virtqueues built from fuzzer bytes.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory: two adjacent regions (buffers may straddle them) and one after a hole.
const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x2_0000, 0x4000)];
/// The largest queue any device offers.
pub(crate) const MAX_QUEUE_SIZE: u16 = 256;
/// How many times a harness lets a device look at its queues per input.
pub(crate) const PASSES: usize = 2;

/// The fuzzer's bytes, read front to back; reads past the end give zeros.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next `len` bytes (fewer at the end).
    pub(crate) fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(len.min(self.data.len()));
        self.data = tail;
        head
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Where a driver placed one queue, as read from the input (12 bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLayout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl QueueLayout {
    /// Reads a layout: size (a power of two up to 256), ring addresses inside the first
    /// 64 KiB (aligned as virtio requires) and the device's starting ring indexes.
    pub(crate) fn read(input: &mut Input<'_>) -> Self {
        let size = 1u16 << (input.u8() % 9);
        Self {
            size,
            desc: u64::from(input.u16() % 0x1000) * 16,
            avail: u64::from(input.u16() % 0x8000) * 2,
            used: u64::from(input.u16() % 0x4000) * 4,
            next_avail: input.u16(),
            next_used: input.u16(),
        }
        .or_packed_if(input.u8() & 1 == 0)
    }

    /// The packed default (descriptor table at 0, rings right after it) when `packed`,
    /// so that short inputs describe whole rings.
    fn or_packed_if(self, packed: bool) -> Self {
        if !packed {
            return self;
        }
        let size = u64::from(self.size);
        let avail = size * 16;
        let used = (avail + 6 + 2 * size).next_multiple_of(4);
        Self {
            desc: 0,
            avail,
            used,
            ..self
        }
    }

    /// The device-side queue, ready, as the transport hands it over. A layout that the
    /// transport would refuse (rings outside memory) falls back to the packed one.
    pub(crate) fn queue(self, mem: &GuestMemoryMmap<()>) -> Queue {
        let build = |layout: Self| {
            let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("queue");
            queue.try_set_size(layout.size).expect("power-of-two size");
            queue
                .try_set_desc_table_address(GuestAddress(layout.desc))
                .expect("aligned descriptor table");
            queue
                .try_set_avail_ring_address(GuestAddress(layout.avail))
                .expect("aligned avail ring");
            queue
                .try_set_used_ring_address(GuestAddress(layout.used))
                .expect("aligned used ring");
            queue.set_ready(true);
            queue.set_next_avail(layout.next_avail);
            queue.set_next_used(layout.next_used);
            queue
        };
        let queue = build(self);
        if queue.is_valid(mem) {
            queue
        } else {
            build(self.or_packed_if(true))
        }
    }
}

/// Guest memory holding `bytes` from address 0 on, region after region.
pub(crate) fn memory(bytes: &[u8]) -> GuestMemoryMmap<()> {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    let mut rest = bytes;
    for &(start, len) in &REGIONS {
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        mem.write_slice(chunk, GuestAddress(start))
            .expect("chunk fits its region");
        rest = tail;
    }
    mem
}

/// A non-blocking EventFd.
pub(crate) fn event() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}
