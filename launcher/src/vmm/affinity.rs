//! vCPU thread pinning (`vcpu_affinity`).
//!
//! A new thread inherits the CPU affinity of the thread that creates it, so the creating
//! thread takes on a vCPU's CPU set just long enough to spawn that vCPU's thread, then
//! goes back to its own. The vCPU thread is pinned before it runs a single instruction,
//! and a refused CPU set is an error of VM start-up, not of a running vCPU.

use ironvisor_launcher_api::cpulist;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Why a vCPU could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// The launcher's own CPU set could not be read.
    #[error("reading the launcher's CPU affinity: {0}")]
    Read(nix::Error),
    /// The vCPU asks for CPUs the launcher may not use.
    #[error(
        "vcpu_affinity[{vcpu}]: host CPUs {wanted} are not all available to the launcher \
         (it may run on CPUs {allowed})"
    )]
    NotAllowed {
        /// The vCPU.
        vcpu: u32,
        /// Its CPU list.
        wanted: String,
        /// The launcher's CPU list.
        allowed: String,
    },
    /// The kernel refused the CPU set.
    #[error("pinning vCPU {vcpu} to host CPUs {wanted}: {source}")]
    Set {
        /// The vCPU.
        vcpu: u32,
        /// Its CPU list.
        wanted: String,
        /// The error of sched_setaffinity.
        source: nix::Error,
    },
}

/// The CPU sets to spawn vCPU threads with, checked against the CPUs this thread may use.
pub struct VcpuPinning {
    /// The spawning thread's own set, restored after each spawn.
    original: CpuSet,
    /// One set per vCPU; empty when nothing is pinned.
    per_vcpu: Vec<CpuSet>,
    /// The CPU lists, for messages and logs.
    lists: Vec<String>,
}

impl VcpuPinning {
    /// Checks `affinity` (one CPU list per vCPU, or none) against the calling thread's
    /// CPU set.
    pub fn new(affinity: &[Vec<u32>]) -> Result<Self, AffinityError> {
        let original = sched_getaffinity(Pid::from_raw(0)).map_err(AffinityError::Read)?;
        let allowed = cpulist::of_cpu_set(&original);
        let mut per_vcpu = Vec::with_capacity(affinity.len());
        let mut lists = Vec::with_capacity(affinity.len());
        for (vcpu, cpus) in (0u32..).zip(affinity) {
            let wanted = cpulist::format(cpus);
            let mut set = CpuSet::new();
            for &cpu in cpus {
                let usable = allowed.binary_search(&cpu).is_ok();
                if !usable || set.set(cpu as usize).is_err() {
                    return Err(AffinityError::NotAllowed {
                        vcpu,
                        wanted,
                        allowed: cpulist::format(&allowed),
                    });
                }
            }
            per_vcpu.push(set);
            lists.push(wanted);
        }
        Ok(Self {
            original,
            per_vcpu,
            lists,
        })
    }

    /// The host CPUs vCPU `vcpu`'s thread is pinned to by [`Self::spawn_pinned`] (it
    /// inherits the set the spawning thread had); empty when it is not pinned.
    pub fn host_cpus(&self, vcpu: u32) -> Vec<u32> {
        usize::try_from(vcpu)
            .ok()
            .and_then(|i| self.per_vcpu.get(i))
            .map(cpulist::of_cpu_set)
            .unwrap_or_default()
    }

    /// Runs `spawn` (which starts vCPU `vcpu`'s thread) with the calling thread pinned
    /// to that vCPU's CPUs, then restores the calling thread's own set.
    pub fn spawn_pinned<T>(
        &self,
        vcpu: u32,
        spawn: impl FnOnce() -> T,
    ) -> Result<T, AffinityError> {
        let Some(set) = usize::try_from(vcpu)
            .ok()
            .and_then(|i| self.per_vcpu.get(i))
        else {
            return Ok(spawn());
        };
        let wanted = &self.lists[vcpu as usize];
        sched_setaffinity(Pid::from_raw(0), set).map_err(|source| AffinityError::Set {
            vcpu,
            wanted: wanted.clone(),
            source,
        })?;
        let spawned = spawn();
        if let Err(err) = sched_setaffinity(Pid::from_raw(0), &self.original) {
            tracing::warn!(%err, "restoring the launcher thread's CPU affinity failed");
        }
        tracing::info!(vcpu, host_cpus = %wanted, "vCPU thread pinned");
        Ok(spawned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cpus() -> Vec<u32> {
        cpulist::of_this_thread().unwrap()
    }

    #[test]
    fn a_spawned_thread_runs_on_its_cpus_and_the_spawner_keeps_its_own() {
        let before = own_cpus();
        let target = *before.last().unwrap();
        let pinning = VcpuPinning::new(&[vec![target]]).unwrap();
        let handle = pinning
            .spawn_pinned(0, || std::thread::spawn(own_cpus))
            .unwrap();
        assert_eq!(handle.join().unwrap(), vec![target]);
        assert_eq!(own_cpus(), before);
    }

    #[test]
    fn vcpus_without_an_entry_are_spawned_unpinned() {
        let before = own_cpus();
        let pinning = VcpuPinning::new(&[]).unwrap();
        let handle = pinning
            .spawn_pinned(0, || std::thread::spawn(own_cpus))
            .unwrap();
        assert_eq!(handle.join().unwrap(), before);
    }

    #[test]
    fn cpus_outside_the_launchers_set_are_refused_with_both_lists() {
        let allowed = own_cpus();
        let missing = (0..cpulist::MAX_CPUS)
            .find(|c| !allowed.contains(c))
            .unwrap();
        let err = VcpuPinning::new(&[vec![allowed[0]], vec![missing]])
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(message.contains("vcpu_affinity[1]"), "{message}");
        assert!(message.contains(&missing.to_string()), "{message}");
        assert!(message.contains(&cpulist::format(&allowed)), "{message}");
    }
}
