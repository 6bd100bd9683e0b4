//! The partitions of a disk: an MBR's four primary entries, or a GPT's entries when the
//! MBR is protective (type 0xEE). Entries that are empty or lie outside the disk are
//! skipped; nothing here trusts the disk.

use ironvisor_diskimage::DiskImage;

use crate::BootDiskError;

const SECTOR: u64 = 512;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xee;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Most GPT entries looked at (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 256;

/// One partition, in bytes of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number, as Linux names it (`vda1`).
    pub number: u32,
    /// Offset of its first byte.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

fn read(disk: &mut dyn DiskImage, offset: u64, len: usize) -> Result<Vec<u8>, BootDiskError> {
    let mut buf = vec![0u8; len];
    disk.read_at(&mut buf, offset)
        .map_err(|source| BootDiskError::Read { offset, source })?;
    Ok(buf)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The partitions of `disk`; empty for a disk without a partition table (a bare file
/// system), which the caller then reads whole.
pub fn partitions(disk: &mut dyn DiskImage) -> Result<Vec<Partition>, BootDiskError> {
    let size = disk.size();
    if size < SECTOR {
        return Ok(Vec::new());
    }
    let mbr = read(disk, 0, SECTOR as usize)?;
    if mbr[510..512] != MBR_SIGNATURE {
        return Ok(Vec::new());
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let at = 446 + 16 * i;
            (
                mbr[at + 4],
                u64::from(u32_at(&mbr, at + 8)),
                u64::from(u32_at(&mbr, at + 12)),
            )
        })
        .collect();
    if entries
        .iter()
        .any(|&(kind, _, _)| kind == MBR_TYPE_GPT_PROTECTIVE)
    {
        return gpt_partitions(disk, size);
    }
    let within = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|end| end <= size);
    Ok((1u32..)
        .zip(entries)
        .filter(|&(_, (kind, start, count))| kind != 0 && start > 0 && count > 0)
        .map(|(number, (_, start, count))| Partition {
            number,
            offset: start * SECTOR,
            len: count * SECTOR,
        })
        .filter(|p| within(p.offset, p.len))
        .collect())
}

fn gpt_partitions(disk: &mut dyn DiskImage, size: u64) -> Result<Vec<Partition>, BootDiskError> {
    let header = read(disk, SECTOR, SECTOR as usize)?;
    if &header[0..8] != GPT_SIGNATURE {
        return Err(BootDiskError::Table(
            "the MBR is protective but LBA 1 has no GPT header",
        ));
    }
    let table = u64_at(&header, 72);
    let count = u32_at(&header, 80).min(MAX_GPT_ENTRIES);
    let entry_size = u32_at(&header, 84);
    if !(128..=4096).contains(&entry_size) {
        return Err(BootDiskError::Table(
            "the GPT entry size is not 128 to 4096 bytes",
        ));
    }
    let bytes = read(
        disk,
        table.saturating_mul(SECTOR),
        usize::try_from(u64::from(count) * u64::from(entry_size)).unwrap_or(0),
    )?;
    let mut found = Vec::new();
    for (number, entry) in (1u32..).zip(bytes.chunks_exact(entry_size as usize)) {
        if entry[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(entry, 32), u64_at(entry, 40));
        let Some(sectors) = last.checked_sub(first).and_then(|d| d.checked_add(1)) else {
            continue;
        };
        let (offset, len) = (first.saturating_mul(SECTOR), sectors.saturating_mul(SECTOR));
        if offset.checked_add(len).is_some_and(|end| end <= size) {
            found.push(Partition {
                number,
                offset,
                len,
            });
        }
    }
    Ok(found)
}
