//! Dedicated host CPUs for VMs with `spec.domain.cpu.dedicatedCpuPlacement: true`.
//!
//! The node's CPUs are those the daemon may run on. The lowest one stays shared (the
//! daemon, the launchers' own threads and everything else on the machine run there, as a
//! kubelet's reserved CPUs do) unless the node has a single CPU. Each dedicated VM takes
//! one free CPU per vCPU, pinned one-to-one; the CPUs are written into the instance's
//! launcher record in the same transaction that creates it, so two starts never take the
//! same CPU and a daemon restart knows which CPUs are in use. They are free again when the
//! record goes away with its instance.

use std::collections::BTreeSet;

use ironvisor_launcher_api::cpulist;

/// Why dedicated CPUs cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// The daemon's CPU set could not be read.
    #[error("reading the node agent's CPU affinity: {0}")]
    Affinity(nix::Error),
    /// Not enough free CPUs.
    #[error(
        "dedicatedCpuPlacement needs {wanted} dedicated host CPU(s), one per vCPU, but only \
         {free} of the node's dedicated-capable CPUs ({pool}) are free{shared}"
    )]
    NotEnough {
        /// vCPUs of the VM.
        wanted: u32,
        /// Free dedicated-capable CPUs.
        free: usize,
        /// The dedicated-capable CPUs, as a CPU list ("" when there are none).
        pool: String,
        /// A note about the shared CPU.
        shared: String,
    },
}

/// The host CPUs the node may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCpus {
    /// Every CPU the daemon may run on, sorted.
    online: Vec<u32>,
}

impl NodeCpus {
    /// The CPUs of the calling process.
    pub fn of_this_process() -> Result<Self, CpuError> {
        let online = cpulist::of_this_thread().map_err(CpuError::Affinity)?;
        Ok(Self { online })
    }

    /// A node with exactly these CPUs.
    pub fn from_list(cpus: &[u32]) -> Self {
        let set: BTreeSet<u32> = cpus.iter().copied().collect();
        Self {
            online: set.into_iter().collect(),
        }
    }

    /// The CPU kept shared, if any (the lowest, on nodes with more than one CPU).
    pub fn shared(&self) -> Option<u32> {
        if self.online.len() > 1 {
            self.online.first().copied()
        } else {
            None
        }
    }

    /// The CPUs that can be dedicated.
    pub fn pool(&self) -> Vec<u32> {
        let shared = self.shared();
        self.online
            .iter()
            .copied()
            .filter(|&c| Some(c) != shared)
            .collect()
    }

    /// `vcpus` free CPUs (lowest first), not in `taken`.
    pub fn pick(&self, vcpus: u32, taken: &BTreeSet<u32>) -> Result<Vec<u32>, CpuError> {
        let pool = self.pool();
        let free: Vec<u32> = pool
            .iter()
            .copied()
            .filter(|c| !taken.contains(c))
            .collect();
        let wanted = usize::try_from(vcpus).unwrap_or(usize::MAX);
        if free.len() < wanted {
            return Err(CpuError::NotEnough {
                wanted: vcpus,
                free: free.len(),
                pool: cpulist::format(&pool),
                shared: self
                    .shared()
                    .map(|c| format!("; CPU {c} stays shared for the node"))
                    .unwrap_or_default(),
            });
        }
        Ok(free[..wanted].to_vec())
    }
}

/// The launcher's `vcpu_affinity` for dedicated CPUs: vCPU i on `cpus[i]` alone.
pub fn one_to_one(cpus: &[u32]) -> Vec<Vec<u32>> {
    cpus.iter().map(|&c| vec![c]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_cpu_stays_shared_and_the_rest_are_handed_out_lowest_first() {
        let node = NodeCpus::from_list(&[0, 1, 2, 3]);
        assert_eq!(node.shared(), Some(0));
        assert_eq!(node.pick(2, &BTreeSet::new()).unwrap(), vec![1, 2]);
        let taken: BTreeSet<u32> = [1].into();
        assert_eq!(node.pick(2, &taken).unwrap(), vec![2, 3]);
    }

    #[test]
    fn a_single_cpu_node_can_dedicate_its_cpu() {
        let node = NodeCpus::from_list(&[5]);
        assert_eq!(node.shared(), None);
        assert_eq!(node.pick(1, &BTreeSet::new()).unwrap(), vec![5]);
    }

    #[test]
    fn too_few_free_cpus_is_refused_with_the_numbers() {
        let node = NodeCpus::from_list(&[0, 1]);
        let taken: BTreeSet<u32> = [1].into();
        let err = node.pick(1, &taken).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("needs 1 dedicated"), "{message}");
        assert!(message.contains("only 0"), "{message}");
        assert!(message.contains("(1)"), "{message}");
        assert!(message.contains("CPU 0 stays shared"), "{message}");
        assert!(node.pick(2, &BTreeSet::new()).is_err());
    }

    #[test]
    fn the_process_has_at_least_one_cpu_and_one_to_one_pins_each_vcpu() {
        let node = NodeCpus::of_this_process().unwrap();
        assert!(!node.online.is_empty());
        assert_eq!(one_to_one(&[3, 1]), vec![vec![3], vec![1]]);
    }
}
