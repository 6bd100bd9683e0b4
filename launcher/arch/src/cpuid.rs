//! CPUID for one vCPU: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), with the leaves that
//! describe where the vCPU sits in the VM's [`CpuTopology`] rewritten, so the guest sees
//! the sockets, cores and threads the VM asked for rather than what the host has.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::topology::CpuTopology;

/// CPUID leaves and bits this module edits.
mod leaf {
    pub const VENDOR: u32 = 0x0;
    pub const FEATURES: u32 = 0x1;
    pub const CACHE_PARAMS: u32 = 0x4;
    pub const EXT_TOPOLOGY: u32 = 0xb;
    pub const EXT_TOPOLOGY_V2: u32 = 0x1f;
    pub const EXT_MAX: u32 = 0x8000_0000;
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
    /// Leaf 0x80000001 ECX: topology extensions (leaves 0x8000001D and 0x8000001E).
    pub const ECX_TOPOEXT: u32 = 1 << 22;
    /// CLFLUSH line size in 8-byte units (64 bytes).
    pub const CLFLUSH_LINE_SIZE: u32 = 8;
    /// Leaf 0xB/0x1F level types.
    pub const LEVEL_TYPE_INVALID: u32 = 0;
    pub const LEVEL_TYPE_SMT: u32 = 1;
    pub const LEVEL_TYPE_CORE: u32 = 2;
    /// Leaf 4 / 0x8000001D EAX: "logical processors sharing this cache - 1", bits 25:14.
    pub const CACHE_SHARING_SHIFT: u32 = 14;
    pub const CACHE_SHARING_MASK: u32 = 0xfff << CACHE_SHARING_SHIFT;
}

/// Adapts the CPUID that KVM supports to vCPU `vcpu_index` of `topology`.
///
/// Sets the initial APIC id, logical count and CLFLUSH size in leaf 1 (and the hypervisor
/// and TSC-deadline bits, which KVM's in-kernel APIC emulates), the SMT and core levels of
/// leaves 0xB/0x1F, the cores-per-package and cache-sharing fields of leaf 4, and on AMD
/// CmpLegacy in 0x80000001, the package size in 0x80000008, the cache sharing in
/// 0x8000001D and the extended APIC id, core and node in 0x8000001E. First- and
/// second-level caches are shared by a core's threads, the last level by the socket.
/// Leaves KVM did not report stay absent.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_index: u32, topology: &CpuTopology) {
    let _span = tracing::debug_span!(
        "filter_cpuid",
        vcpu_index,
        sockets = topology.sockets(),
        cores = topology.cores(),
        threads = topology.threads()
    )
    .entered();
    let apic_id = topology.apic_id(vcpu_index);
    let position = topology.position(vcpu_index);
    let socket_shift = topology.socket_shift();
    let logical = topology.logical_per_socket();
    let amd = is_amd(cpuid.as_slice());
    // AMD guests learn SMT siblings and core ids only from leaf 0x8000001E, which they read
    // only with TOPOEXT set; the bit is pure information (KVM serves the leaf from this
    // table), so it is set whenever the leaf is in range, even where the host lacks it.
    let topoext = amd && ensure_leaf(cpuid, leaf::AMD_EXT_APIC_ID);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            leaf::FEATURES => {
                // Addressable logical processor ids per package.
                let addressable = (1u32 << socket_shift).min(0xff);
                entry.ebx = (entry.ebx & 0xff)
                    | (leaf::CLFLUSH_LINE_SIZE << 8)
                    | (addressable << 16)
                    | ((apic_id & 0xff) << 24);
                entry.ecx |= leaf::ECX_HYPERVISOR | leaf::ECX_TSC_DEADLINE;
                if logical > 1 {
                    entry.edx |= leaf::EDX_HTT;
                } else {
                    entry.edx &= !leaf::EDX_HTT;
                }
            }
            leaf::CACHE_PARAMS if entry.eax & 0x1f != 0 => {
                let cores_addressable = (1u32 << topology.core_bits()) - 1;
                let sharing = cache_sharing(entry.eax, topology);
                entry.eax = (entry.eax & 0x3fff)
                    | (sharing << leaf::CACHE_SHARING_SHIFT)
                    | (cores_addressable.min(0x3f) << 26);
            }
            leaf::AMD_EXT_FEATURES if amd => {
                if logical > 1 {
                    entry.ecx |= leaf::ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !leaf::ECX_CMP_LEGACY;
                }
                if topoext {
                    entry.ecx |= leaf::ECX_TOPOEXT;
                }
            }
            leaf::AMD_SIZES => {
                // NC (logical processors per package - 1) in bits 7:0, ApicIdCoreIdSize in
                // bits 15:12.
                entry.ecx =
                    (entry.ecx & !0xf0ff) | ((socket_shift & 0xf) << 12) | (logical - 1).min(0xff);
            }
            leaf::AMD_CACHE_TOPOLOGY if entry.eax & 0x1f != 0 => {
                let sharing = cache_sharing(entry.eax, topology);
                entry.eax = (entry.eax & !leaf::CACHE_SHARING_MASK)
                    | (sharing << leaf::CACHE_SHARING_SHIFT);
            }
            leaf::AMD_EXT_APIC_ID => {
                entry.eax = apic_id;
                // Compute unit (core) id in bits 7:0, threads per compute unit - 1 in 15:8.
                entry.ebx = (entry.ebx & !0xffff)
                    | (((topology.threads() - 1) & 0xff) << 8)
                    | (position.core & 0xff);
                // One node per socket: node id = socket, one node per processor.
                entry.ecx = (entry.ecx & !0x7ff) | (position.socket & 0xff);
            }
            _ => {}
        }
    }

    for topology_leaf in [leaf::EXT_TOPOLOGY, leaf::EXT_TOPOLOGY_V2] {
        if cpuid.as_slice().iter().any(|e| e.function == topology_leaf) {
            cpuid.retain(|e| e.function != topology_leaf);
            for entry in topology_entries(topology_leaf, apic_id, topology) {
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

/// Makes sure leaf `function` (an extended leaf, subleaf 0) has an entry: adds a zeroed
/// one when the maximum extended leaf covers it. Returns whether the leaf is there.
fn ensure_leaf(cpuid: &mut CpuId, function: u32) -> bool {
    let entries = cpuid.as_slice();
    if entries.iter().any(|e| e.function == function) {
        return true;
    }
    let max_extended = entries
        .iter()
        .find(|e| e.function == leaf::EXT_MAX)
        .map_or(0, |e| e.eax);
    if max_extended < function {
        return false;
    }
    let entry = kvm_cpuid_entry2 {
        function,
        ..Default::default()
    };
    match cpuid.push(entry) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                leaf = format_args!("{function:#x}"),
                ?err,
                "no room for a CPUID leaf"
            );
            false
        }
    }
}

/// Logical processors sharing a cache, minus one, for the cache described by a leaf 4 /
/// 0x8000001D `eax`: levels 1 and 2 belong to a core (its threads share them), level 3
/// and beyond to the socket. Counted in APIC-id space, so that masking an APIC id with
/// the sharing width finds the cache's owner.
fn cache_sharing(eax: u32, topology: &CpuTopology) -> u32 {
    let level = (eax >> 5) & 0x7;
    let bits = if level >= 3 {
        topology.socket_shift()
    } else {
        topology.thread_bits()
    };
    ((1u32 << bits) - 1).min(0xfff)
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

/// Subleaves 0 (SMT), 1 (core) and 2 (end marker) of leaf 0xB or 0x1F for the vCPU with
/// x2APIC id `apic_id`.
fn topology_entries(function: u32, apic_id: u32, topology: &CpuTopology) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, logical: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: logical,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        subleaf(
            0,
            topology.thread_bits(),
            topology.threads(),
            leaf::LEVEL_TYPE_SMT,
        ),
        subleaf(
            1,
            topology.socket_shift(),
            topology.logical_per_socket(),
            leaf::LEVEL_TYPE_CORE,
        ),
        subleaf(2, 0, 0, leaf::LEVEL_TYPE_INVALID),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A CPUID shaped like what KVM reports on an Intel host: leaf 4 with L1 and L3.
    fn intel_cpuid() -> CpuId {
        let mut l1 = entry(4, 0);
        l1.eax = 0x121 | (1 << 14) | (3 << 26);
        let mut l3 = entry(4, 3);
        l3.eax = 0x163 | (15 << 14) | (3 << 26);
        CpuId::from_entries(&[
            vendor_entry(b"GenuineIntel"),
            entry(1, 0),
            l1,
            l3,
            entry(4, 4),
            entry(0xb, 0),
            entry(0x1f, 0),
            entry(0x8000_0001, 0),
        ])
        .unwrap()
    }

    fn filtered(mut cpuid: CpuId, index: u32, topology: CpuTopology) -> CpuId {
        filter_cpuid(&mut cpuid, index, &topology);
        cpuid
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let cpuid = filtered(amd_cpuid(), 3, CpuTopology::flat(4));
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3, "initial APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical processor count");
        assert_eq!((leaf1.ebx >> 8) & 0xff, 8, "CLFLUSH line size / 8");
        assert_eq!(leaf1.ebx & 0xff, 0x42, "brand index kept");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor present");
        assert_ne!(leaf1.ecx & (1 << 24), 0, "TSC deadline");
        assert_ne!(leaf1.edx & (1 << 28), 0, "HTT with several vCPUs");

        let single = filtered(amd_cpuid(), 0, CpuTopology::flat(1));
        let leaf1 = find(&single, 1, 0);
        assert_eq!(leaf1.edx & (1 << 28), 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn one_vcpu_per_socket_has_no_htt_and_its_socket_in_the_apic_id() {
        let topology = CpuTopology::new(4, 1, 1).unwrap();
        let cpuid = filtered(amd_cpuid(), 2, topology);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!(
            leaf1.edx & (1 << 28),
            0,
            "one logical processor per package"
        );
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx), (0, 1), "a package of one");
        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!(ext.ecx & 0xff, 2, "node = socket");
        assert_eq!(find(&cpuid, 0x8000_0001, 0).ecx & 0b10, 0, "no CmpLegacy");
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        let cpuid = filtered(amd_cpuid(), 5, CpuTopology::flat(6));
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
    fn sockets_and_threads_shape_the_topology_levels() {
        // 2 sockets x 3 cores x 2 threads: thread bit 0, core bits 1-2, socket from bit 3.
        let topology = CpuTopology::new(2, 3, 2).unwrap();
        // vCPU 9: socket 1, core 1, thread 1 -> APIC id 0b1_01_1 = 11.
        let cpuid = filtered(intel_cpuid(), 9, topology);
        for function in [0xb, 0x1f] {
            let smt = find(&cpuid, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 11));
            let core = find(&cpuid, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 11));
        }
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 11);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 8, "addressable ids per package");
        assert_ne!(leaf1.edx & (1 << 28), 0);
        let l1 = find(&cpuid, 4, 0);
        assert_eq!(l1.eax >> 26, 3, "addressable core ids - 1");
        assert_eq!(
            (l1.eax >> 14) & 0xfff,
            1,
            "L1 shared by the core's 2 threads"
        );
        let l3 = find(&cpuid, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 7, "L3 shared by the socket");
    }

    #[test]
    fn amd_leaves_describe_the_cores() {
        let cpuid = filtered(amd_cpuid(), 2, CpuTopology::flat(4));
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 3, "NC = logical processors - 1");
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
    fn amd_threads_share_a_compute_unit_and_sockets_are_nodes() {
        // 2 sockets x 1 core x 2 threads: vCPU 3 is socket 1, core 0, thread 1.
        let cpuid = filtered(amd_cpuid(), 3, CpuTopology::new(2, 1, 2).unwrap());
        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!(ext.eax, 3);
        assert_eq!(ext.ebx & 0xff, 0, "core 0 of its socket");
        assert_eq!((ext.ebx >> 8) & 0xff, 1, "two threads per compute unit");
        assert_eq!(ext.ecx & 0x7ff, 1, "node 1, one node per processor");
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 1, "2 logical processors per package");
        assert_eq!((sizes.ecx >> 12) & 0xf, 1);
        let l1d = find(&cpuid, 0x8000_001d, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 1, "L1 shared by the two threads");
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (1, 2, 3));
    }

    #[test]
    fn amd_gets_topoext_and_the_extended_apic_leaf_even_when_kvm_left_it_out() {
        // What KVM reports where the host has no TOPOEXT (a TCG-emulated EPYC L1): the
        // extended leaves go up to 0x8000001E, but leaf 0x8000001E itself is missing.
        let mut max = entry(0x8000_0000, 0);
        max.eax = 0x8000_001e;
        let cpuid = CpuId::from_entries(&[
            vendor_entry(b"AuthenticAMD"),
            entry(1, 0),
            max,
            entry(0x8000_0001, 0),
        ])
        .unwrap();
        let cpuid = filtered(cpuid, 1, CpuTopology::new(2, 1, 2).unwrap());
        assert_ne!(find(&cpuid, 0x8000_0001, 0).ecx & (1 << 22), 0, "TOPOEXT");
        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (1, 0x100, 0));

        // Below the leaf's range nothing is added and TOPOEXT stays clear.
        let mut low = entry(0x8000_0000, 0);
        low.eax = 0x8000_0008;
        let cpuid =
            CpuId::from_entries(&[vendor_entry(b"AuthenticAMD"), low, entry(0x8000_0001, 0)])
                .unwrap();
        let cpuid = filtered(cpuid, 0, CpuTopology::flat(2));
        assert_eq!(find(&cpuid, 0x8000_0001, 0).ecx & (1 << 22), 0);
        assert!(!cpuid.as_slice().iter().any(|e| e.function == 0x8000_001e));
    }

    #[test]
    fn intel_leaf4_reports_cores_per_package() {
        let cpuid = filtered(intel_cpuid(), 0, CpuTopology::flat(2));
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
}
