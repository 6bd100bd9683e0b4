//! vCPU boot state: MSRs, FPU, general and segment registers, the boot GDT/IDT and page
//! tables, and the local APIC LINT pins (CPUID is [`crate::cpuid`]). Pure functions over
//! KVM structs; the caller issues the ioctls.

use kvm_bindings::{
    kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot::KernelEntry;
use crate::layout::{
    BOOT_CODE_SELECTOR, BOOT_DATA_SELECTOR, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER,
    BOOT_TSS_SELECTOR, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR (SYSCALL target segments).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit SYSCALL target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compatibility-mode SYSCALL target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SFMASK (SYSCALL RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (SWAPGS).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, which is always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// GDT descriptor flags: 64-bit code, present, DPL 0, execute/read, accessed, 4 KiB granular.
const GDT_CODE64: u16 = 0xa09b;
/// GDT descriptor flags: 32-bit code, present, DPL 0, execute/read, accessed, 4 KiB granular.
const GDT_CODE32: u16 = 0xc09b;
/// GDT descriptor flags: 32-bit data, present, DPL 0, read/write, accessed, 4 KiB granular.
const GDT_DATA: u16 = 0xc093;
/// GDT descriptor flags: busy 32/64-bit TSS, present, byte granular.
const GDT_TSS: u16 = 0x008b;
/// Limit of the TSS (the PVH ABI asks for 0x67).
const TSS_LIMIT: u32 = 0x67;
/// Number of boot GDT entries: null, code, data, TSS.
const BOOT_GDT_ENTRIES: usize = 4;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
/// Entries per page-table page.
const PT_ENTRIES: u64 = 512;
/// Size of the large pages the boot page directory maps.
const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Local APIC register offsets and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_DELIVERY_MODE_SHIFT: u32 = 8;
const APIC_DELIVERY_MODE_MASK: u32 = 0x7 << APIC_DELIVERY_MODE_SHIFT;
/// LVT delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// LVT delivery mode ExtINT (the 8259 PIC's output).
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors from writing vCPU boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Writing a boot structure (GDT, IDT, page tables) failed.
    #[error("writing the boot {what} at guest address {addr:#x}: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

// ---------------------------------------------------------------------------------------
// MSRs, FPU, general registers

/// MSR values for a vCPU at kernel entry: SYSENTER/SYSCALL MSRs zeroed, fast strings
/// enabled, MTRRs enabled with write-back default.
///
/// The TSC is deliberately not written: KVM synchronizes the TSCs of a VM's vCPUs when it
/// creates them, and later host-side writes made one vCPU at a time can leave them out of
/// step on a slow or loaded host (the guest then marks its TSC unstable).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

/// x87/SSE state at reset: FCW 0x37f (all exceptions masked), MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// General registers at kernel entry for the boot protocol of `entry`.
///
/// PVH: `rip` = entry, `rbx` = [`PVH_INFO_START`]. Linux 64-bit: `rip` = entry,
/// `rsp` = `rbp` = [`BOOT_STACK_POINTER`], `rsi` = [`ZERO_PAGE_START`].
pub fn boot_regs(entry: &KernelEntry) -> kvm_regs {
    match *entry {
        KernelEntry::Pvh(addr) => kvm_regs {
            rip: addr.0,
            rbx: PVH_INFO_START,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        KernelEntry::Linux64(addr) => kvm_regs {
            rip: addr.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
    }
}

// ---------------------------------------------------------------------------------------
// Segments, GDT/IDT, page tables

/// Encodes a GDT descriptor from its flags (access byte in bits 7:0, G/DB/L/AVL in 15:12),
/// base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a GDT descriptor into the KVM segment register it loads as `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55);
    let limit = if granular == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granular,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code (64-bit for the Linux protocol, 32-bit for PVH), data, TSS.
fn boot_gdt(entry: &KernelEntry) -> [u64; BOOT_GDT_ENTRIES] {
    let code = match entry {
        KernelEntry::Pvh(_) => GDT_CODE32,
        KernelEntry::Linux64(_) => GDT_CODE64,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, TSS_LIMIT),
    ]
}

fn write_u64s<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    values: impl IntoIterator<Item = u64>,
) -> Result<(), CpuError> {
    let bytes: Vec<u8> = values.into_iter().flat_map(u64::to_le_bytes).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| CpuError::Write { what, addr, source })
}

/// Writes the identity map of the first 1 GiB with 2 MiB pages: PML4[0] → PDPT[0] → PD.
fn write_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), CpuError> {
    let table = PTE_PRESENT | PTE_WRITABLE;
    write_u64s(mem, "PML4", PML4_START, [PDPTE_START | table])?;
    write_u64s(mem, "PDPT", PDPTE_START, [PDE_START | table])?;
    write_u64s(
        mem,
        "page directory",
        PDE_START,
        (0..PT_ENTRIES).map(|i| (i * LARGE_PAGE_SIZE) | table | PTE_HUGE),
    )
}

/// Sets the segment and control registers for `entry`'s boot protocol and writes the GDT,
/// the empty IDT and (for the 64-bit protocol) the boot page tables.
///
/// PVH: 32-bit protected mode with flat 4 GiB segments, paging off, EFER 0.
/// Linux 64-bit: long mode, 64-bit code segment, identity-mapped first 1 GiB,
/// CR3 = [`PML4_START`], CR4 = PAE, CR0 = PE|PG|ET, EFER = LME|LMA.
pub fn setup_boot_sregs<M: GuestMemoryBackend>(
    mem: &M,
    entry: &KernelEntry,
    sregs: &mut kvm_sregs,
) -> Result<(), CpuError> {
    let _span = tracing::debug_span!("setup_boot_sregs", ?entry).entered();
    let gdt = boot_gdt(entry);
    write_u64s(mem, "GDT", BOOT_GDT_START, gdt)?;
    write_u64s(mem, "IDT", BOOT_IDT_START, [0])?;

    sregs.gdt = kvm_dtable {
        base: BOOT_GDT_START,
        limit: (BOOT_GDT_ENTRIES * 8 - 1) as u16,
        ..Default::default()
    };
    sregs.idt = kvm_dtable {
        base: BOOT_IDT_START,
        limit: 7,
        ..Default::default()
    };
    let data = segment_from_gdt(gdt[2], BOOT_DATA_SELECTOR);
    sregs.cs = segment_from_gdt(gdt[1], BOOT_CODE_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], BOOT_TSS_SELECTOR);

    match entry {
        KernelEntry::Pvh(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        KernelEntry::Linux64(_) => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Local APIC

fn lapic_read(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    for (byte, reg) in raw.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *byte = *reg as u8;
    }
    u32::from_le_bytes(raw)
}

fn lapic_write(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (reg, byte) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *reg = byte as _;
    }
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = lapic_read(lapic, offset);
    lapic_write(
        lapic,
        offset,
        (value & !APIC_DELIVERY_MODE_MASK) | (mode << APIC_DELIVERY_MODE_SHIFT),
    );
}

/// Routes the local APIC pins as on a PC: LINT0 = ExtINT (the PIC), LINT1 = NMI.
pub fn setup_lint(lapic: &mut kvm_lapic_state) {
    set_delivery_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::GuestAddress;

    #[test]
    fn boot_msrs_zero_syscall_state_and_enable_fast_strings() {
        let msrs = boot_msrs();
        let value = |index: u32| {
            msrs.iter()
                .find(|m| m.index == index)
                .map(|m| m.data)
                .unwrap_or_else(|| panic!("MSR {index:#x} missing"))
        };
        for index in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_KERNEL_GS_BASE,
            MSR_SYSCALL_MASK,
        ] {
            assert_eq!(value(index), 0, "MSR {index:#x}");
        }
        assert_eq!(value(MSR_IA32_MISC_ENABLE) & 1, 1);
        assert_eq!(value(MSR_MTRR_DEF_TYPE), 0x806);
        let mut indices: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), msrs.len(), "no duplicates");
    }

    #[test]
    fn fpu_and_regs() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));

        let regs = boot_regs(&KernelEntry::Pvh(GuestAddress(0x100_0123)));
        assert_eq!(regs.rip, 0x100_0123);
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rflags, 2);
        assert_eq!((regs.rsi, regs.rsp), (0, 0));

        let regs = boot_regs(&KernelEntry::Linux64(GuestAddress(0x10_0200)));
        assert_eq!(regs.rip, 0x10_0200);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn gdt_entries_encode_and_decode() {
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(GDT_TSS, 0, 0x67), 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
        let seg = segment_from_gdt(0x120a_9334_5678_bcde, 0x28);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!((seg.g, seg.present, seg.type_, seg.s), (0, 1, 3, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    fn sregs_for(entry: KernelEntry) -> (kvm_sregs, vm_memory::GuestMemoryMmap<()>) {
        let mem = create_guest_memory(64 << 20).unwrap();
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        setup_boot_sregs(&mem, &entry, &mut sregs).unwrap();
        (sregs, mem)
    }

    fn read_u64(mem: &vm_memory::GuestMemoryMmap<()>, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let (sregs, mem) = sregs_for(KernelEntry::Linux64(GuestAddress(0x10_0200)));
        let cs = sregs.cs;
        assert_eq!(
            (
                cs.selector,
                cs.base,
                cs.limit,
                cs.type_,
                cs.present,
                cs.dpl,
                cs.s,
                cs.l,
                cs.db,
                cs.g
            ),
            (0x08, 0, 0xffff_ffff, 0xb, 1, 0, 1, 1, 0, 1)
        );
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(
                (
                    seg.selector,
                    seg.base,
                    seg.limit,
                    seg.type_,
                    seg.present,
                    seg.s,
                    seg.db,
                    seg.g,
                    seg.l
                ),
                (0x10, 0, 0xffff_ffff, 0x3, 1, 1, 1, 1, 0)
            );
        }
        let tr = sregs.tr;
        assert_eq!(
            (
                tr.selector,
                tr.base,
                tr.limit,
                tr.type_,
                tr.present,
                tr.s,
                tr.unusable
            ),
            (0x18, 0, 0x67, 0xb, 1, 0, 0)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_PG | X86_CR0_ET);
        assert_eq!(sregs.cr0, 0x8000_0011);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4, 0x20);
        assert_eq!(sregs.efer, 0x500);

        assert_eq!(read_u64(&mem, BOOT_GDT_START), 0);
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 8), 0x00af_9b00_0000_ffff);
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 16), 0x00cf_9300_0000_ffff);
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 24), 0x0000_8b00_0000_0067);
        assert_eq!(read_u64(&mem, BOOT_IDT_START), 0);

        assert_eq!(read_u64(&mem, PML4_START), PDPTE_START | 0x3);
        assert_eq!(read_u64(&mem, PML4_START + 8), 0);
        assert_eq!(read_u64(&mem, PDPTE_START), PDE_START | 0x3);
        assert_eq!(read_u64(&mem, PDPTE_START + 8), 0);
        for i in 0..512u64 {
            assert_eq!(
                read_u64(&mem, PDE_START + i * 8),
                (i << 21) | 0x83,
                "PDE {i}"
            );
        }
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let (sregs, mem) = sregs_for(KernelEntry::Pvh(GuestAddress(0x100_0000)));
        let cs = sregs.cs;
        assert_eq!(
            (
                cs.selector,
                cs.base,
                cs.limit,
                cs.type_,
                cs.db,
                cs.l,
                cs.g,
                cs.present
            ),
            (0x08, 0, 0xffff_ffff, 0xb, 1, 0, 1, 1)
        );
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(
                (seg.base, seg.limit, seg.type_, seg.db, seg.present),
                (0, 0xffff_ffff, 0x3, 1, 1)
            );
        }
        assert_eq!((sregs.tr.limit, sregs.tr.type_), (0x67, 0xb));
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 8), 0x00cf_9b00_0000_ffff);
        // No page tables are needed with paging off.
        assert_eq!(read_u64(&mem, PML4_START), 0);
    }

    #[test]
    fn sregs_fail_without_low_memory() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x10_0000)])
                .unwrap();
        let mut sregs = kvm_sregs::default();
        let err =
            setup_boot_sregs(&mem, &KernelEntry::Pvh(GuestAddress(0)), &mut sregs).unwrap_err();
        assert!(
            err.to_string().contains("GDT at guest address 0x500"),
            "{err}"
        );
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // Reset state: masked LVTs; keep unrelated bits.
        lapic_write(&mut lapic, APIC_LVT0, 0x0001_0000 | 0x400);
        lapic_write(&mut lapic, APIC_LVT1, 0x0001_0000);
        lapic_write(&mut lapic, 0x340, 0xdead_beef);
        setup_lint(&mut lapic);
        assert_eq!(lapic_read(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_read(&lapic, APIC_LVT1), 0x0001_0400);
        assert_eq!(lapic_read(&lapic, 0x340), 0xdead_beef);
        assert_eq!(lapic.regs[0x351] as u8, 0x07);
        assert_eq!(lapic.regs[0x361] as u8, 0x04);
    }
}
