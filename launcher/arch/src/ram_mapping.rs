//! Host mappings for guest RAM, placed so that KVM can back the guest with 2 MiB pages.
//!
//! KVM maps a run of guest pages with one huge page only where the host virtual address
//! and the guest physical address agree modulo the huge page size (and the host has a
//! transparent huge page there). `mmap` only promises 4 KiB alignment, so a plain anonymous
//! mapping of guest RAM usually disagrees with the guest's 2 MiB-aligned physical
//! addresses, and KVM then maps the whole guest 4 KiB at a time: in a nested L1 that was
//! ~16,700 page faults taken by KVM during one boot instead of ~40.
//!
//! Each region is therefore cut out of a slightly larger anonymous mapping at a 2 MiB
//! boundary; the unused head and tail are unmapped straight away. vm-memory did not create
//! the mapping, so it never unmaps it: guest RAM stays mapped until the process exits,
//! which for the launcher (one VM per process) is when the VM is gone anyway.

use std::io;

use vm_memory::mmap::{FromRangesError, MmapRegionBuilder, MmapRegionError};
use vm_memory::{GuestAddress, GuestRegionMmap};

/// The huge page size guest RAM is aligned to.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
const SMALL_PAGE_BYTES: usize = 4096;

const PROT: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

fn mmap_error(err: io::Error) -> FromRangesError {
    FromRangesError::MmapRegion(MmapRegionError::Mmap(err))
}

/// Unmaps `[start, start + len)`; nothing when `len` is 0.
fn unmap(start: usize, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the range is a page-aligned part of a mapping this module just created and
    // that nothing else refers to.
    if unsafe { libc::munmap(start as *mut libc::c_void, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `size` bytes (a multiple of 4 KiB) of private anonymous memory starting at a
/// [`HUGE_PAGE_BYTES`] boundary and returns its address.
fn map_aligned(size: usize) -> Result<usize, FromRangesError> {
    let oversized = size
        .checked_add(HUGE_PAGE_BYTES - SMALL_PAGE_BYTES)
        .ok_or(FromRangesError::InvalidGuestRegion)?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; it aliases nothing.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), oversized, PROT, FLAGS, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(mmap_error(io::Error::last_os_error()));
    }
    let base = raw as usize;
    let cut = Trim::of(base);
    unmap(base, cut.head)
        .and_then(|()| unmap(cut.aligned + size, cut.tail))
        .map_err(mmap_error)?;
    Ok(cut.aligned)
}

/// How an oversized mapping at `base` is cut down to `size` bytes at a huge page boundary.
#[derive(Debug, Clone, Copy)]
struct Trim {
    /// Where the region starts.
    aligned: usize,
    /// Bytes unmapped before it.
    head: usize,
    /// Bytes unmapped after it.
    tail: usize,
}

impl Trim {
    /// For a mapping of `size + HUGE_PAGE_BYTES - SMALL_PAGE_BYTES` bytes at `base` (the
    /// head and tail do not depend on `size`).
    fn of(base: usize) -> Self {
        let aligned = base.next_multiple_of(HUGE_PAGE_BYTES);
        let head = aligned - base;
        Self {
            aligned,
            head,
            tail: HUGE_PAGE_BYTES - SMALL_PAGE_BYTES - head,
        }
    }
}

/// One guest RAM region of `size` bytes at `guest_base`, backed by a host mapping that
/// starts on a [`HUGE_PAGE_BYTES`] boundary.
pub fn aligned_region(
    guest_base: GuestAddress,
    size: usize,
) -> Result<GuestRegionMmap<()>, FromRangesError> {
    if size == 0 || !size.is_multiple_of(SMALL_PAGE_BYTES) {
        return Err(FromRangesError::InvalidGuestRegion);
    }
    let addr = map_aligned(size)?;
    // SAFETY: `addr` is the start of a live private anonymous mapping of exactly `size`
    // bytes with PROT and FLAGS, created above and owned by nothing else.
    let builder = unsafe {
        MmapRegionBuilder::new(size)
            .with_mmap_prot(PROT)
            .with_mmap_flags(FLAGS)
            .with_raw_mmap_pointer(addr as *mut u8)
    };
    let region = builder.build()?;
    GuestRegionMmap::new(region, guest_base).ok_or(FromRangesError::InvalidGuestRegion)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryRegion};

    use super::*;

    #[test]
    fn regions_start_on_a_huge_page_boundary_and_hold_data() {
        for size in [2 << 20, (6 << 20) + 4096, 64 << 20] {
            let region = aligned_region(GuestAddress(1 << 32), size).unwrap();
            let host = region.as_ptr() as usize;
            assert_eq!(
                host % HUGE_PAGE_BYTES,
                0,
                "size {size}: host address {host:#x}"
            );
            assert_eq!(region.len(), size as u64);
            assert_eq!(region.start_addr(), GuestAddress(1 << 32));
            region
                .write_obj(0xabcd_u64, vm_memory::MemoryRegionAddress(size as u64 - 8))
                .unwrap();
            let back: u64 = region
                .read_obj(vm_memory::MemoryRegionAddress(size as u64 - 8))
                .unwrap();
            assert_eq!(back, 0xabcd);
        }
    }

    #[test]
    fn the_trim_leaves_exactly_the_region_at_the_first_boundary() {
        let size = 4 << 20;
        let oversized = size + HUGE_PAGE_BYTES - SMALL_PAGE_BYTES;
        for base in [0x7f00_0000_0000, 0x7f00_0000_1000, 0x7f00_001f_f000] {
            let cut = Trim::of(base);
            assert_eq!(cut.aligned % HUGE_PAGE_BYTES, 0);
            assert!(cut.aligned >= base && cut.aligned - base < HUGE_PAGE_BYTES);
            assert_eq!(cut.head + size + cut.tail, oversized, "base {base:#x}");
        }
        assert_eq!(Trim::of(0x7f00_0000_0000).head, 0);
        assert_eq!(Trim::of(0x7f00_0000_1000).tail, 0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            aligned_region(GuestAddress(0), 0),
            Err(FromRangesError::InvalidGuestRegion)
        ));
        assert!(matches!(
            aligned_region(GuestAddress(0), 4097),
            Err(FromRangesError::InvalidGuestRegion)
        ));
        assert!(matches!(
            aligned_region(GuestAddress(u64::MAX - 4095), 8192),
            Err(FromRangesError::InvalidGuestRegion)
        ));
    }
}
