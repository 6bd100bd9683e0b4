//! How a `VirtualMachine`'s template takes its instance type and preference, as KubeVirt
//! does when it creates the instance:
//!
//! - the instance type **sets** the vCPUs (shaped by the preference's
//!   `preferredCPUTopology`: sockets by default), `dedicatedCpuPlacement` and the guest
//!   memory; a template that sets any of them itself conflicts ([`conflicts`], refused
//!   when the VM is validated);
//! - the preference **fills** what the template leaves out: the disk bus and NIC model of
//!   devices that name none, a virtio-rng device, the bootloader of a VM without a kernel
//!   image, the clock and the grace period.
//!
//! Run [`expand`] on the template before [`crate::defaults`].

use crate::v1alpha1::{
    Bootloader, Cpu, EfiBootloader, Firmware, InstancetypeSpec, Memory, PreferenceSpec,
    VirtualMachine, VirtualMachineInstanceSpec,
};

/// Why the instance type or preference cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstancetypeError {
    /// The named object does not exist.
    #[error("{path}: {kind} {name:?} does not exist")]
    NotFound {
        /// `spec.instancetype.name` or `spec.preference.name`.
        path: &'static str,
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A preferred CPU topology this machine cannot shape.
    #[error("{path}: preferredCPUTopology {value:?} is not served: use sockets, cores or threads")]
    Topology {
        /// Where.
        path: String,
        /// What it says.
        value: String,
    },
}

/// The template fields the instance type sets, as paths, that `vm`'s template also sets.
pub fn conflicts(vm: &VirtualMachine) -> Vec<String> {
    if vm.spec.instancetype.is_none() {
        return Vec::new();
    }
    let domain = &vm.spec.template.spec.domain;
    let mut found = Vec::new();
    if let Some(cpu) = &domain.cpu {
        for (set, field) in [
            (cpu.sockets.is_some(), "sockets"),
            (cpu.cores.is_some(), "cores"),
            (cpu.threads.is_some(), "threads"),
            (
                cpu.dedicated_cpu_placement.is_some(),
                "dedicatedCpuPlacement",
            ),
        ] {
            if set {
                found.push(format!("spec.template.spec.domain.cpu.{field}"));
            }
        }
    }
    if domain.memory.is_some() {
        found.push("spec.template.spec.domain.memory.guest".into());
    }
    found
}

/// Applies `instancetype` (its name, for messages) and `preference` to `spec`.
pub fn expand(
    spec: &mut VirtualMachineInstanceSpec,
    instancetype: Option<&InstancetypeSpec>,
    preference: Option<(&str, &PreferenceSpec)>,
) -> Result<(), InstancetypeError> {
    if let Some(instancetype) = instancetype {
        let topology = preference
            .and_then(|(_, p)| p.cpu.as_ref())
            .and_then(|cpu| cpu.preferred_cpu_topology.as_deref());
        let (sockets, cores, threads) = shape(instancetype.cpu.guest, topology, preference)?;
        let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
        cpu.sockets = Some(sockets);
        cpu.cores = Some(cores);
        cpu.threads = Some(threads);
        cpu.dedicated_cpu_placement = instancetype.cpu.dedicated_cpu_placement;
        spec.domain.memory = Some(Memory {
            guest: instancetype.memory.guest.clone(),
        });
    }
    if let Some((_, preference)) = preference {
        fill(spec, preference);
    }
    Ok(())
}

/// (sockets, cores, threads) of `guest` vCPUs.
fn shape(
    guest: u32,
    topology: Option<&str>,
    preference: Option<(&str, &PreferenceSpec)>,
) -> Result<(u32, u32, u32), InstancetypeError> {
    match topology {
        None | Some("sockets" | "preferSockets") => Ok((guest, 1, 1)),
        Some("cores" | "preferCores") => Ok((1, guest, 1)),
        Some("threads" | "preferThreads") => Ok((1, 1, guest)),
        Some(other) => Err(InstancetypeError::Topology {
            path: format!(
                "{} {:?}: spec.cpu.preferredCPUTopology",
                crate::v1alpha1::CLUSTER_PREFERENCE_KIND,
                preference.map_or("", |(name, _)| name)
            ),
            value: other.to_string(),
        }),
    }
}

/// Fills what `spec` leaves out from `preference`.
fn fill(spec: &mut VirtualMachineInstanceSpec, preference: &PreferenceSpec) {
    if let Some(devices) = &preference.devices {
        if let Some(bus) = devices.preferred_disk_bus {
            for disk in &mut spec.domain.devices.disks {
                if let Some(cdrom) = &mut disk.cdrom {
                    cdrom.bus.get_or_insert(bus);
                } else if disk.lun.is_none() {
                    disk.disk
                        .get_or_insert_with(Default::default)
                        .bus
                        .get_or_insert(bus);
                }
            }
        }
        if let Some(model) = &devices.preferred_interface_model {
            for interface in &mut spec.domain.devices.interfaces {
                interface.model.get_or_insert_with(|| model.clone());
            }
        }
        if devices.preferred_rng.is_some() && spec.domain.devices.rng.is_none() {
            spec.domain.devices.rng = Some(Default::default());
        }
    }
    if let Some(preferred) = &preference.firmware {
        let firmware = spec.domain.firmware.get_or_insert_with(Firmware::default);
        let kernel_image = firmware
            .kernel_boot
            .as_ref()
            .is_some_and(|kernel| kernel.container.is_some());
        if firmware.bootloader.is_none() && !kernel_image {
            if preferred.preferred_use_efi == Some(true) {
                firmware.bootloader = Some(Bootloader {
                    bios: None,
                    efi: Some(EfiBootloader {
                        secure_boot: Some(preferred.preferred_use_secure_boot.unwrap_or(false)),
                        persistent: None,
                    }),
                });
            } else if preferred.preferred_use_bios == Some(true) {
                firmware.bootloader = Some(Bootloader {
                    bios: Some(Default::default()),
                    efi: None,
                });
            }
        }
    }
    if let Some(clock) = preference
        .clock
        .as_ref()
        .and_then(|clock| clock.preferred_clock_offset.clone())
    {
        spec.domain.clock.get_or_insert(clock);
    }
    if let Some(grace) = preference.preferred_termination_grace_period_seconds {
        spec.termination_grace_period_seconds.get_or_insert(grace);
    }
}
