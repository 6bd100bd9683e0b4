//! Kernel and initrd loading, and the two x86_64 direct-boot protocols.
//!
//! * An ELF `vmlinux` is loaded at its physical addresses. If it carries the Xen
//!   `XEN_ELFNOTE_PHYS32_ENTRY` note it is booted with the PVH protocol (32-bit protected
//!   mode, `hvm_start_info` in `%ebx`); otherwise at its 64-bit ELF entry.
//! * A bzImage's protected-mode part is loaded at `code32_start` (1 MiB) and entered at its
//!   64-bit entry point (`+0x200`) with `boot_params` (the "zero page") in `%rsi`.
//!
//! [`configure_boot`] writes the command line and the protocol's boot structure; the vCPU
//! registers that go with each protocol are in [`crate::cpu`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    BZIMAGE_64BIT_ENTRY_OFFSET, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, MMIO_GAP_START,
    PAGE_SIZE, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::{highest_ram_below, memory_map, MemoryRange};

/// `boot_flag` value of a valid setup header.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` value of a valid setup header ("HdrS").
pub const SETUP_HEADER_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags`: the protected-mode kernel is loaded at 1 MiB.
pub const LOADFLAG_LOADED_HIGH: u8 = 0x01;
/// `loadflags`: the kernel must not reload segment registers (obsolete; never set).
pub const LOADFLAG_KEEP_SEGMENTS: u8 = 0x40;
/// `xloadflags`: the kernel has the 64-bit entry point at `code32_start + 0x200`.
pub const XLOADFLAG_KERNEL_64: u16 = 0x0001;
/// PVH start info version we write (with the memory map fields).
pub const PVH_START_INFO_VERSION: u32 = 1;
/// `kernel_alignment` written for an ELF kernel, which has no setup header of its own.
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// ELF constants used to validate a vmlinux before handing it to the loader.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELF_CLASS_64: u8 = 2;
const ELF_DATA_LSB: u8 = 1;
const ELF_MACHINE_X86_64: u16 = 62;
const ELF_HEADER_SIZE: u64 = 64;
const ELF_PHDR_SIZE: u64 = 56;
const ELF_PT_LOAD: u32 = 1;
const ELF_PT_NOTE: u32 = 4;

/// Offsets in a bzImage (boot protocol, "THE REAL-MODE KERNEL HEADER").
const BZ_SETUP_SECTS: usize = 0x1f1;
const BZ_SYSSIZE: usize = 0x1f4;
const BZ_HEADER_MAGIC: usize = 0x202;
const BZ_VERSION: usize = 0x206;
const BZ_LOADFLAGS: usize = 0x211;
const BZ_CODE32_START: usize = 0x214;
const BZ_XLOADFLAGS: usize = 0x236;
/// End of the setup header fields we read from the file.
const BZ_SETUP_HEADER_END: usize = 0x1f1 + std::mem::size_of::<setup_header>();
/// Boot protocol version that introduced `xloadflags`.
const BZ_MIN_VERSION: u16 = 0x020c;

/// Errors from loading a kernel or initrd, or writing the boot protocol structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// I/O on the kernel file failed.
    #[error("reading the kernel image ({what}): {source}")]
    ReadKernel {
        /// What was being read.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file has no bytes.
    #[error("the kernel image is empty")]
    EmptyKernel,
    /// The kernel file is neither an ELF nor a bzImage.
    #[error(
        "the kernel image is neither an ELF vmlinux nor a bzImage \
         (no ELF magic at offset 0 and no \"HdrS\" at offset 0x202; first bytes {first_bytes:02x?})"
    )]
    UnknownKernelFormat {
        /// Up to the first 8 bytes of the file.
        first_bytes: Vec<u8>,
    },
    /// The ELF file is not a 64-bit little-endian x86_64 executable.
    #[error("unsupported ELF kernel: {reason}")]
    UnsupportedElf {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The headers describe more bytes than the file holds.
    #[error(
        "the {format} kernel image is truncated: {what} needs {needed} bytes but the file has {actual}"
    )]
    TruncatedKernel {
        /// "ELF" or "bzImage".
        format: &'static str,
        /// The part that does not fit.
        what: &'static str,
        /// File size the headers require.
        needed: u64,
        /// Actual file size.
        actual: u64,
    },
    /// The bzImage lacks the 64-bit boot protocol.
    #[error(
        "the bzImage cannot be booted in 64-bit mode: boot protocol {version:#06x}, \
         loadflags {loadflags:#04x}, xloadflags {xloadflags:#06x} (need protocol >= 2.12, \
         LOADED_HIGH and XLF_KERNEL_64)"
    )]
    NotA64BitKernel {
        /// Boot protocol version from the header.
        version: u16,
        /// `loadflags` from the header.
        loadflags: u8,
        /// `xloadflags` from the header (0 before protocol 2.12).
        xloadflags: u16,
    },
    /// The kernel needs guest physical memory that is not RAM.
    #[error(
        "the kernel needs guest RAM [{start:#x}, {end:#x}) but the guest RAM does not cover it \
         (give the VM more memory)"
    )]
    KernelOutsideMemory {
        /// First byte needed.
        start: u64,
        /// End (exclusive) of what is needed.
        end: u64,
    },
    /// linux-loader refused the image.
    #[error("loading the {format} kernel into guest memory: {source}")]
    Load {
        /// "ELF" or "bzImage".
        format: &'static str,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// I/O on the initrd file failed.
    #[error("reading the initrd: {0}")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd file has no bytes.
    #[error("the initrd is empty")]
    EmptyInitrd,
    /// The initrd starts with no initramfs format Linux unpacks.
    #[error(
        "the initrd is not an initramfs: it starts with neither a newc cpio archive nor \
         gzip, bzip2, LZMA, xz, LZO, LZ4 or zstd data (first bytes {first_bytes:02x?})"
    )]
    UnknownInitrdFormat {
        /// The first non-zero bytes of the file (at most 8).
        first_bytes: Vec<u8>,
    },
    /// The initrd does not fit in RAM between the floor and the ceiling.
    #[error(
        "the initrd of {size} bytes does not fit in guest RAM between {floor:#x} and {ceiling:#x} \
         (give the VM more memory)"
    )]
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// Lowest address it may start at.
        floor: u64,
        /// Address it must end below.
        ceiling: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("copying the initrd to guest address {addr:#x}: {source}")]
    WriteInitrd {
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is longer than the kernel or the layout allows.
    #[error("the kernel command line is {len} bytes long; at most {max} bytes are allowed")]
    CmdlineTooLong {
        /// Length without the terminating NUL.
        len: usize,
        /// Largest length allowed, without the terminating NUL.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte at offset {offset}")]
    CmdlineHasNul {
        /// Offset of the first NUL.
        offset: usize,
    },
    /// Writing the command line into guest memory failed.
    #[error("writing the kernel command line at guest address {addr:#x}: {source}")]
    WriteCmdline {
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The memory map has more entries than the boot structure can hold.
    #[error("the {protocol} memory map has {entries} entries; at most {max} fit")]
    MemoryMapTooLarge {
        /// "PVH" or "Linux".
        protocol: &'static str,
        /// Entries needed.
        entries: usize,
        /// Entries that fit.
        max: usize,
    },
    /// The initrd lies where the 32-bit `boot_params` fields cannot point.
    #[error("the initrd at {addr:#x} ({size} bytes) is not addressable by the boot protocol")]
    InitrdNotAddressable {
        /// Initrd start.
        addr: u64,
        /// Initrd size.
        size: usize,
    },
    /// Writing the boot protocol structure failed.
    #[error("writing the {protocol} boot parameters to guest memory: {source}")]
    WriteBootParams {
        /// "PVH" or "Linux".
        protocol: &'static str,
        /// The configurator's error.
        #[source]
        source: linux_loader::configurator::Error,
    },
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = [`PVH_INFO_START`].
    Pvh(GuestAddress),
    /// Linux 64-bit boot protocol: long mode, `%rsi` = [`ZERO_PAGE_START`].
    Linux64(GuestAddress),
}

impl KernelEntry {
    /// The guest physical address the boot vCPU starts executing at.
    pub fn address(&self) -> GuestAddress {
        match *self {
            KernelEntry::Pvh(addr) | KernelEntry::Linux64(addr) => addr,
        }
    }
}

/// Result of [`load_kernel`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadedKernel {
    /// How to enter the kernel.
    pub entry: KernelEntry,
    /// End (exclusive) of the kernel image in guest memory.
    pub kernel_end: GuestAddress,
    /// The bzImage setup header (with `code32_start` set to the load address); `None` for ELF.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// End (exclusive) of the memory the kernel uses before it reads the memory map.
    ///
    /// For a bzImage this covers where the decompressor places the kernel: `init_size` bytes
    /// from the runtime start address the boot protocol defines (protocol 2.10+); for ELF it
    /// is [`LoadedKernel::kernel_end`].
    pub fn footprint_end(&self) -> GuestAddress {
        let Some(hdr) = self.setup_header else {
            return self.kernel_end;
        };
        let version = hdr.version;
        if version < 0x020a {
            return self.kernel_end;
        }
        let load = u64::from(hdr.code32_start);
        let pref = hdr.pref_address;
        let align = u64::from(hdr.kernel_alignment).max(1);
        let runtime_start = if hdr.relocatable_kernel != 0 {
            load.max(pref).div_ceil(align).saturating_mul(align)
        } else {
            pref
        };
        let end = runtime_start.saturating_add(u64::from(hdr.init_size));
        GuestAddress(end.max(self.kernel_end.raw_value()))
    }

    /// Largest address + 1 the kernel accepts for the initrd's end (from `initrd_addr_max`).
    fn initrd_ceiling(&self) -> u64 {
        match self.setup_header {
            Some(hdr) if hdr.version >= 0x0203 && hdr.initrd_addr_max != 0 => {
                u64::from(hdr.initrd_addr_max) + 1
            }
            _ => u64::MAX,
        }
    }

    /// Longest command line (without the NUL) the kernel accepts.
    fn cmdline_limit(&self) -> usize {
        let layout_max = CMDLINE_MAX_SIZE - 1;
        match self.setup_header {
            Some(hdr) if hdr.version >= 0x0206 => {
                usize::try_from(hdr.cmdline_size).map_or(layout_max, |max| max.min(layout_max))
            }
            // Before protocol 2.06 the limit was 255 bytes.
            Some(_) => 255,
            None => layout_max,
        }
    }
}

/// A RAM range holding the initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical start, page aligned.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

/// Loads an ELF vmlinux or a bzImage into guest memory and says how to enter it.
///
/// ELF: segments at their physical addresses; entry is the PVH note's address when present,
/// else the ELF entry (64-bit protocol). bzImage: loaded at `code32_start`, entered at the
/// 64-bit entry point. The caller adds the file's path to the error.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
) -> Result<LoadedKernel, BootError> {
    let _span = tracing::info_span!("load_kernel").entered();
    let file_len = kernel
        .metadata()
        .map_err(|source| BootError::ReadKernel {
            what: "file size",
            source,
        })?
        .len();
    if file_len == 0 {
        return Err(BootError::EmptyKernel);
    }
    let head = read_head(kernel, file_len)?;
    let loaded = if head.starts_with(&ELF_MAGIC) {
        load_elf(mem, kernel, file_len, &head)?
    } else if head.get(BZ_HEADER_MAGIC..BZ_HEADER_MAGIC + 4) == Some(&b"HdrS"[..]) {
        load_bzimage(mem, kernel, file_len, &head)?
    } else {
        return Err(BootError::UnknownKernelFormat {
            first_bytes: head.iter().take(8).copied().collect(),
        });
    };
    tracing::info!(
        entry = ?loaded.entry,
        kernel_end = format_args!("{:#x}", loaded.kernel_end.raw_value()),
        "kernel loaded"
    );
    Ok(loaded)
}

/// Reads the first bytes of the file, enough for the ELF header or the bzImage setup header.
fn read_head(kernel: &mut File, file_len: u64) -> Result<Vec<u8>, BootError> {
    let len = usize::try_from(file_len.min(BZ_SETUP_HEADER_END as u64)).unwrap_or(0);
    let mut head = vec![0u8; len];
    kernel
        .seek(SeekFrom::Start(0))
        .and_then(|_| kernel.read_exact(&mut head))
        .map_err(|source| BootError::ReadKernel {
            what: "header",
            source,
        })?;
    Ok(head)
}

fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    if let Some(src) = bytes.get(offset..offset + 2) {
        raw.copy_from_slice(src);
    }
    u16::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(src) = bytes.get(offset..offset + 4) {
        raw.copy_from_slice(src);
    }
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(src) = bytes.get(offset..offset + 8) {
        raw.copy_from_slice(src);
    }
    u64::from_le_bytes(raw)
}

fn truncated(format: &'static str, what: &'static str, needed: u64, actual: u64) -> BootError {
    BootError::TruncatedKernel {
        format,
        what,
        needed,
        actual,
    }
}

/// Checks that `[start, end)` is guest RAM.
fn require_ram<M: GuestMemoryBackend>(mem: &M, start: u64, end: u64) -> Result<(), BootError> {
    let covered = end
        .checked_sub(start)
        .and_then(|len| usize::try_from(len).ok())
        .is_some_and(|len| {
            len == 0 || GuestMemoryBackend::check_range(mem, GuestAddress(start), len)
        });
    if covered {
        Ok(())
    } else {
        Err(BootError::KernelOutsideMemory { start, end })
    }
}

fn load_elf<M: GuestMemoryBackend>(
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
    let mut loadable = false;
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
        if p_type == ELF_PT_LOAD && filesz > 0 {
            loadable = true;
            if paddr < HIGH_RAM_START {
                return Err(BootError::UnsupportedElf {
                    reason: "a loadable segment lies below 1 MiB",
                });
            }
            let end = paddr.saturating_add(memsz.max(filesz));
            require_ram(mem, paddr, end)?;
        }
    }
    if !loadable {
        return Err(BootError::UnsupportedElf {
            reason: "no loadable segment",
        });
    }

    let result =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START))).map_err(|source| {
            BootError::Load {
                format: FORMAT,
                source,
            }
        })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => {
            KernelEntry::Linux64(result.kernel_load)
        }
    };
    Ok(LoadedKernel {
        entry,
        kernel_end: GuestAddress(result.kernel_end),
        setup_header: None,
    })
}

fn load_bzimage<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    file_len: u64,
    head: &[u8],
) -> Result<LoadedKernel, BootError> {
    const FORMAT: &str = "bzImage";
    if head.len() < BZ_SETUP_HEADER_END {
        return Err(truncated(
            FORMAT,
            "the setup header",
            BZ_SETUP_HEADER_END as u64,
            file_len,
        ));
    }
    let version = le_u16(head, BZ_VERSION);
    let loadflags = head[BZ_LOADFLAGS];
    let xloadflags = if version >= BZ_MIN_VERSION {
        le_u16(head, BZ_XLOADFLAGS)
    } else {
        0
    };
    if version < BZ_MIN_VERSION
        || loadflags & LOADFLAG_LOADED_HIGH == 0
        || xloadflags & XLOADFLAG_KERNEL_64 == 0
    {
        return Err(BootError::NotA64BitKernel {
            version,
            loadflags,
            xloadflags,
        });
    }
    let setup_sects = match head[BZ_SETUP_SECTS] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let kernel_size = u64::from(le_u32(head, BZ_SYSSIZE)) * 16;
    let needed = setup_size + kernel_size;
    if needed > file_len || setup_size >= file_len {
        return Err(truncated(
            FORMAT,
            "the setup code and protected-mode kernel",
            needed.max(setup_size + 1),
            file_len,
        ));
    }

    let code32_start = u64::from(le_u32(head, BZ_CODE32_START));
    require_ram(mem, code32_start, code32_start + (file_len - setup_size))?;

    let result: KernelLoaderResult =
        BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START))).map_err(|source| {
            BootError::Load {
                format: FORMAT,
                source,
            }
        })?;
    let loaded = LoadedKernel {
        entry: KernelEntry::Linux64(result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)),
        kernel_end: GuestAddress(result.kernel_end),
        setup_header: result.setup_header,
    };
    // The decompressor needs `init_size` bytes at its runtime address: fail now, with a
    // clear message, rather than with a guest that dies silently.
    require_ram(
        mem,
        result.kernel_load.raw_value(),
        loaded.footprint_end().raw_value(),
    )?;
    Ok(loaded)
}

/// Loads the initrd as high as possible in RAM below the 32-bit MMIO gap, page aligned and
/// above 1 MiB.
///
/// This does not know where the kernel is; prefer [`load_initrd_for_kernel`], which also
/// keeps the initrd clear of the kernel's decompression area and honours `initrd_addr_max`.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
) -> Result<InitrdRegion, BootError> {
    let _span = tracing::info_span!("load_initrd").entered();
    place_initrd(mem, initrd, HIGH_RAM_START, MMIO_GAP_START)
}

/// Loads the initrd as high as possible below the MMIO gap and the kernel's
/// `initrd_addr_max`, and above everything the kernel uses ([`LoadedKernel::footprint_end`]).
pub fn load_initrd_for_kernel<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel: &LoadedKernel,
) -> Result<InitrdRegion, BootError> {
    let _span = tracing::info_span!("load_initrd").entered();
    let floor = align_up(kernel.footprint_end().raw_value()).max(HIGH_RAM_START);
    let ceiling = MMIO_GAP_START.min(kernel.initrd_ceiling());
    place_initrd(mem, initrd, floor, ceiling)
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

/// How much of the initrd [`check_initrd_format`] reads: enough for any zero padding a
/// real image has in front of its first archive.
const INITRD_HEAD_LEN: u64 = 64 * 1024;

/// Refuses an initrd that does not start with an initramfs format Linux unpacks.
fn check_initrd_format(initrd: &mut File) -> Result<(), BootError> {
    let mut head = Vec::new();
    initrd.rewind().map_err(BootError::ReadInitrd)?;
    initrd
        .by_ref()
        .take(INITRD_HEAD_LEN)
        .read_to_end(&mut head)
        .map_err(BootError::ReadInitrd)?;
    initrd.rewind().map_err(BootError::ReadInitrd)?;
    match crate::initrd_format::identify(&head) {
        Some(format) => {
            tracing::debug!(?format, "initrd format");
            Ok(())
        }
        None => Err(BootError::UnknownInitrdFormat {
            first_bytes: head
                .iter()
                .copied()
                .skip_while(|&b| b == 0)
                .take(8)
                .collect(),
        }),
    }
}

fn place_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    floor: u64,
    ceiling: u64,
) -> Result<InitrdRegion, BootError> {
    let size = initrd.metadata().map_err(BootError::ReadInitrd)?.len();
    if size == 0 {
        return Err(BootError::EmptyInitrd);
    }
    check_initrd_format(initrd)?;
    let does_not_fit = BootError::InitrdDoesNotFit {
        size,
        floor,
        ceiling,
    };
    let Some((region_start, top)) = highest_ram_below(mem, ceiling) else {
        return Err(does_not_fit);
    };
    let addr = match top.checked_sub(size) {
        Some(addr) => addr & !(PAGE_SIZE - 1),
        None => return Err(does_not_fit),
    };
    if addr < floor || addr < region_start {
        return Err(does_not_fit);
    }
    let len = usize::try_from(size).map_err(|_| BootError::InitrdDoesNotFit {
        size,
        floor,
        ceiling,
    })?;
    initrd.rewind().map_err(BootError::ReadInitrd)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|source| BootError::WriteInitrd { addr, source })?;
    tracing::info!(addr = format_args!("{addr:#x}"), size, "initrd loaded");
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size: len,
    })
}

/// Writes the command line and the boot protocol structure for `kernel`.
///
/// The NUL-terminated command line goes to [`CMDLINE_START`]. PVH: `hvm_start_info` at
/// [`PVH_INFO_START`], its memory map at [`PVH_MEMMAP_START`] and the initrd module at
/// [`PVH_MODLIST_START`]. Linux 64-bit: `boot_params` at [`ZERO_PAGE_START`] built from the
/// kernel's setup header, with the e820 map, initrd and RSDP address.
pub fn configure_boot<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<&InitrdRegion>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let _span = tracing::info_span!(
        "configure_boot",
        protocol = match kernel.entry {
            KernelEntry::Pvh(_) => "pvh",
            KernelEntry::Linux64(_) => "linux64",
        },
        cmdline_len = cmdline.len(),
        initrd = initrd.is_some(),
    )
    .entered();
    write_cmdline(mem, cmdline, kernel.cmdline_limit())?;
    let map = memory_map(mem);
    match kernel.entry {
        KernelEntry::Pvh(_) => write_pvh_start_info(mem, &map, initrd, rsdp),
        KernelEntry::Linux64(_) => write_zero_page(mem, kernel, cmdline.len(), &map, initrd, rsdp),
    }
}

fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    max: usize,
) -> Result<(), BootError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineHasNul { offset });
    }
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::WriteCmdline {
            addr: CMDLINE_START,
            source,
        })
}

fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    map: &[MemoryRange],
    initrd: Option<&InitrdRegion>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    const PROTOCOL: &str = "PVH";
    let max = usize::try_from(PVH_MODLIST_START - PVH_MEMMAP_START).unwrap_or(0)
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if map.len() > max {
        return Err(BootError::MemoryMapTooLarge {
            protocol: PROTOCOL,
            entries: map.len(),
            max,
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|range| hvm_memmap_table_entry {
            addr: range.start,
            size: range.size,
            type_: range.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: PVH_START_INFO_VERSION,
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).unwrap_or(u32::MAX),
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size as u64,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|source| {
        BootError::WriteBootParams {
            protocol: PROTOCOL,
            source,
        }
    })
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    map: &[MemoryRange],
    initrd: Option<&InitrdRegion>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    const PROTOCOL: &str = "Linux";
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT,
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = SETUP_HEADER_MAGIC;
    // We skip the real-mode setup code, so only LOADED_HIGH describes what we did; the
    // heap and KEEP_SEGMENTS bits must be clear for a 64-bit entry.
    params.hdr.loadflags = LOADFLAG_LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initrd {
        let addr = initrd.addr.raw_value();
        let not_addressable = BootError::InitrdNotAddressable {
            addr,
            size: initrd.size,
        };
        let end = addr.checked_add(initrd.size as u64);
        match (u32::try_from(addr), u32::try_from(initrd.size), end) {
            (Ok(image), Ok(size), Some(end)) if end <= u64::from(u32::MAX) + 1 => {
                params.hdr.ramdisk_image = image;
                params.hdr.ramdisk_size = size;
            }
            _ => return Err(not_addressable),
        }
    }
    let max = params.e820_table.len();
    if map.len() > max {
        return Err(BootError::MemoryMapTooLarge {
            protocol: PROTOCOL,
            entries: map.len(),
            max,
        });
    }
    for (slot, range) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: range.start,
            size: range.size,
            r#type: range.kind.e820_type(),
        };
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    params.acpi_rsdp_addr = rsdp.raw_value();

    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(|source| {
        BootError::WriteBootParams {
            protocol: PROTOCOL,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryRangeKind};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        file
    }

    /// An initrd file: `bytes` behind a newc cpio magic (the loader checks the format).
    fn initrd_with(bytes: &[u8]) -> File {
        let mut data = bytes.to_vec();
        let n = data.len().min(6);
        data[..n].copy_from_slice(&b"070701"[..n]);
        file_with(&data)
    }

    fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
        buf[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    const ELF_LOAD_PADDR: u64 = 0x20_0000;
    const ELF_LOAD_OFFSET: usize = 0x1000;
    const ELF_LOAD_FILESZ: usize = 0x100;
    const ELF_LOAD_MEMSZ: u64 = 0x3000;
    const PVH_ENTRY: u32 = 0x20_0040;

    /// A minimal x86_64 vmlinux: one PT_LOAD segment and, optionally, a PT_NOTE with a
    /// build-id style note followed by the Xen PVH entry note.
    fn synthetic_elf(with_pvh_note: bool) -> Vec<u8> {
        let phnum: u16 = if with_pvh_note { 2 } else { 1 };
        let mut elf = vec![0u8; ELF_LOAD_OFFSET + ELF_LOAD_FILESZ];
        put(&mut elf, 0, b"\x7fELF");
        elf[4] = ELF_CLASS_64;
        elf[5] = ELF_DATA_LSB;
        elf[6] = 1; // EV_CURRENT
        put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut elf, 18, &ELF_MACHINE_X86_64.to_le_bytes());
        put(&mut elf, 20, &1u32.to_le_bytes());
        put(&mut elf, 24, &ELF_LOAD_PADDR.to_le_bytes()); // e_entry
        put(&mut elf, 0x20, &64u64.to_le_bytes()); // e_phoff
        put(&mut elf, 0x34, &64u16.to_le_bytes()); // e_ehsize
        put(&mut elf, 0x36, &56u16.to_le_bytes()); // e_phentsize
        put(&mut elf, 0x38, &phnum.to_le_bytes());

        // PT_LOAD
        let ph = 64;
        put(&mut elf, ph, &ELF_PT_LOAD.to_le_bytes());
        put(&mut elf, ph + 4, &7u32.to_le_bytes());
        put(&mut elf, ph + 8, &(ELF_LOAD_OFFSET as u64).to_le_bytes());
        put(&mut elf, ph + 16, &ELF_LOAD_PADDR.to_le_bytes());
        put(&mut elf, ph + 24, &ELF_LOAD_PADDR.to_le_bytes());
        put(&mut elf, ph + 32, &(ELF_LOAD_FILESZ as u64).to_le_bytes());
        put(&mut elf, ph + 40, &ELF_LOAD_MEMSZ.to_le_bytes());
        for (i, byte) in elf[ELF_LOAD_OFFSET..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }

        if with_pvh_note {
            let mut notes = Vec::new();
            // An unrelated note first, so the parser has to skip one.
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&8u32.to_le_bytes());
            notes.extend_from_slice(&3u32.to_le_bytes()); // NT_GNU_BUILD_ID
            notes.extend_from_slice(b"GNU\0");
            notes.extend_from_slice(&[0xab; 8]);
            // XEN_ELFNOTE_PHYS32_ENTRY
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&18u32.to_le_bytes());
            notes.extend_from_slice(b"Xen\0");
            notes.extend_from_slice(&PVH_ENTRY.to_le_bytes());
            let note_offset = 0x200usize;
            put(&mut elf, note_offset, &notes);
            let ph = 64 + 56;
            put(&mut elf, ph, &ELF_PT_NOTE.to_le_bytes());
            put(&mut elf, ph + 4, &4u32.to_le_bytes());
            put(&mut elf, ph + 8, &(note_offset as u64).to_le_bytes());
            put(&mut elf, ph + 32, &(notes.len() as u64).to_le_bytes());
            put(&mut elf, ph + 40, &(notes.len() as u64).to_le_bytes());
        }
        elf
    }

    const BZ_SETUP_SECTS_VALUE: u8 = 3;
    const BZ_PAYLOAD: usize = 0x2000;
    const BZ_INIT_SIZE: u32 = 0x40_0000;

    /// A bzImage-shaped file: a setup header as protocol 2.15 defines it and a payload.
    fn synthetic_bzimage(xloadflags: u16) -> Vec<u8> {
        let setup_size = (usize::from(BZ_SETUP_SECTS_VALUE) + 1) * 512;
        let mut image = vec![0u8; setup_size + BZ_PAYLOAD];
        image[BZ_SETUP_SECTS] = BZ_SETUP_SECTS_VALUE;
        put(
            &mut image,
            BZ_SYSSIZE,
            &((BZ_PAYLOAD / 16) as u32).to_le_bytes(),
        );
        put(&mut image, 0x1fe, &BOOT_FLAG_MAGIC.to_le_bytes());
        put(&mut image, BZ_HEADER_MAGIC, b"HdrS");
        put(&mut image, BZ_VERSION, &0x020fu16.to_le_bytes());
        image[BZ_LOADFLAGS] = LOADFLAG_LOADED_HIGH;
        put(&mut image, 0x214, &(HIGH_RAM_START as u32).to_le_bytes()); // code32_start
        put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        put(&mut image, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
        image[0x234] = 1; // relocatable_kernel
        put(&mut image, BZ_XLOADFLAGS, &xloadflags.to_le_bytes());
        put(&mut image, 0x238, &0x7ffu32.to_le_bytes()); // cmdline_size
        put(&mut image, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
        put(&mut image, 0x260, &BZ_INIT_SIZE.to_le_bytes()); // init_size
        for (i, byte) in image[setup_size..].iter_mut().enumerate() {
            *byte = (i % 241) as u8;
        }
        image
    }

    fn guest_mem(bytes: u64) -> GuestMemoryMmap<()> {
        create_guest_memory(bytes).unwrap()
    }

    #[test]
    fn elf_with_pvh_note_uses_pvh_entry() {
        let mem = guest_mem(64 * MIB);
        let loaded = load_kernel(&mem, &mut file_with(&synthetic_elf(true))).unwrap();
        assert_eq!(
            loaded.entry,
            KernelEntry::Pvh(GuestAddress(u64::from(PVH_ENTRY)))
        );
        assert_eq!(
            loaded.kernel_end,
            GuestAddress(ELF_LOAD_PADDR + ELF_LOAD_MEMSZ)
        );
        assert!(loaded.setup_header.is_none());
        assert_eq!(loaded.footprint_end(), loaded.kernel_end);
        let mut loaded_bytes = vec![0u8; ELF_LOAD_FILESZ];
        mem.read_slice(&mut loaded_bytes, GuestAddress(ELF_LOAD_PADDR))
            .unwrap();
        let expected: Vec<u8> = (0..ELF_LOAD_FILESZ).map(|i| (i % 251) as u8).collect();
        assert_eq!(loaded_bytes, expected);
    }

    #[test]
    fn elf_without_pvh_note_uses_elf_entry() {
        let mem = guest_mem(64 * MIB);
        let loaded = load_kernel(&mem, &mut file_with(&synthetic_elf(false))).unwrap();
        assert_eq!(
            loaded.entry,
            KernelEntry::Linux64(GuestAddress(ELF_LOAD_PADDR))
        );
        assert_eq!(loaded.entry.address(), GuestAddress(ELF_LOAD_PADDR));
    }

    #[test]
    fn elf_rejections_name_the_problem() {
        let mem = guest_mem(64 * MIB);

        let mut elf32 = synthetic_elf(false);
        elf32[4] = 1;
        let err = load_kernel(&mem, &mut file_with(&elf32)).unwrap_err();
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");

        let mut arm = synthetic_elf(false);
        put(&mut arm, 18, &183u16.to_le_bytes());
        let err = load_kernel(&mem, &mut file_with(&arm)).unwrap_err();
        assert!(err.to_string().contains("not x86_64"), "{err}");

        let elf = synthetic_elf(true);
        let err = load_kernel(&mem, &mut file_with(&elf[..100])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::TruncatedKernel {
                    what: "the program header table",
                    ..
                }
            ),
            "{err}"
        );
        let err = load_kernel(&mem, &mut file_with(&elf[..0x1010])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::TruncatedKernel {
                    what: "a loadable segment",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");

        let err = load_kernel(&mem, &mut file_with(&elf[..40])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::TruncatedKernel {
                    what: "the ELF header",
                    ..
                }
            ),
            "{err}"
        );

        // 2 MiB of RAM cannot hold a segment at 2 MiB.
        let small = mem_of(2 * MIB);
        let err = load_kernel(&small, &mut file_with(&elf)).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::KernelOutsideMemory {
                    start: ELF_LOAD_PADDR,
                    ..
                }
            ),
            "{err}"
        );
    }

    fn mem_of(bytes: u64) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
    }

    #[test]
    fn bzimage_uses_64bit_entry() {
        let mem = guest_mem(64 * MIB);
        let image = synthetic_bzimage(XLOADFLAG_KERNEL_64);
        let loaded = load_kernel(&mem, &mut file_with(&image)).unwrap();
        assert_eq!(
            loaded.entry,
            KernelEntry::Linux64(GuestAddress(HIGH_RAM_START + 0x200))
        );
        assert_eq!(
            loaded.kernel_end,
            GuestAddress(HIGH_RAM_START + BZ_PAYLOAD as u64)
        );
        let hdr = loaded.setup_header.unwrap();
        let (magic, version, code32) = (hdr.header, hdr.version, hdr.code32_start);
        assert_eq!(magic, SETUP_HEADER_MAGIC);
        assert_eq!(version, 0x020f);
        assert_eq!(code32, HIGH_RAM_START as u32);
        // Runtime start: max(1 MiB, pref 16 MiB) aligned to 2 MiB = 16 MiB.
        assert_eq!(
            loaded.footprint_end(),
            GuestAddress(0x100_0000 + u64::from(BZ_INIT_SIZE))
        );
        let mut first = [0u8; 4];
        mem.read_slice(&mut first, GuestAddress(HIGH_RAM_START))
            .unwrap();
        assert_eq!(first, [0, 1, 2, 3]);
    }

    #[test]
    fn bzimage_rejections_name_the_problem() {
        let mem = guest_mem(64 * MIB);
        let err = load_kernel(&mem, &mut file_with(&synthetic_bzimage(0))).unwrap_err();
        assert!(matches!(err, BootError::NotA64BitKernel { .. }), "{err}");
        assert!(err.to_string().contains("XLF_KERNEL_64"), "{err}");

        let image = synthetic_bzimage(XLOADFLAG_KERNEL_64);
        let err = load_kernel(&mem, &mut file_with(&image[..image.len() - 16])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::TruncatedKernel {
                    format: "bzImage",
                    ..
                }
            ),
            "{err}"
        );
        let err = load_kernel(&mem, &mut file_with(&image[..0x210])).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::TruncatedKernel {
                    what: "the setup header",
                    ..
                }
            ),
            "{err}"
        );

        // 8 MiB holds the image but not the 16 MiB + init_size the decompressor needs.
        let small = guest_mem(8 * MIB);
        let err = load_kernel(&small, &mut file_with(&image)).unwrap_err();
        assert!(
            matches!(err, BootError::KernelOutsideMemory { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("more memory"), "{err}");
    }

    #[test]
    fn garbage_and_empty_kernels_are_rejected() {
        let mem = guest_mem(16 * MIB);
        let err = load_kernel(&mem, &mut file_with(&[0x42; 4096])).unwrap_err();
        assert!(
            matches!(err, BootError::UnknownKernelFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("neither an ELF"), "{err}");
        let err = load_kernel(&mem, &mut file_with(b"#!")).unwrap_err();
        assert!(
            matches!(err, BootError::UnknownKernelFormat { .. }),
            "{err}"
        );
        let err = load_kernel(&mem, &mut file_with(&[])).unwrap_err();
        assert!(matches!(err, BootError::EmptyKernel), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = guest_mem(64 * MIB);
        let mut data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        data[..6].copy_from_slice(b"070701");
        let region = load_initrd(&mem, &mut file_with(&data)).unwrap();
        assert_eq!(region.size, data.len());
        assert_eq!(region.addr.raw_value() % PAGE_SIZE, 0);
        assert_eq!(
            region.addr,
            GuestAddress((64 * MIB - data.len() as u64) & !(PAGE_SIZE - 1))
        );
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, region.addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn initrd_stays_below_the_mmio_gap() {
        let mem = guest_mem(5 << 30);
        let region = load_initrd(&mem, &mut initrd_with(&[7u8; 5000])).unwrap();
        assert_eq!(region.addr, GuestAddress(MMIO_GAP_START - 2 * PAGE_SIZE));
        assert!(region.addr.raw_value() + region.size as u64 <= MMIO_GAP_START);
    }

    #[test]
    fn initrd_errors() {
        let mem = guest_mem(4 * MIB);
        let err = load_initrd(&mem, &mut file_with(&[])).unwrap_err();
        assert!(matches!(err, BootError::EmptyInitrd), "{err}");
        let err = load_initrd(&mem, &mut file_with(&[7u8; 4096])).unwrap_err();
        assert!(
            matches!(err, BootError::UnknownInitrdFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not an initramfs"), "{err}");
        let mut big = vec![0u8; 3 * MIB as usize + 1];
        big[..6].copy_from_slice(b"070701");
        let err = load_initrd(&mem, &mut file_with(&big)).unwrap_err();
        assert!(matches!(err, BootError::InitrdDoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn initrd_for_kernel_respects_footprint_and_addr_max() {
        let mem = guest_mem(64 * MIB);
        let kernel = load_kernel(
            &mem,
            &mut file_with(&synthetic_bzimage(XLOADFLAG_KERNEL_64)),
        )
        .unwrap();
        let footprint = kernel.footprint_end().raw_value(); // 20 MiB
        let region = load_initrd_for_kernel(&mem, &mut initrd_with(&[1u8; 4096]), &kernel).unwrap();
        assert_eq!(region.addr, GuestAddress(64 * MIB - PAGE_SIZE));
        let too_big = vec![1u8; (64 * MIB - footprint) as usize + 1];
        let err = load_initrd_for_kernel(&mem, &mut initrd_with(&too_big), &kernel).unwrap_err();
        assert!(
            matches!(err, BootError::InitrdDoesNotFit { floor, .. } if floor == footprint),
            "{err}"
        );

        let mem = mem_of(3 << 30);
        let kernel = load_kernel(
            &mem,
            &mut file_with(&synthetic_bzimage(XLOADFLAG_KERNEL_64)),
        )
        .unwrap();
        let region = load_initrd_for_kernel(&mem, &mut initrd_with(&[1u8; 4096]), &kernel).unwrap();
        assert_eq!(region.addr, GuestAddress(0x8000_0000 - PAGE_SIZE));
    }

    fn read_start_info(mem: &GuestMemoryMmap<()>) -> hvm_start_info {
        mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap()
    }

    fn read_cmdline(mem: &GuestMemoryMmap<()>, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len + 1];
        mem.read_slice(&mut bytes, GuestAddress(CMDLINE_START))
            .unwrap();
        bytes
    }

    #[test]
    fn pvh_start_info_describes_everything() {
        let mem = guest_mem(128 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&synthetic_elf(true))).unwrap();
        let initrd = load_initrd(&mem, &mut initrd_with(&[9u8; 8192])).unwrap();
        let cmdline = "console=ttyS0 reboot=k panic=1";
        configure_boot(&mem, &kernel, cmdline, Some(&initrd), GuestAddress(0xe0000)).unwrap();

        let info = read_start_info(&mem);
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);

        let map = memory_map(&mem);
        assert_eq!(info.memmap_entries as usize, map.len());
        for (i, range) in map.iter().enumerate() {
            let entry: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * i as u64))
                .unwrap();
            assert_eq!(entry.addr, range.start);
            assert_eq!(entry.size, range.size);
            assert_eq!(entry.type_, range.kind.e820_type());
        }
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START)).unwrap();
        assert_eq!((first.addr, first.size, first.type_), (0, 0x9fc00, 1));

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.paddr, initrd.addr.raw_value());
        assert_eq!(module.size, 8192);

        let mut expected = cmdline.as_bytes().to_vec();
        expected.push(0);
        assert_eq!(read_cmdline(&mem, cmdline.len()), expected);
    }

    #[test]
    fn pvh_without_initrd_has_no_modules() {
        let mem = guest_mem(64 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&synthetic_elf(true))).unwrap();
        configure_boot(&mem, &kernel, "", None, GuestAddress(0xe0000)).unwrap();
        let info = read_start_info(&mem);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(read_cmdline(&mem, 0), vec![0]);
    }

    #[test]
    fn zero_page_follows_the_boot_protocol() {
        let mem = guest_mem(128 * MIB);
        let kernel = load_kernel(
            &mem,
            &mut file_with(&synthetic_bzimage(XLOADFLAG_KERNEL_64)),
        )
        .unwrap();
        let initrd = load_initrd_for_kernel(&mem, &mut initrd_with(&[3u8; 5000]), &kernel).unwrap();
        let cmdline = "console=ttyS0 root=/dev/vda";
        configure_boot(&mem, &kernel, cmdline, Some(&initrd), GuestAddress(0xe0000)).unwrap();

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.loadflags }, LOADFLAG_LOADED_HIGH);
        assert_eq!(hdr.loadflags & LOADFLAG_KEEP_SEGMENTS, 0);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, cmdline.len() as u32);
        assert_eq!({ hdr.ramdisk_image }, initrd.addr.raw_value() as u32);
        assert_eq!({ hdr.ramdisk_size }, 5000);
        assert_eq!({ hdr.code32_start }, HIGH_RAM_START as u32);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);

        let map = memory_map(&mem);
        assert_eq!(usize::from(params.e820_entries), map.len());
        for (entry, range) in params.e820_table.iter().zip(&map) {
            assert_eq!({ entry.addr }, range.start);
            assert_eq!({ entry.size }, range.size);
            assert_eq!({ entry.r#type }, range.kind.e820_type());
        }
        let reserved = params.e820_table[1];
        assert_eq!(
            ({ reserved.addr }, { reserved.r#type }),
            (0x9fc00, MemoryRangeKind::Reserved.e820_type())
        );

        // Raw offsets from the boot protocol document, independent of the struct layout.
        let mut raw = [0u8; 4096];
        mem.read_slice(&mut raw, GuestAddress(ZERO_PAGE_START))
            .unwrap();
        assert_eq!(&raw[0x202..0x206], b"HdrS");
        assert_eq!(raw[0x210], 0xff);
        assert_eq!(le_u32(&raw, 0x228), CMDLINE_START as u32);
        assert_eq!(le_u64(&raw, 0x070), 0xe0000);
        assert_eq!(usize::from(raw[0x1e8]), map.len());
    }

    #[test]
    fn elf_zero_page_is_built_from_scratch() {
        let mem = guest_mem(64 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&synthetic_elf(false))).unwrap();
        configure_boot(&mem, &kernel, "quiet", None, GuestAddress(0xe0000)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.header }, SETUP_HEADER_MAGIC);
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.kernel_alignment }, ELF_KERNEL_ALIGNMENT);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
        assert_eq!({ params.hdr.ramdisk_size }, 0);
    }

    #[test]
    fn cmdline_limits() {
        let mem = guest_mem(64 * MIB);
        let elf = load_kernel(&mem, &mut file_with(&synthetic_elf(true))).unwrap();
        let longest = "x".repeat(CMDLINE_MAX_SIZE - 1);
        configure_boot(&mem, &elf, &longest, None, GuestAddress(0xe0000)).unwrap();
        let too_long = "x".repeat(CMDLINE_MAX_SIZE);
        let err = configure_boot(&mem, &elf, &too_long, None, GuestAddress(0xe0000)).unwrap_err();
        assert!(
            matches!(err, BootError::CmdlineTooLong { len, max } if len == CMDLINE_MAX_SIZE && max == CMDLINE_MAX_SIZE - 1),
            "{err}"
        );

        // The bzImage header says the kernel takes at most 0x7ff bytes.
        let bz = load_kernel(
            &mem,
            &mut file_with(&synthetic_bzimage(XLOADFLAG_KERNEL_64)),
        )
        .unwrap();
        let err =
            configure_boot(&mem, &bz, &"y".repeat(0x800), None, GuestAddress(0xe0000)).unwrap_err();
        assert!(
            matches!(err, BootError::CmdlineTooLong { max: 0x7ff, .. }),
            "{err}"
        );

        let err = configure_boot(&mem, &elf, "a\0b", None, GuestAddress(0xe0000)).unwrap_err();
        assert!(
            matches!(err, BootError::CmdlineHasNul { offset: 1 }),
            "{err}"
        );
    }

    // ---- The real Debian kernel, when the workspace cache has it. ----

    fn kernel_cache() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/kernel")
    }

    fn debian_bzimage() -> Option<PathBuf> {
        let boot = kernel_cache().join("kroot/boot");
        std::fs::read_dir(boot)
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("vmlinuz-"))
            })
    }

    /// Extracts the ELF vmlinux from the bzImage's LZ4 payload into the cache (once).
    fn extract_vmlinux(bzimage: &Path) -> Result<PathBuf, String> {
        let name = bzimage
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("odd bzImage name")?
            .replacen("vmlinuz-", "vmlinux-", 1);
        let target = kernel_cache().join(name);
        if target.exists() {
            return Ok(target);
        }
        let image = std::fs::read(bzimage).map_err(|e| e.to_string())?;
        let setup_size = (usize::from(image[BZ_SETUP_SECTS]) + 1) * 512;
        let offset = setup_size + le_u32(&image, 0x248) as usize;
        let length = le_u32(&image, 0x24c) as usize;
        let payload = image
            .get(offset..offset + length)
            .ok_or("payload outside the file")?;
        if payload.get(..4) != Some(&[0x02, 0x21, 0x4c, 0x18][..]) {
            return Err("payload is not LZ4 (legacy frame)".into());
        }
        // The kernel appends the decompressed size (4 bytes) after the LZ4 stream.
        let stream = &payload[..payload.len() - 4];
        let mut child = std::process::Command::new("lz4")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("running lz4: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let stream = stream.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&stream));
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        writer
            .join()
            .map_err(|_| "writer panicked")?
            .map_err(|e| e.to_string())?;
        if !output.status.success() || !output.stdout.starts_with(&ELF_MAGIC) {
            return Err(format!("lz4 failed: {:?}", output.status));
        }
        let partial = target.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, &output.stdout).map_err(|e| e.to_string())?;
        std::fs::rename(&partial, &target).map_err(|e| e.to_string())?;
        Ok(target)
    }

    #[test]
    fn debian_bzimage_loads_with_64bit_entry() {
        let Some(path) = debian_bzimage() else {
            eprintln!(
                "skipping: no Debian kernel under {}",
                kernel_cache().display()
            );
            return;
        };
        let mem = guest_mem(256 * MIB);
        let kernel = load_kernel(&mem, &mut File::open(&path).unwrap()).unwrap();
        assert_eq!(
            kernel.entry,
            KernelEntry::Linux64(GuestAddress(HIGH_RAM_START + 0x200))
        );
        let hdr = kernel.setup_header.unwrap();
        assert!({ hdr.version } >= 0x020c);
        assert_ne!({ hdr.xloadflags } & XLOADFLAG_KERNEL_64, 0);
        assert!(kernel.footprint_end().raw_value() > 0x100_0000);
        let initrd = load_initrd_for_kernel(&mem, &mut initrd_with(&[0u8; 4096]), &kernel).unwrap();
        assert!(initrd.addr >= kernel.footprint_end());
        configure_boot(
            &mem,
            &kernel,
            "console=ttyS0",
            Some(&initrd),
            GuestAddress(0xe0000),
        )
        .unwrap();
    }

    #[test]
    fn debian_vmlinux_has_pvh_entry() {
        let Some(bzimage) = debian_bzimage() else {
            eprintln!(
                "skipping: no Debian kernel under {}",
                kernel_cache().display()
            );
            return;
        };
        let vmlinux = match extract_vmlinux(&bzimage) {
            Ok(path) => path,
            Err(reason) => {
                eprintln!("skipping: cannot extract vmlinux: {reason}");
                return;
            }
        };
        let mem = guest_mem(256 * MIB);
        let kernel = load_kernel(&mem, &mut File::open(&vmlinux).unwrap()).unwrap();
        let KernelEntry::Pvh(entry) = kernel.entry else {
            panic!("no PVH entry found: {:?}", kernel.entry);
        };
        // Debian loads the kernel at 16 MiB; the PVH entry is inside the image.
        assert!(entry.raw_value() >= 0x100_0000, "{entry:?}");
        assert!(entry < kernel.kernel_end);
        configure_boot(&mem, &kernel, "console=ttyS0", None, GuestAddress(0xe0000)).unwrap();
        assert_eq!(read_start_info(&mem).magic, XEN_HVM_START_MAGIC_VALUE);
    }
}
