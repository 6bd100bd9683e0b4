//! `dedicatedCpuPlacement` inside a launcher pod. A node whose kubelet runs the static CPU
//! manager policy gives a Guaranteed pod that asks for whole CPUs a cpuset of its own;
//! the launcher pins vCPU i to the i-th CPU of that set, as it pins to the CPUs the node
//! agent hands out in standalone mode. Anything else (a shared cpuset, too few CPUs) is
//! refused rather than pinning vCPUs onto CPUs other pods run on.

use ironvisor_launcher_api::cpulist;

/// Why the vCPUs cannot get CPUs of their own.
#[derive(Debug, thiserror::Error)]
pub enum DedicatedCpuError {
    /// The process's CPU set cannot be read.
    #[error("dedicatedCpuPlacement: cannot read the pod's CPU set: {0}")]
    Affinity(#[source] nix::Error),
    /// The pod's CPU set is not exactly one CPU per vCPU.
    #[error(
        "dedicatedCpuPlacement: the pod may run on CPUs {cpus} ({count}) but its {vcpus} vCPU(s) need exactly {vcpus} CPU(s) of their own; \
         the node's kubelet must run the static CPU manager policy (nodes labelled {label}=true) and the pod must be Guaranteed with whole CPUs"
    )]
    NotExclusive {
        /// The CPUs the pod may run on, as a CPU list.
        cpus: String,
        /// How many.
        count: usize,
        /// The VM's vCPUs.
        vcpus: u32,
        /// The node label that says the static policy runs.
        label: &'static str,
    },
}

impl DedicatedCpuError {
    /// CamelCase reason for the termination message.
    pub fn reason(&self) -> &'static str {
        "DedicatedCpusUnavailable"
    }
}

/// The launcher's `vcpu_affinity` for `vcpus` dedicated vCPUs, from the CPUs this
/// process may run on.
pub fn vcpu_affinity(vcpus: u32) -> Result<Vec<Vec<u32>>, DedicatedCpuError> {
    let allowed = cpulist::of_this_thread().map_err(DedicatedCpuError::Affinity)?;
    pin_one_to_one(vcpus, &allowed)
}

/// vCPU i on `allowed[i]` alone, when `allowed` has exactly one CPU per vCPU.
fn pin_one_to_one(vcpus: u32, allowed: &[u32]) -> Result<Vec<Vec<u32>>, DedicatedCpuError> {
    if allowed.len() != vcpus as usize {
        return Err(DedicatedCpuError::NotExclusive {
            cpus: cpulist::format(allowed),
            count: allowed.len(),
            vcpus,
            label: ironvisor_crds::cluster::NODE_LABEL_CPU_MANAGER,
        });
    }
    Ok(crate::cpus::one_to_one(allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_set_of_one_cpu_per_vcpu_pins_in_order() {
        assert_eq!(pin_one_to_one(2, &[3, 5]).unwrap(), vec![vec![3], vec![5]]);
    }

    #[test]
    fn a_shared_or_short_set_is_refused_naming_the_cpus_and_the_policy() {
        let error = pin_one_to_one(1, &[0, 1]).unwrap_err().to_string();
        assert!(error.contains("CPUs 0-1 (2)"), "{error}");
        assert!(error.contains("static CPU manager policy"), "{error}");
        assert!(error.contains("ironvisor.io/cpumanager=true"), "{error}");
        let short = pin_one_to_one(2, &[1]).unwrap_err().to_string();
        assert!(short.contains("2 vCPU(s) need exactly 2"), "{short}");
    }
}
