//! Loading an ELF `vmlinux`: its loadable segments at their physical addresses, copied
//! on several threads ([`crate::file_copy`]), and its entry point: the PVH entry from the
//! Xen `XEN_ELFNOTE_PHYS32_ENTRY` note when the kernel has one, else the ELF entry for the
//! 64-bit boot protocol.
//!
//! Every header field is checked against the file and guest RAM before a byte is copied,
//! so a truncated or hostile image is refused with what is wrong, never half loaded.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{
    le_u16, le_u32, le_u64, require_ram, truncated, BootError, KernelEntry, LoadedKernel,
    ELF_CLASS_64, ELF_DATA_LSB, ELF_HEADER_SIZE, ELF_MACHINE_X86_64, ELF_PHDR_SIZE, ELF_PT_LOAD,
    ELF_PT_NOTE,
};
use crate::file_copy::{self, FileRange};
use crate::layout::HIGH_RAM_START;

/// The note type of the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The name of the Xen notes, NUL included.
const XEN_NOTE_NAME: &[u8] = b"Xen\0";
/// Note sections larger than this are not searched (a vmlinux has a few hundred bytes).
const MAX_NOTES_BYTES: u64 = 1 << 20;

pub(super) fn load_elf<M: GuestMemoryBackend + Sync>(
    mem: &M,
    kernel: &mut File,
    file_len: u64,
    head: &[u8],
) -> Result<LoadedKernel, BootError> {
    const FORMAT: &str = "ELF";
    if (head.len() as u64) < ELF_HEADER_SIZE {
        return Err(truncated(
            FORMAT,
            "the ELF header",
            ELF_HEADER_SIZE,
            file_len,
        ));
    }
    if head[4] != ELF_CLASS_64 {
        return Err(BootError::UnsupportedElf {
            reason: "not a 64-bit ELF (a 64-bit x86_64 vmlinux is needed)",
        });
    }
    if head[5] != ELF_DATA_LSB {
        return Err(BootError::UnsupportedElf {
            reason: "big-endian ELF",
        });
    }
    if le_u16(head, 18) != ELF_MACHINE_X86_64 {
        return Err(BootError::UnsupportedElf {
            reason: "the ELF machine is not x86_64",
        });
    }
    let phoff = le_u64(head, 0x20);
    let phentsize = le_u16(head, 0x36);
    let phnum = le_u16(head, 0x38);
    if u64::from(phentsize) != ELF_PHDR_SIZE {
        return Err(BootError::UnsupportedElf {
            reason: "unexpected program header entry size",
        });
    }
    if phnum == 0 {
        return Err(BootError::UnsupportedElf {
            reason: "no program headers",
        });
    }
    let table_end = phoff.saturating_add(u64::from(phnum) * ELF_PHDR_SIZE);
    if table_end > file_len {
        return Err(truncated(
            FORMAT,
            "the program header table",
            table_end,
            file_len,
        ));
    }
    let table_len = usize::from(phnum) * ELF_PHDR_SIZE as usize;
    let mut table = vec![0u8; table_len];
    kernel
        .seek(SeekFrom::Start(phoff))
        .and_then(|_| kernel.read_exact(&mut table))
        .map_err(|source| BootError::ReadKernel {
            what: "program headers",
            source,
        })?;
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    let mut kernel_end = 0u64;
    for phdr in table.chunks_exact(ELF_PHDR_SIZE as usize) {
        let p_type = le_u32(phdr, 0);
        let offset = le_u64(phdr, 8);
        let paddr = le_u64(phdr, 24);
        let filesz = le_u64(phdr, 32);
        let memsz = le_u64(phdr, 40);
        if p_type != ELF_PT_LOAD && p_type != ELF_PT_NOTE {
            continue;
        }
        let data_end = offset.saturating_add(filesz);
        if data_end > file_len {
            let what = if p_type == ELF_PT_LOAD {
                "a loadable segment"
            } else {
                "a note segment"
            };
            return Err(truncated(FORMAT, what, data_end, file_len));
        }
        if p_type == ELF_PT_NOTE {
            notes.push((offset, filesz));
        }
        if p_type == ELF_PT_LOAD && filesz > 0 {
            if paddr < HIGH_RAM_START {
                return Err(BootError::UnsupportedElf {
                    reason: "a loadable segment lies below 1 MiB",
                });
            }
            let end = paddr.saturating_add(memsz.max(filesz));
            require_ram(mem, paddr, end)?;
            let len = usize::try_from(filesz).map_err(|_| BootError::UnsupportedElf {
                reason: "a loadable segment is larger than this host's address space",
            })?;
            segments.push(FileRange {
                file_offset: offset,
                guest_addr: GuestAddress(paddr),
                len,
            });
            kernel_end = kernel_end.max(paddr.saturating_add(memsz));
        }
    }
    if segments.is_empty() {
        return Err(BootError::UnsupportedElf {
            reason: "no loadable segment",
        });
    }

    if le_u64(head, 0x18) < HIGH_RAM_START {
        return Err(BootError::UnsupportedElf {
            reason: "the entry point lies below 1 MiB",
        });
    }
    file_copy::copy_ranges(mem, kernel, &segments, file_copy::available_threads())
        .map_err(BootError::CopyKernel)?;
    let mut entry = KernelEntry::Linux64(GuestAddress(le_u64(head, 0x18)));
    for (offset, len) in notes {
        if let Some(pvh) = pvh_entry(kernel, offset, len)? {
            entry = KernelEntry::Pvh(GuestAddress(u64::from(pvh)));
            break;
        }
    }
    Ok(LoadedKernel {
        entry,
        kernel_end: GuestAddress(kernel_end),
        setup_header: None,
    })
}

/// The PVH entry point named by a note segment at `offset` (`len` bytes), if it has one.
fn pvh_entry(kernel: &File, offset: u64, len: u64) -> Result<Option<u32>, BootError> {
    if len > MAX_NOTES_BYTES {
        return Err(BootError::UnsupportedElf {
            reason: "a note segment is larger than 1 MiB",
        });
    }
    let mut notes = vec![0u8; len as usize];
    kernel
        .read_exact_at(&mut notes, offset)
        .map_err(|source| BootError::ReadKernel {
            what: "a note segment",
            source,
        })?;
    Ok(find_pvh_note(&notes))
}

/// Walks the notes in `bytes` (each: name size, descriptor size, type, then the name and
/// the descriptor, each padded to 4 bytes) for the PVH entry note; a note that runs past
/// the end stops the walk.
pub(super) fn find_pvh_note(bytes: &[u8]) -> Option<u32> {
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0usize;
    while at.checked_add(12)? <= bytes.len() {
        let namesz = le_u32(bytes, at) as usize;
        let descsz = le_u32(bytes, at + 4) as usize;
        let kind = le_u32(bytes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let next = desc_at.checked_add(pad(descsz)?)?;
        if desc_at.checked_add(descsz)? > bytes.len() {
            return None;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY
            && bytes.get(name_at..name_at + namesz) == Some(XEN_NOTE_NAME)
            && descsz >= 4
        {
            return Some(le_u32(bytes, desc_at));
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend_from_slice(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn the_pvh_note_is_found_after_others_and_with_an_8_byte_descriptor() {
        let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(note(b"Linux\0", 6, b"6.1\0"));
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0123_4567u64.to_le_bytes(),
        ));
        assert_eq!(find_pvh_note(&notes), Some(0x0123_4567));
    }

    #[test]
    fn look_alikes_truncated_and_hostile_notes_give_no_entry() {
        // The right type under another name, or the right name with another type.
        let mut notes = note(b"Xenx\0", XEN_ELFNOTE_PHYS32_ENTRY, &[1, 0, 0, 0]);
        notes.extend(note(b"Xen\0", 17, &[1, 0, 0, 0]));
        assert_eq!(find_pvh_note(&notes), None);
        // A descriptor too short for an address.
        assert_eq!(
            find_pvh_note(&note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[1, 2])),
            None
        );
        // Cut in the middle of the descriptor, or of the header.
        let whole = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[1, 0, 0, 0]);
        assert_eq!(find_pvh_note(&whole[..whole.len() - 1]), None);
        assert_eq!(find_pvh_note(&whole[..7]), None);
        // Sizes that would overflow an offset.
        let mut hostile = Vec::new();
        hostile.extend_from_slice(&u32::MAX.to_le_bytes());
        hostile.extend_from_slice(&u32::MAX.to_le_bytes());
        hostile.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        hostile.extend(whole);
        assert_eq!(find_pvh_note(&hostile), None);
        assert_eq!(find_pvh_note(&[]), None);
    }
}
