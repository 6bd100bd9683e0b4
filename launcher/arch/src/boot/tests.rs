//! Unit tests of the kernel and initrd loaders and the boot configuration, with
//! hand-made kernels and, for the real thing, the Debian kernel from the guest images.

use super::*;
use crate::memory::{create_guest_memory, MemoryRangeKind};
use std::io::Write;
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

// ---- The real Debian kernel from the guest images (python3 images/build.py). ----

#[test]
#[ignore = "needs the guest images (python3 images/build.py)"]
fn debian_bzimage_loads_with_64bit_entry() {
    let path = ironvisor_prereq::guest_image("vmlinuz");
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
#[ignore = "needs the guest images (python3 images/build.py)"]
fn debian_vmlinux_has_pvh_entry() {
    let vmlinux = ironvisor_prereq::guest_image("vmlinux");
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
