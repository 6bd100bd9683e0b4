//! Guest RAM: where it lives in the physical address space, how it is allocated, and the
//! memory map (e820 / PVH memmap) that tells the guest which parts it may use.
//!
//! RAM starts at 0. When the guest has more RAM than fits below [`MMIO_GAP_START`], the rest
//! continues at 4 GiB ([`MMIO_GAP_END`]), leaving the 32-bit MMIO hole for devices.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{EBDA_START, HIGH_RAM_START, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};
use crate::ram_mapping;

/// Smallest guest RAM accepted: the low-memory boot structures plus 1 MiB of high RAM.
pub const MIN_MEMORY_BYTES: u64 = 2 << 20;
/// Largest guest RAM accepted (1 TiB), well inside the guest's physical address width.
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// Errors from sizing or allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEMORY_BYTES`].
    #[error("guest memory of {bytes} bytes is too small: at least {min} bytes are needed")]
    TooSmall {
        /// Requested size.
        bytes: u64,
        /// Minimum size.
        min: u64,
    },
    /// The requested size is above [`MAX_MEMORY_BYTES`].
    #[error("guest memory of {bytes} bytes is too large: at most {max} bytes are supported")]
    TooLarge {
        /// Requested size.
        bytes: u64,
        /// Maximum size.
        max: u64,
    },
    /// The requested size is not a whole number of pages.
    #[error("guest memory of {bytes} bytes is not a multiple of the {page} byte page size")]
    NotPageAligned {
        /// Requested size.
        bytes: u64,
        /// Page size.
        page: u64,
    },
    /// The host could not map the guest RAM.
    #[error("mapping {bytes} bytes of guest RAM in the host failed: {source}")]
    Mmap {
        /// Requested size.
        bytes: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Splits `mem_bytes` of RAM around the 32-bit MMIO hole.
///
/// RAM fills `[0, min(mem_bytes, MMIO_GAP_START))`; whatever does not fit below the hole
/// continues at 4 GiB. Returns `(start, length)` pairs in address order (empty for 0 bytes).
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let high = mem_bytes - low;
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((GuestAddress(0), to_usize(low)));
    }
    if high > 0 {
        regions.push((GuestAddress(MMIO_GAP_END), to_usize(high)));
    }
    regions
}

/// Allocates anonymous host memory for `mem_bytes` of guest RAM, laid out by [`ram_regions`],
/// each region on a 2 MiB boundary of the host (see [`ram_mapping`]).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    let _span = tracing::debug_span!("create_guest_memory", mem_bytes).entered();
    if mem_bytes < MIN_MEMORY_BYTES {
        return Err(MemoryError::TooSmall {
            bytes: mem_bytes,
            min: MIN_MEMORY_BYTES,
        });
    }
    if mem_bytes > MAX_MEMORY_BYTES {
        return Err(MemoryError::TooLarge {
            bytes: mem_bytes,
            max: MAX_MEMORY_BYTES,
        });
    }
    if !mem_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::NotPageAligned {
            bytes: mem_bytes,
            page: PAGE_SIZE,
        });
    }
    let regions = ram_regions(mem_bytes);
    let mapped = regions
        .iter()
        .map(|&(start, size)| ram_mapping::aligned_region(start, size))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|mapped| GuestMemoryMmap::from_regions(mapped).map_err(Into::into));
    let mem = mapped.map_err(|source| MemoryError::Mmap {
        bytes: mem_bytes,
        source,
    })?;
    tracing::debug!(regions = regions.len(), "guest memory mapped");
    Ok(mem)
}

/// What the guest may do with a range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRangeKind {
    /// Usable RAM.
    Ram,
    /// Present but reserved (BIOS area, ACPI tables): the guest must not allocate it.
    Reserved,
}

impl MemoryRangeKind {
    /// The e820 type code (also the PVH `XEN_HVM_MEMMAP_TYPE_*` code).
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryRangeKind::Ram => E820_RAM,
            MemoryRangeKind::Reserved => E820_RESERVED,
        }
    }
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    /// First guest physical address of the range.
    pub start: u64,
    /// Length in bytes (never 0).
    pub size: u64,
    /// Usable or reserved.
    pub kind: MemoryRangeKind,
}

/// Fixed windows of the low megabyte and what they are used for.
const LOW_WINDOWS: [(u64, u64, MemoryRangeKind); 3] = [
    (0, EBDA_START, MemoryRangeKind::Ram),
    (EBDA_START, HIGH_RAM_START, MemoryRangeKind::Reserved),
    (HIGH_RAM_START, u64::MAX, MemoryRangeKind::Ram),
];

/// Builds the memory map shared by both boot protocols from the guest's RAM regions.
///
/// Within RAM: usable `[0, EBDA_START)`, reserved `[EBDA_START, 1 MiB)` (EBDA, BIOS area
/// and the ACPI tables), usable from 1 MiB up to the end of each region (which includes
/// the part above 4 GiB). Adjacent ranges of the same kind are merged; the result is sorted.
pub fn memory_map<M: GuestMemoryBackend>(mem: &M) -> Vec<MemoryRange> {
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|region| {
            let start = region.start_addr().0;
            (start, start.saturating_add(region.len()))
        })
        .collect();
    regions.sort_unstable();

    let mut map: Vec<MemoryRange> = Vec::new();
    for (region_start, region_end) in regions {
        for (window_start, window_end, kind) in LOW_WINDOWS {
            let start = region_start.max(window_start);
            let end = region_end.min(window_end);
            if start >= end {
                continue;
            }
            match map.last_mut() {
                Some(last) if last.kind == kind && last.start + last.size == start => {
                    last.size = end - last.start;
                }
                _ => map.push(MemoryRange {
                    start,
                    size: end - start,
                    kind,
                }),
            }
        }
    }
    map
}

/// Highest usable address + 1 below `limit` that is backed by one contiguous RAM region,
/// together with that region's start; `None` if no RAM lies below `limit`.
pub(crate) fn highest_ram_below<M: GuestMemoryBackend>(mem: &M, limit: u64) -> Option<(u64, u64)> {
    mem.iter()
        .filter_map(|region| {
            let start = region.start_addr().0;
            let end = start.saturating_add(region.len()).min(limit);
            (start < end).then_some((start, end))
        })
        .max_by_key(|&(_, end)| end)
}

fn to_usize(bytes: u64) -> usize {
    // The crate only builds for x86_64, where usize is 64 bits wide.
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_one_region_at_zero() {
        assert_eq!(
            ram_regions(256 * MIB),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
    }

    #[test]
    fn ram_exactly_up_to_gap_has_no_high_region() {
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START as usize)]
        );
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let regions = ram_regions(4 * GIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), 3 * GIB as usize),
                (GuestAddress(4 * GIB), GIB as usize)
            ]
        );
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 4 * GIB);
    }

    #[test]
    fn zero_bytes_gives_no_region() {
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn create_rejects_bad_sizes() {
        assert!(matches!(
            create_guest_memory(MIB),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            create_guest_memory(64 * MIB + 1),
            Err(MemoryError::NotPageAligned { .. })
        ));
        assert!(matches!(
            create_guest_memory(MAX_MEMORY_BYTES + PAGE_SIZE),
            Err(MemoryError::TooLarge { .. })
        ));
        let msg = create_guest_memory(MIB).unwrap_err().to_string();
        assert!(msg.contains("too small"), "{msg}");
    }

    #[test]
    fn create_maps_regions() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(64 * MIB - 1));

        // Above the gap: mapped lazily, so a 3.5 GiB guest costs nothing until touched.
        let mem = create_guest_memory(3 * GIB + 512 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(4 * GIB)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_GAP_START)));
        assert_eq!(mem.last_addr(), GuestAddress(4 * GIB + 512 * MIB - 1));
    }

    #[test]
    fn memory_map_of_small_guest() {
        let mem = create_guest_memory(128 * MIB).unwrap();
        assert_eq!(
            memory_map(&mem),
            vec![
                MemoryRange {
                    start: 0,
                    size: EBDA_START,
                    kind: MemoryRangeKind::Ram
                },
                MemoryRange {
                    start: EBDA_START,
                    size: HIGH_RAM_START - EBDA_START,
                    kind: MemoryRangeKind::Reserved
                },
                MemoryRange {
                    start: HIGH_RAM_START,
                    size: 128 * MIB - HIGH_RAM_START,
                    kind: MemoryRangeKind::Ram
                },
            ]
        );
    }

    #[test]
    fn memory_map_covers_acpi_area_and_high_ram() {
        let mem = create_guest_memory(5 * GIB).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[3],
            MemoryRange {
                start: 4 * GIB,
                size: 2 * GIB,
                kind: MemoryRangeKind::Ram
            }
        );
        assert_eq!(map[2].start + map[2].size, MMIO_GAP_START);
        let reserved = map[1];
        assert_eq!(reserved.kind, MemoryRangeKind::Reserved);
        assert!(reserved.start <= crate::layout::RSDP_START);
        assert!(reserved.start + reserved.size >= crate::layout::ACPI_TABLES_END);
        assert_eq!(MemoryRangeKind::Ram.e820_type(), 1);
        assert_eq!(MemoryRangeKind::Reserved.e820_type(), 2);
    }

    #[test]
    fn highest_ram_below_stops_at_the_gap() {
        let mem = create_guest_memory(5 * GIB).unwrap();
        assert_eq!(
            highest_ram_below(&mem, MMIO_GAP_START),
            Some((0, MMIO_GAP_START))
        );
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(highest_ram_below(&mem, MMIO_GAP_START), Some((0, 64 * MIB)));
    }
}
