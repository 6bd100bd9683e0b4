//! A descriptor chain split into its device-readable and device-writable buffers, with
//! gather/scatter between those buffers and host byte slices.
//!
//! Nothing here assumes that consecutive buffers are contiguous in guest memory: every copy
//! walks the chain's buffers one by one.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

/// Why a descriptor chain cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A buffer lies (partly) outside guest memory.
    #[error(
        "descriptor {index} of chain {head}: buffer {addr:#x}+{len:#x} is outside guest memory"
    )]
    OutOfMemory {
        /// Head index of the chain.
        head: u16,
        /// Position of the descriptor in the chain.
        index: usize,
        /// Guest address of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (virtio 1.x §2.7.4.2).
    #[error(
        "descriptor {index} of chain {head}: device-readable buffer after a device-writable one"
    )]
    ReadableAfterWritable {
        /// Head index of the chain.
        head: u16,
        /// Position of the descriptor in the chain.
        index: usize,
    },
    /// Copying to or from guest memory failed.
    #[error("chain {head}: guest memory access at {addr:#x} failed: {source}")]
    Memory {
        /// Head index of the chain.
        head: u16,
        /// Guest address of the failed access.
        addr: u64,
        /// What failed.
        #[source]
        source: GuestMemoryError,
    },
}

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Guest physical address.
    pub(crate) addr: GuestAddress,
    /// Length in bytes.
    pub(crate) len: usize,
}

/// The buffers of one descriptor chain, validated against guest memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainBuffers {
    head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl ChainBuffers {
    /// Walks `chain` (following indirect tables), checking that every buffer lies in guest
    /// memory and that device-readable buffers come first.
    pub(crate) fn parse<M>(chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut buffers = Self {
            head,
            ..Self::default()
        };
        let mut chain = chain;
        let mut index = 0;
        // Not a `for` loop: the body needs the chain's memory between descriptors.
        while let Some(desc) = chain.next() {
            let len = desc.len();
            let ulen = len as usize;
            let access = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if ulen > 0 && !chain.memory().check_range(desc.addr(), ulen, access) {
                return Err(ChainError::OutOfMemory {
                    head,
                    index,
                    addr: desc.addr().0,
                    len,
                });
            }
            let segment = Segment {
                addr: desc.addr(),
                len: ulen,
            };
            if desc.is_write_only() {
                buffers.writable.push(segment);
            } else if buffers.writable.is_empty() {
                buffers.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable { head, index });
            }
            index += 1;
        }
        Ok(buffers)
    }

    /// Head descriptor index, for `add_used`.
    pub(crate) fn head(&self) -> u16 {
        self.head
    }

    /// Device-readable buffers, in chain order.
    pub(crate) fn readable(&self) -> &[Segment] {
        &self.readable
    }

    /// Device-writable buffers, in chain order.
    pub(crate) fn writable(&self) -> &[Segment] {
        &self.writable
    }

    /// Total bytes of the device-readable part.
    pub(crate) fn readable_len(&self) -> usize {
        total_len(&self.readable)
    }

    /// Total bytes of the device-writable part.
    pub(crate) fn writable_len(&self) -> usize {
        total_len(&self.writable)
    }

    /// Copies readable bytes starting `skip` bytes into the readable part into `out`;
    /// returns how many bytes were copied (less than `out.len()` at the end of the part).
    pub(crate) fn gather(
        &self,
        mem: &GuestMemoryMmap<()>,
        skip: usize,
        out: &mut [u8],
    ) -> Result<usize, ChainError> {
        let mut copied = 0;
        for (segment, offset, len) in sub_range(&self.readable, skip, out.len()) {
            let addr = offset_addr(segment.addr, offset);
            mem.read_slice(&mut out[copied..copied + len], addr)
                .map_err(|source| self.memory_error(addr, source))?;
            copied += len;
        }
        Ok(copied)
    }

    /// Copies `data` into the writable part starting `skip` bytes into it; returns how many
    /// bytes were copied (less than `data.len()` when the part is too short).
    pub(crate) fn scatter(
        &self,
        mem: &GuestMemoryMmap<()>,
        skip: usize,
        data: &[u8],
    ) -> Result<usize, ChainError> {
        let mut copied = 0;
        for (segment, offset, len) in sub_range(&self.writable, skip, data.len()) {
            let addr = offset_addr(segment.addr, offset);
            mem.write_slice(&data[copied..copied + len], addr)
                .map_err(|source| self.memory_error(addr, source))?;
            copied += len;
        }
        Ok(copied)
    }

    /// The error for a failed access at `addr`.
    pub(crate) fn memory_error(&self, addr: GuestAddress, source: GuestMemoryError) -> ChainError {
        ChainError::Memory {
            head: self.head,
            addr: addr.0,
            source,
        }
    }
}

fn total_len(segments: &[Segment]) -> usize {
    segments.iter().map(|s| s.len).sum()
}

fn offset_addr(addr: GuestAddress, offset: usize) -> GuestAddress {
    GuestAddress(addr.0.wrapping_add(offset as u64))
}

/// The pieces of `segments` covering `len` bytes from byte `skip` of their concatenation,
/// as `(segment, offset in segment, length)`; stops early at the end of the segments.
pub(crate) fn sub_range(
    segments: &[Segment],
    skip: usize,
    len: usize,
) -> impl Iterator<Item = (Segment, usize, usize)> + '_ {
    let mut to_skip = skip;
    let mut remaining = len;
    segments.iter().filter_map(move |segment| {
        if remaining == 0 {
            return None;
        }
        if to_skip >= segment.len {
            to_skip -= segment.len;
            return None;
        }
        let offset = to_skip;
        to_skip = 0;
        let take = (segment.len - offset).min(remaining);
        remaining -= take;
        Some((*segment, offset, take))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, QueueDriver};

    fn seg(addr: u64, len: usize) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn sub_range_walks_segments() {
        let segments = [seg(0x1000, 4), seg(0x3000, 2), seg(0x5000, 8)];
        let pieces: Vec<_> = sub_range(&segments, 3, 6)
            .map(|(s, off, len)| (s.addr.0, off, len))
            .collect();
        assert_eq!(pieces, vec![(0x1000, 3, 1), (0x3000, 0, 2), (0x5000, 0, 3)]);
        let pieces: Vec<_> = sub_range(&segments, 6, 100)
            .map(|(s, off, len)| (s.addr.0, off, len))
            .collect();
        assert_eq!(pieces, vec![(0x5000, 0, 8)]);
        assert_eq!(sub_range(&segments, 14, 5).count(), 0);
        assert_eq!(sub_range(&segments, 0, 0).count(), 0);
    }

    #[test]
    fn parse_gather_scatter_over_gapped_buffers() {
        let mem = test_memory();
        let mut driver = QueueDriver::new(&mem, 16);
        let head = driver.add_chain(&[(5, false), (7, false), (3, true), (9, true)]);
        driver.write_readable(head, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut queue = driver.queue();
        let chain = driver.pop(&mut queue).expect("chain");
        let buffers = ChainBuffers::parse(chain).expect("parse");
        assert_eq!(buffers.head(), head);
        assert_eq!(buffers.readable_len(), 12);
        assert_eq!(buffers.writable_len(), 12);
        assert_eq!(buffers.readable().len(), 2);
        assert_eq!(buffers.writable().len(), 2);
        // Buffers are not contiguous.
        let r = buffers.readable();
        assert_ne!(r[0].addr.0 + r[0].len as u64, r[1].addr.0);

        let mut out = [0u8; 8];
        assert_eq!(buffers.gather(&mem, 3, &mut out).expect("gather"), 8);
        assert_eq!(out, [4, 5, 6, 7, 8, 9, 10, 11]);
        let mut out = [0u8; 8];
        assert_eq!(buffers.gather(&mem, 10, &mut out).expect("gather"), 2);
        assert_eq!(&out[..2], &[11, 12]);

        let data: Vec<u8> = (100..112).collect();
        assert_eq!(buffers.scatter(&mem, 1, &data).expect("scatter"), 11);
        assert_eq!(driver.read_writable(head, 12), {
            let mut v = vec![0u8];
            v.extend(100..111);
            v
        });
    }

    #[test]
    fn parse_rejects_out_of_memory_and_misordered_chains() {
        let mem = test_memory();
        let mut driver = QueueDriver::new(&mem, 16);
        driver.add_raw_chain(&[(0xffff_0000, 16, false)]);
        driver.add_chain(&[(4, true), (4, false)]);
        let mut queue = driver.queue();
        let chain = driver.pop(&mut queue).expect("chain");
        assert!(matches!(
            ChainBuffers::parse(chain),
            Err(ChainError::OutOfMemory { index: 0, .. })
        ));
        let chain = driver.pop(&mut queue).expect("chain");
        assert!(matches!(
            ChainBuffers::parse(chain),
            Err(ChainError::ReadableAfterWritable { index: 1, .. })
        ));
    }

    #[test]
    fn parse_follows_indirect_tables() {
        let mem = test_memory();
        let mut driver = QueueDriver::new(&mem, 16);
        let head = driver.add_indirect_chain(&[(6, false), (10, true)]);
        driver.write_readable(head, b"abcdef");
        let mut queue = driver.queue();
        let chain = driver.pop(&mut queue).expect("chain");
        let buffers = ChainBuffers::parse(chain).expect("parse");
        assert_eq!(buffers.readable_len(), 6);
        assert_eq!(buffers.writable_len(), 10);
        let mut out = [0u8; 6];
        buffers.gather(&mem, 0, &mut out).expect("gather");
        assert_eq!(&out, b"abcdef");
    }
}
