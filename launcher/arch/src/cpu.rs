//! vCPU boot state: CPUID topology, MSRs, FPU, general and segment registers, the boot
//! GDT/IDT and page tables, and the local APIC LINT pins. Pure functions over KVM structs;
//! the caller issues the ioctls.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
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
// CPUID

/// CPUID leaves and bits this module edits.
mod leaf {
    pub const VENDOR: u32 = 0x0;
    pub const FEATURES: u32 = 0x1;
    pub const CACHE_PARAMS: u32 = 0x4;
    pub const EXT_TOPOLOGY: u32 = 0xb;
    pub const EXT_TOPOLOGY_V2: u32 = 0x1f;
    pub const AMD_EXT_FEATURES: u32 = 0x8000_0001;
    pub const AMD_SIZES: u32 = 0x8000_0008;
    pub const AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
    pub const AMD_EXT_APIC_ID: u32 = 0x8000_001e;

    /// Leaf 1 ECX: TSC-deadline timer (emulated by KVM's in-kernel local APIC).
    pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
    /// Leaf 1 ECX: running under a hypervisor.
    pub const ECX_HYPERVISOR: u32 = 1 << 31;
    /// Leaf 1 EDX: EBX[23:16] (logical processor count) is valid.
    pub const EDX_HTT: u32 = 1 << 28;
    /// Leaf 0x80000001 ECX: core multi-processing legacy mode (cores, not threads).
    pub const ECX_CMP_LEGACY: u32 = 1 << 1;
    /// CLFLUSH line size in 8-byte units (64 bytes).
    pub const CLFLUSH_LINE_SIZE: u32 = 8;
    /// Leaf 0xB/0x1F level types.
    pub const LEVEL_TYPE_INVALID: u32 = 0;
    pub const LEVEL_TYPE_SMT: u32 = 1;
    pub const LEVEL_TYPE_CORE: u32 = 2;
}

/// Adapts the CPUID that KVM supports (`KVM_GET_SUPPORTED_CPUID`) to vCPU `vcpu_index` of
/// `vcpu_count`, all in one socket, one thread per core.
///
/// Sets the initial APIC id, logical count and CLFLUSH size in leaf 1 (and the hypervisor and
/// TSC-deadline bits, which KVM's in-kernel APIC emulates), the topology leaves 0xB/0x1F,
/// the cores-per-package fields of leaf 4, and on AMD the core count in 0x80000008, the
/// cache sharing in 0x8000001D and the extended APIC id in 0x8000001E. Leaves KVM did not
/// report stay absent.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_index: u32, vcpu_count: u32) {
    let _span = tracing::debug_span!("filter_cpuid", vcpu_index, vcpu_count).entered();
    let count = vcpu_count.max(1);
    let core_bits = id_bits(count);
    let amd = is_amd(cpuid.as_slice());

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            leaf::FEATURES => {
                entry.ebx = (entry.ebx & 0xff)
                    | (leaf::CLFLUSH_LINE_SIZE << 8)
                    | (count.min(0xff) << 16)
                    | ((vcpu_index & 0xff) << 24);
                entry.ecx |= leaf::ECX_HYPERVISOR | leaf::ECX_TSC_DEADLINE;
                if count > 1 {
                    entry.edx |= leaf::EDX_HTT;
                } else {
                    entry.edx &= !leaf::EDX_HTT;
                }
            }
            leaf::CACHE_PARAMS if entry.eax & 0x1f != 0 => {
                let sharing = cache_sharing(entry.eax, count);
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count - 1).min(0x3f) << 26);
            }
            leaf::AMD_EXT_FEATURES if amd => {
                if count > 1 {
                    entry.ecx |= leaf::ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !leaf::ECX_CMP_LEGACY;
                }
            }
            leaf::AMD_SIZES => {
                // NC (cores - 1) in bits 7:0, ApicIdCoreIdSize in bits 15:12.
                entry.ecx =
                    (entry.ecx & !0xf0ff) | ((core_bits & 0xf) << 12) | (count - 1).min(0xff);
            }
            leaf::AMD_CACHE_TOPOLOGY if entry.eax & 0x1f != 0 => {
                let sharing = cache_sharing(entry.eax, count);
                entry.eax = (entry.eax & !(0xfff << 14)) | (sharing << 14);
            }
            leaf::AMD_EXT_APIC_ID => {
                entry.eax = vcpu_index;
                // Compute unit id = core id; one thread per compute unit.
                entry.ebx = (entry.ebx & !0xffff) | (vcpu_index & 0xff);
                // Node 0, one node per processor.
                entry.ecx &= !0x7ff;
            }
            _ => {}
        }
    }

    for topology_leaf in [leaf::EXT_TOPOLOGY, leaf::EXT_TOPOLOGY_V2] {
        if cpuid.as_slice().iter().any(|e| e.function == topology_leaf) {
            cpuid.retain(|e| e.function != topology_leaf);
            for entry in topology_entries(topology_leaf, vcpu_index, count, core_bits) {
                if let Err(err) = cpuid.push(entry) {
                    tracing::warn!(
                        leaf = format_args!("{topology_leaf:#x}"),
                        subleaf = entry.index,
                        ?err,
                        "no room for a CPUID topology entry"
                    );
                }
            }
        }
    }
}

/// Number of APIC id bits needed for `count` cores (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Logical processors sharing a cache, minus one: private L1/L2, shared L3 and beyond.
fn cache_sharing(eax: u32, count: u32) -> u32 {
    let level = (eax >> 5) & 0x7;
    if level >= 3 {
        (count - 1).min(0xfff)
    } else {
        0
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == leaf::VENDOR)
        .is_some_and(|e| {
            let mut vendor = [0u8; 12];
            vendor[..4].copy_from_slice(&e.ebx.to_le_bytes());
            vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
            vendor[8..].copy_from_slice(&e.ecx.to_le_bytes());
            &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine"
        })
}

/// Subleaves 0 (SMT), 1 (core) and 2 (end marker) of leaf 0xB or 0x1F.
fn topology_entries(
    function: u32,
    vcpu_index: u32,
    count: u32,
    core_bits: u32,
) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, logical: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: logical,
        ecx: (level_type << 8) | index,
        edx: vcpu_index,
        ..Default::default()
    };
    [
        subleaf(0, 0, 1, leaf::LEVEL_TYPE_SMT),
        subleaf(1, core_bits, count, leaf::LEVEL_TYPE_CORE),
        subleaf(2, 0, 0, leaf::LEVEL_TYPE_INVALID),
    ]
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

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    fn vendor_entry(vendor: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0x1f,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    /// A CPUID shaped like what KVM reports on an AMD EPYC host.
    fn amd_cpuid() -> CpuId {
        let mut leaf1 = entry(1, 0);
        leaf1.ebx = 0xff00_0000 | 0x0077_0000 | 0x0000_ff00 | 0x42;
        leaf1.edx = 0;
        let mut l1d = entry(0x8000_001d, 0);
        l1d.eax = 0x121 | (7 << 14); // data cache, level 1
        let mut l3 = entry(0x8000_001d, 3);
        l3.eax = 0x163; // unified cache, level 3
        let mut sizes = entry(0x8000_0008, 0);
        sizes.eax = 0x3030;
        sizes.ecx = 0x0001_f0ff;
        let mut ext_apic = entry(0x8000_001e, 0);
        ext_apic.ebx = 0x0000_0100;
        ext_apic.ecx = 0x0000_0701;
        let mut topo0 = entry(0xb, 0);
        topo0.ecx = 0x100;
        CpuId::from_entries(&[
            vendor_entry(b"AuthenticAMD"),
            leaf1,
            entry(6, 0),
            topo0,
            entry(0x8000_0001, 0),
            sizes,
            l1d,
            l3,
            ext_apic,
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 3, 4);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3, "initial APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical processor count");
        assert_eq!((leaf1.ebx >> 8) & 0xff, 8, "CLFLUSH line size / 8");
        assert_eq!(leaf1.ebx & 0xff, 0x42, "brand index kept");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor present");
        assert_ne!(leaf1.ecx & (1 << 24), 0, "TSC deadline");
        assert_ne!(leaf1.edx & (1 << 28), 0, "HTT with several vCPUs");

        let mut single = amd_cpuid();
        filter_cpuid(&mut single, 0, 1);
        let leaf1 = find(&single, 1, 0);
        assert_eq!(leaf1.edx & (1 << 28), 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 5, 6);
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&cpuid, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx >> 8, end.edx), (0, 0, 0, 5));
        assert_eq!(end.ecx & 0xff, 2);
        assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        // Leaf 0x1F was not reported by KVM and stays absent.
        assert!(!cpuid.as_slice().iter().any(|e| e.function == 0x1f));
        assert_eq!(
            cpuid
                .as_slice()
                .iter()
                .filter(|e| e.function == 0xb)
                .count(),
            3
        );
    }

    #[test]
    fn amd_leaves_describe_the_cores() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 2, 4);
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 3, "NC = cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 2, "ApicIdCoreIdSize");
        assert_eq!(sizes.ecx >> 16, 1, "other bits kept");
        assert_eq!(sizes.eax, 0x3030);

        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!(ext.eax, 2, "extended APIC id");
        assert_eq!(ext.ebx & 0xff, 2, "compute unit id");
        assert_eq!((ext.ebx >> 8) & 0xff, 0, "one thread per compute unit");
        assert_eq!(ext.ecx & 0x7ff, 0, "node 0 of 1");

        let l1d = find(&cpuid, 0x8000_001d, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!(l1d.eax & 0x3fff, 0x121);
        let l3 = find(&cpuid, 0x8000_001d, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all cores");

        let ext_features = find(&cpuid, 0x8000_0001, 0);
        assert_ne!(ext_features.ecx & 0b10, 0, "CmpLegacy");
    }

    #[test]
    fn intel_leaf4_reports_cores_per_package() {
        let mut l1 = entry(4, 0);
        l1.eax = 0x121 | (1 << 14) | (3 << 26);
        let mut l3 = entry(4, 3);
        l3.eax = 0x163 | (15 << 14) | (3 << 26);
        let end = entry(4, 4);
        let mut cpuid = CpuId::from_entries(&[
            vendor_entry(b"GenuineIntel"),
            entry(1, 0),
            l1,
            l3,
            end,
            entry(0x8000_0001, 0),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 0, 2);
        let l1 = find(&cpuid, 4, 0);
        assert_eq!(l1.eax >> 26, 1, "cores per package - 1");
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        assert_eq!(l1.eax & 0x3fff, 0x121);
        let l3 = find(&cpuid, 4, 3);
        assert_eq!(l3.eax >> 26, 1);
        assert_eq!((l3.eax >> 14) & 0xfff, 1);
        assert_eq!(find(&cpuid, 4, 4).eax, 0, "terminator untouched");
        assert_eq!(find(&cpuid, 0x8000_0001, 0).ecx, 0, "CmpLegacy is AMD only");
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 64].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 6]
        );
    }

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
