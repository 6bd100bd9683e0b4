//! Test helpers: guest memory and a driver-side split queue that scatters descriptors and
//! their buffers with gaps, so that code assuming contiguity fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of the test guest memory (two adjacent regions of half this size).
pub(crate) const TEST_MEM_SIZE: u64 = 16 << 20;
/// Bytes of guest memory each [`QueueDriver`] owns, from its base address.
pub(crate) const DRIVER_SPAN: u64 = 4 << 20;

/// Guest memory made of two adjacent regions, so that buffers may straddle a boundary.
pub(crate) fn test_memory() -> GuestMemoryMmap<()> {
    let half = TEST_MEM_SIZE / 2;
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), half as usize),
        (GuestAddress(half), half as usize),
    ])
    .expect("test guest memory")
}

/// One buffer of a chain as the driver wrote it.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    addr: u64,
    len: u32,
    writable: bool,
}

/// The driver side of one split virtqueue.
pub(crate) struct QueueDriver<'a> {
    mem: &'a GuestMemoryMmap<()>,
    mock: MockSplitQueue<'a, GuestMemoryMmap<()>>,
    size: u16,
    free: Vec<u16>,
    cursor: u64,
    limit: u64,
    rng: u64,
    chains: HashMap<u16, Vec<Buffer>>,
    avail_idx: u16,
}

impl<'a> QueueDriver<'a> {
    /// A queue of `size` entries with its rings at the start of guest memory.
    pub(crate) fn new(mem: &'a GuestMemoryMmap<()>, size: u16) -> Self {
        Self::new_at(mem, 0, size)
    }

    /// A queue of `size` entries owning guest memory `[base, base + DRIVER_SPAN)`.
    pub(crate) fn new_at(mem: &'a GuestMemoryMmap<()>, base: u64, size: u16) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        let mut rng = 0x9e37_79b9_7f4a_7c15 ^ base;
        // Descriptor indexes in a shuffled order, so chains jump around the table.
        let mut free: Vec<u16> = (0..size).collect();
        for i in (1..free.len()).rev() {
            let j = (xorshift(&mut rng) % (i as u64 + 1)) as usize;
            free.swap(i, j);
        }
        Self {
            mem,
            mock,
            size,
            free,
            cursor: base + 0x10000,
            limit: base + DRIVER_SPAN,
            rng,
            chains: HashMap::new(),
            avail_idx: 0,
        }
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub(crate) fn ring_addresses(&self) -> (u64, u64, u64) {
        (
            self.mock.desc_table_addr().0,
            self.mock.avail_addr().0,
            self.mock.used_addr().0,
        )
    }

    /// Queue size.
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// A device-side queue configured for these rings (as the transport would build it).
    pub(crate) fn queue(&self) -> Queue {
        self.mock.create_queue().expect("queue from mock")
    }

    /// Pops the next available chain from `queue`.
    pub(crate) fn pop<'m>(
        &self,
        queue: &'m mut Queue,
    ) -> Option<DescriptorChain<&'a GuestMemoryMmap<()>>> {
        queue.iter(self.mem).expect("queue iter").next()
    }

    fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let gap = 1 + xorshift(&mut self.rng) % 256;
        let addr = (self.cursor + gap).next_multiple_of(align);
        self.cursor = addr + len;
        assert!(self.cursor <= self.limit, "queue driver ran out of memory");
        addr
    }

    /// Adds a chain of fresh buffers `(len, device_writable)` and publishes it; returns
    /// the head index.
    pub(crate) fn add_chain(&mut self, segments: &[(u32, bool)]) -> u16 {
        let buffers: Vec<Buffer> = segments
            .iter()
            .map(|&(len, writable)| Buffer {
                addr: self.alloc(u64::from(len), 1),
                len,
                writable,
            })
            .collect();
        self.publish(buffers)
    }

    /// Adds a chain of buffers at the given `(addr, len, device_writable)` and publishes it.
    pub(crate) fn add_raw_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let buffers = descs
            .iter()
            .map(|&(addr, len, writable)| Buffer {
                addr,
                len,
                writable,
            })
            .collect();
        self.publish(buffers)
    }

    fn publish(&mut self, buffers: Vec<Buffer>) -> u16 {
        assert!(!buffers.is_empty());
        assert!(buffers.len() <= self.free.len(), "descriptor table full");
        let indexes: Vec<u16> = self.free.drain(..buffers.len()).collect();
        for (pos, buffer) in buffers.iter().enumerate() {
            let mut flags = if buffer.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = indexes.get(pos + 1).copied().unwrap_or(0);
            if pos + 1 < indexes.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(buffer.addr, buffer.len, flags, next);
            self.mock
                .desc_table()
                .store(indexes[pos], RawDescriptor::from(desc))
                .expect("store descriptor");
        }
        let head = indexes[0];
        self.chains.insert(head, buffers);
        self.make_available(head);
        head
    }

    /// Adds a chain described by an indirect table of fresh buffers; returns the head.
    pub(crate) fn add_indirect_chain(&mut self, segments: &[(u32, bool)]) -> u16 {
        let buffers: Vec<Buffer> = segments
            .iter()
            .map(|&(len, writable)| Buffer {
                addr: self.alloc(u64::from(len), 1),
                len,
                writable,
            })
            .collect();
        let table = self.alloc(16 * buffers.len() as u64, 16);
        for (pos, buffer) in buffers.iter().enumerate() {
            let mut flags = if buffer.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if pos + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(buffer.addr, buffer.len, flags, pos as u16 + 1);
            self.mem
                .write_obj(
                    RawDescriptor::from(desc),
                    GuestAddress(table + 16 * pos as u64),
                )
                .expect("store indirect descriptor");
        }
        let head = self.free.remove(0);
        let desc = SplitDescriptor::new(
            table,
            16 * buffers.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.mock
            .desc_table()
            .store(head, RawDescriptor::from(desc))
            .expect("store descriptor");
        self.chains.insert(head, buffers);
        self.make_available(head);
        head
    }

    fn make_available(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.mock
            .avail()
            .ring()
            .ref_at(slot)
            .expect("avail slot")
            .store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mock.avail().idx().store(self.avail_idx);
    }

    /// Writes `data` across the device-readable buffers of chain `head`.
    pub(crate) fn write_readable(&self, head: u16, data: &[u8]) {
        let mut done = 0;
        for buffer in self.chain(head).iter().filter(|b| !b.writable) {
            if done == data.len() {
                break;
            }
            let take = (buffer.len as usize).min(data.len() - done);
            self.mem
                .write_slice(&data[done..done + take], GuestAddress(buffer.addr))
                .expect("write readable buffer");
            done += take;
        }
        assert_eq!(done, data.len(), "readable buffers too short");
    }

    /// Reads the first `len` bytes of the device-writable buffers of chain `head`.
    pub(crate) fn read_writable(&self, head: u16, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        for buffer in self.chain(head).iter().filter(|b| b.writable) {
            if done == len {
                break;
            }
            let take = (buffer.len as usize).min(len - done);
            self.mem
                .read_slice(&mut out[done..done + take], GuestAddress(buffer.addr))
                .expect("read writable buffer");
            done += take;
        }
        assert_eq!(done, len, "writable buffers too short");
        out
    }

    /// Reads the whole device-writable part of chain `head`.
    pub(crate) fn writable_bytes(&self, head: u16) -> Vec<u8> {
        let len = self
            .chain(head)
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.len as usize)
            .sum();
        self.read_writable(head, len)
    }

    fn chain(&self, head: u16) -> &[Buffer] {
        self.chains
            .get(&head)
            .map(Vec::as_slice)
            .expect("known chain")
    }

    /// The used ring's index.
    pub(crate) fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// The used ring entry at position `pos` as `(head, len)`.
    pub(crate) fn used_entry(&self, pos: u16) -> (u16, u32) {
        let elem = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(pos % self.size))
            .expect("used slot")
            .load();
        (elem.id() as u16, elem.len())
    }

    /// Waits (up to 5 s) until the used index reaches `idx`.
    pub(crate) fn wait_used(&self, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for used idx {idx}, at {}",
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Polls `cond` for up to 5 s.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
