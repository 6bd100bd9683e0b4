//! How a VM's vCPUs are arranged into sockets, cores and threads, and the x2APIC-style
//! APIC ids that encode it.
//!
//! vCPU indices count threads first, then cores, then sockets (vCPU 1 of a 2-thread core
//! is that core's second thread). An APIC id is the concatenation of the socket, core and
//! thread numbers, each field as wide as its count needs (`ceil(log2(count))` bits), which
//! is what CPUID leaves 0xB/0x1F and 0x80000008 describe to the guest. The ids are dense
//! when every count is a power of two and have gaps otherwise, as on real hardware.

/// Highest APIC id an xAPIC MADT entry (and KVM's default xAPIC mode) can carry; 0xFF is
/// the broadcast id.
pub const MAX_XAPIC_ID: u32 = 254;

/// Sockets × cores per socket × threads per core; every count at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    sockets: u32,
    cores: u32,
    threads: u32,
}

/// Where one vCPU sits in a [`CpuTopology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPosition {
    /// Socket (package) number.
    pub socket: u32,
    /// Core number inside the socket.
    pub core: u32,
    /// Thread number inside the core.
    pub thread: u32,
}

impl CpuTopology {
    /// A topology of `sockets` × `cores` × `threads`; `None` when a count is 0 or the
    /// product overflows.
    pub fn new(sockets: u32, cores: u32, threads: u32) -> Option<Self> {
        let topology = Self {
            sockets,
            cores,
            threads,
        };
        let valid = sockets > 0
            && cores > 0
            && threads > 0
            && sockets
                .checked_mul(cores)
                .and_then(|n| n.checked_mul(threads))
                .is_some();
        valid.then_some(topology)
    }

    /// `vcpus` single-threaded cores in one socket (the layout of a VM that names no
    /// topology).
    pub fn flat(vcpus: u32) -> Self {
        Self {
            sockets: 1,
            cores: vcpus.max(1),
            threads: 1,
        }
    }

    /// Number of sockets.
    pub fn sockets(&self) -> u32 {
        self.sockets
    }

    /// Cores per socket.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Threads per core.
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// Total vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }

    /// Logical processors in one socket (cores × threads).
    pub fn logical_per_socket(&self) -> u32 {
        self.cores * self.threads
    }

    /// Width of the thread field of an APIC id.
    pub fn thread_bits(&self) -> u32 {
        id_bits(self.threads)
    }

    /// Width of the core field of an APIC id.
    pub fn core_bits(&self) -> u32 {
        id_bits(self.cores)
    }

    /// Right shift of an APIC id that leaves its socket number (thread + core bits).
    pub fn socket_shift(&self) -> u32 {
        self.thread_bits() + self.core_bits()
    }

    /// Where vCPU `index` sits.
    pub fn position(&self, index: u32) -> CpuPosition {
        CpuPosition {
            socket: index / self.logical_per_socket(),
            core: (index / self.threads) % self.cores,
            thread: index % self.threads,
        }
    }

    /// The APIC id of vCPU `index`.
    pub fn apic_id(&self, index: u32) -> u32 {
        let at = self.position(index);
        (at.socket << self.socket_shift()) | (at.core << self.thread_bits()) | at.thread
    }

    /// The APIC id of the last vCPU, the highest of all.
    pub fn max_apic_id(&self) -> u32 {
        self.apic_id(self.vcpus() - 1)
    }
}

/// Bits needed to number `count` items (`ceil(log2(count))`; 0 for one item).
pub fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_counts_and_overflow_are_refused() {
        assert!(CpuTopology::new(0, 1, 1).is_none());
        assert!(CpuTopology::new(1, 0, 1).is_none());
        assert!(CpuTopology::new(1, 1, 0).is_none());
        assert!(CpuTopology::new(u32::MAX, 2, 1).is_none());
        assert_eq!(CpuTopology::new(2, 3, 2).map(|t| t.vcpus()), Some(12));
    }

    #[test]
    fn flat_topology_numbers_cores_like_indices() {
        let flat = CpuTopology::flat(4);
        assert_eq!((flat.sockets(), flat.cores(), flat.threads()), (1, 4, 1));
        assert_eq!(
            (0..4).map(|i| flat.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(CpuTopology::flat(0).vcpus(), 1);
    }

    #[test]
    fn threads_count_first_then_cores_then_sockets() {
        let topology = CpuTopology::new(2, 1, 2).unwrap();
        let positions: Vec<_> = (0..4)
            .map(|i| {
                let p = topology.position(i);
                (p.socket, p.core, p.thread)
            })
            .collect();
        assert_eq!(positions, [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]);
        assert_eq!(
            (0..4).map(|i| topology.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!((topology.thread_bits(), topology.core_bits()), (1, 0));
    }

    #[test]
    fn counts_that_are_not_powers_of_two_leave_gaps_in_the_apic_ids() {
        // 3 cores need 2 bits, 3 threads need 2 bits: socket 1 starts at id 16.
        let topology = CpuTopology::new(2, 3, 3).unwrap();
        assert_eq!(topology.socket_shift(), 4);
        assert_eq!(topology.apic_id(0), 0);
        assert_eq!(topology.apic_id(2), 2, "third thread of core 0");
        assert_eq!(topology.apic_id(3), 4, "first thread of core 1");
        assert_eq!(topology.apic_id(9), 16, "first thread of socket 1");
        assert_eq!(topology.max_apic_id(), 16 | (2 << 2) | 2);
        let ids: std::collections::BTreeSet<_> = (0..18).map(|i| topology.apic_id(i)).collect();
        assert_eq!(ids.len(), 18, "ids are unique");
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        let bits: Vec<u32> = [1, 2, 3, 4, 5, 8, 9].map(id_bits).to_vec();
        assert_eq!(bits, [0, 1, 2, 2, 3, 3, 4]);
    }
}
