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
use linux_loader::loader::{BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::file_copy::{self, FileRange};
use crate::layout::{
    BZIMAGE_64BIT_ENTRY_OFFSET, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, MMIO_GAP_START,
    PAGE_SIZE, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::{highest_ram_below, memory_map, MemoryRange};

mod elf;

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
    /// Copying the kernel's segments into guest memory failed.
    #[error("copying the kernel into guest memory: {0}")]
    CopyKernel(#[source] crate::file_copy::FileCopyError),
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
        /// The copy's error.
        #[source]
        source: crate::file_copy::FileCopyError,
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
pub fn load_kernel<M: GuestMemoryBackend + Sync>(
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
        elf::load_elf(mem, kernel, file_len, &head)?
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
pub fn load_initrd<M: GuestMemoryBackend + Sync>(
    mem: &M,
    initrd: &mut File,
) -> Result<InitrdRegion, BootError> {
    let _span = tracing::info_span!("load_initrd").entered();
    place_initrd(mem, initrd, HIGH_RAM_START, MMIO_GAP_START)
}

/// Loads the initrd as high as possible below the MMIO gap and the kernel's
/// `initrd_addr_max`, and above everything the kernel uses ([`LoadedKernel::footprint_end`]).
pub fn load_initrd_for_kernel<M: GuestMemoryBackend + Sync>(
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

fn place_initrd<M: GuestMemoryBackend + Sync>(
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
    let whole = [FileRange {
        file_offset: 0,
        guest_addr: GuestAddress(addr),
        len,
    }];
    file_copy::copy_ranges(mem, initrd, &whole, file_copy::available_threads())
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
mod tests;
