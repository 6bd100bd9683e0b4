//! Copying parts of a file (a kernel's segments, an initrd) into guest memory on several
//! threads at once.
//!
//! Loading a kernel is a copy from the page cache into fresh guest memory, and that copy
//! (with the kernel zeroing each new huge page first) is most of what a VMM does before
//! its guest runs: for a 45 MB Debian vmlinux, ~260 ms of the ~415 ms before the first
//! `KVM_RUN` in the nested benchmark. The ranges are cut into chunks that threads copy
//! side by side, each with positioned reads (`pread`), so no thread moves another's file
//! offset. One chunk or one CPU: copied on the calling thread, no thread started.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::{Error as VolatileMemoryError, VolatileSlice};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

/// Largest piece one thread copies at a time; the ranges are cut at these boundaries.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Most threads used for one copy (beyond this the copy is bound by memory, not CPUs).
pub const MAX_THREADS: usize = 4;
/// Stack of each copying thread: it only calls `pread`.
const THREAD_STACK_BYTES: usize = 64 << 10;

/// `len` bytes at `file_offset` of the file, to be placed at `guest_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    /// Where the bytes start in the file.
    pub file_offset: u64,
    /// Where they go in guest memory.
    pub guest_addr: GuestAddress,
    /// How many bytes.
    pub len: usize,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum FileCopyError {
    /// The bytes for `addr` could not be read or placed.
    #[error("{len} bytes from file offset {file_offset:#x} to guest address {addr:#x}: {source}")]
    Chunk {
        /// Where the chunk starts in the file.
        file_offset: u64,
        /// Where it was going in guest memory.
        addr: u64,
        /// Its length.
        len: usize,
        /// What the read or the placement reported.
        source: vm_memory::GuestMemoryError,
    },
    /// A copying thread could not be started.
    #[error("starting a copying thread: {0}")]
    Thread(#[source] io::Error),
}

/// Copies every range of `file` into `mem` with up to `threads` threads (at least one);
/// each byte is read exactly once.
pub fn copy_ranges<M: GuestMemoryBackend + Sync>(
    mem: &M,
    file: &File,
    ranges: &[FileRange],
    threads: usize,
) -> Result<(), FileCopyError> {
    let chunks = chunks_of(ranges);
    let threads = threads.clamp(1, MAX_THREADS).min(chunks.len().max(1));
    if threads == 1 {
        return chunks.iter().try_for_each(|c| copy_chunk(mem, file, c));
    }
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(threads);
        for worker in 0..threads {
            let mine: Vec<FileRange> = chunks
                .iter()
                .skip(worker)
                .step_by(threads)
                .copied()
                .collect();
            let handle = std::thread::Builder::new()
                .name(format!("load-{worker}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn_scoped(scope, move || {
                    mine.iter().try_for_each(|c| copy_chunk(mem, file, c))
                })
                .map_err(FileCopyError::Thread)?;
            workers.push(handle);
        }
        workers.into_iter().try_for_each(|handle| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// The CPUs this process may run on (1 when unknown), looked up once: std reads the
/// affinity mask and the cgroup's CPU quota files for it, and the kernel and the initrd
/// both ask.
pub fn available_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `ranges` cut into pieces of at most [`CHUNK_BYTES`], in order.
fn chunks_of(ranges: &[FileRange]) -> Vec<FileRange> {
    let mut chunks = Vec::new();
    for range in ranges {
        let mut done = 0usize;
        while done < range.len {
            let len = (range.len - done).min(CHUNK_BYTES);
            chunks.push(FileRange {
                file_offset: range.file_offset + done as u64,
                guest_addr: range.guest_addr.unchecked_add(done as u64),
                len,
            });
            done += len;
        }
    }
    chunks
}

fn copy_chunk<M: GuestMemoryBackend>(
    mem: &M,
    file: &File,
    chunk: &FileRange,
) -> Result<(), FileCopyError> {
    let mut reader = PositionedReader {
        file,
        offset: chunk.file_offset,
    };
    mem.read_exact_volatile_from(chunk.guest_addr, &mut reader, chunk.len)
        .map_err(|source| FileCopyError::Chunk {
            file_offset: chunk.file_offset,
            addr: chunk.guest_addr.raw_value(),
            len: chunk.len,
            source,
        })
}

/// Reads a file from its own position with `pread`, leaving the file's offset alone, so
/// that threads can share one open file.
struct PositionedReader<'a> {
    file: &'a File,
    offset: u64,
}

impl ReadVolatile for PositionedReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file offset beyond off_t",
            ))
        })?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the pointer and length describe the volatile slice's memory, which
        // stays mapped for the guard's lifetime; pread writes at most `buf.len()` bytes
        // there and reads nothing from it.
        let read = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        let read = usize::try_from(read)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        buf.bitmap().mark_dirty(0, read);
        self.offset += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::GuestMemoryMmap;

    use super::*;

    fn file_of(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn range(file_offset: u64, guest_addr: u64, len: usize) -> FileRange {
        FileRange {
            file_offset,
            guest_addr: GuestAddress(guest_addr),
            len,
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
            .collect()
    }

    #[test]
    fn ranges_are_cut_into_chunks_in_order() {
        let ranges = [range(0x100, 0x10_0000, CHUNK_BYTES * 2 + 5), range(0, 0, 0)];
        let chunks = chunks_of(&ranges);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].file_offset, 0x100 + CHUNK_BYTES as u64);
        assert_eq!(
            chunks[2].guest_addr,
            GuestAddress(0x10_0000 + 2 * CHUNK_BYTES as u64)
        );
        assert_eq!(chunks[2].len, 5);
    }

    #[test]
    fn every_byte_lands_where_its_range_says_with_one_or_many_threads() {
        let data = pattern(CHUNK_BYTES * 3 + 12345);
        let file = file_of(&data);
        let ranges = [
            range(4096, 0x20_0000, CHUNK_BYTES * 2 + 7),
            range(0, 0x100_0000, 4096),
        ];
        for threads in [1, 2, 3, 8] {
            let mem: GuestMemoryMmap<()> =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
            copy_ranges(&mem, &file, &ranges, threads).unwrap();
            for range in &ranges {
                let mut back = vec![0u8; range.len];
                mem.read_slice(&mut back, range.guest_addr).unwrap();
                let start = range.file_offset as usize;
                assert!(back == data[start..start + range.len], "threads {threads}");
            }
            // Nothing outside the ranges was written.
            let mut gap = vec![0xffu8; 4096];
            mem.read_slice(&mut gap, GuestAddress(0x1f_f000)).unwrap();
            assert!(gap.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_short_file_or_a_range_outside_memory_names_the_chunk() {
        let file = file_of(&pattern(1000));
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let short = [range(0, 0x1000, 2000)];
        let err = copy_ranges(&mem, &file, &short, 2).unwrap_err().to_string();
        assert!(
            err.contains("2000 bytes from file offset 0x0 to guest address 0x1000"),
            "{err}"
        );
        let outside = [range(0, 2 << 20, 10)];
        let err = copy_ranges(&mem, &file, &outside, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("guest address 0x200000"), "{err}");
    }

    #[test]
    fn positioned_reads_leave_the_file_offset_alone() {
        use std::io::Seek;
        let mut file = file_of(&pattern(8192));
        file.seek(std::io::SeekFrom::Start(17)).unwrap();
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ranges = [range(100, 0, 8000)];
        copy_ranges(&mem, &file, &ranges, 1).unwrap();
        assert_eq!(file.stream_position().unwrap(), 17);
    }
}
