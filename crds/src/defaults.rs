//! KubeVirt-like defaults, applied before validation (like a mutating admission webhook).
//!
//! Every function here is pure and idempotent: applying defaults twice gives the same
//! object as applying them once. Defaults never hide a problem that validation reports:
//! for example, `running` is only turned into a `runStrategy` when `runStrategy` is absent,
//! so a manifest that sets both still fails validation.
//!
//! | field | default |
//! |---|---|
//! | `spec.runStrategy` | `Always` if `running: true`, `Halted` if `running: false` or both absent (`running` is then removed) |
//! | `domain.cpu` | `cores`, `sockets`, `threads` = 1 when unset |
//! | `domain.memory.guest` | `domain.resources.requests.memory`, else `limits.memory`, when `domain.memory` is absent (as KubeVirt) |
//! | `devices.disks[*]` | `disk: {bus: virtio}` when neither `disk` nor `cdrom` is set; `bus: virtio`; `cdrom.readonly: true` |
//! | `networks`, `interfaces` | when both are empty (and `autoattachPodInterface` is not false): a pod network and a masquerade interface named `default` |
//! | `interfaces[*]` binding | `masquerade` on a pod network, `bridge` on a Multus network, when neither is set |
//! | `terminationGracePeriodSeconds` | 30 (KubeVirt's `DefaultGracePeriodSeconds`) |
//! | `domain.features.hardwareIsolation` | `Preferred` |

use crate::v1alpha1::{
    Cpu, DiskBus, DiskTarget, Features, HardwareIsolation, Interface, InterfaceBridge,
    InterfaceMasquerade, Memory, Network, PodNetwork, RunStrategy, VirtualMachine,
    VirtualMachineInstance, VirtualMachineInstanceSpec,
};

/// Name of the pod network and interface added when an instance declares none.
pub const DEFAULT_NETWORK_NAME: &str = "default";
/// Default `terminationGracePeriodSeconds`, KubeVirt's `DefaultGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

/// Applies the defaults to a `VirtualMachine` and its instance template.
pub fn apply(vm: &mut VirtualMachine) {
    let spec = &mut vm.spec;
    if spec.run_strategy.is_none() {
        spec.run_strategy = Some(match spec.running.take() {
            Some(true) => RunStrategy::Always,
            Some(false) | None => RunStrategy::Halted,
        });
    }
    // What an instance type or preference gives is left for it (crate::instancetype),
    // which runs before the instance is defaulted again.
    let from_instancetype = spec.instancetype.is_some();
    let from_preference = spec.preference.is_some();
    apply_spec(
        &mut spec.template.spec,
        !from_instancetype,
        !from_preference,
    );
}

/// Applies the defaults to a `VirtualMachineInstance`.
pub fn apply_vmi(vmi: &mut VirtualMachineInstance) {
    apply_instance_spec(&mut vmi.spec);
}

/// Applies the defaults to an instance spec (of a VMI or of a VM template).
pub fn apply_instance_spec(spec: &mut VirtualMachineInstanceSpec) {
    apply_spec(spec, true, true);
}

fn apply_spec(spec: &mut VirtualMachineInstanceSpec, cpu: bool, grace_period: bool) {
    if cpu {
        apply_cpu(spec);
    }
    apply_memory(spec);
    apply_disks(spec);
    apply_networks(spec);
    if grace_period && spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    }
    let features = spec.domain.features.get_or_insert_with(Features::default);
    if features.hardware_isolation.is_none() {
        features.hardware_isolation = Some(HardwareIsolation::Preferred);
    }
}

fn apply_cpu(spec: &mut VirtualMachineInstanceSpec) {
    let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
    for factor in [&mut cpu.cores, &mut cpu.sockets, &mut cpu.threads] {
        if factor.is_none() {
            *factor = Some(1);
        }
    }
}

fn apply_memory(spec: &mut VirtualMachineInstanceSpec) {
    let domain = &mut spec.domain;
    if domain.memory.is_some() {
        return;
    }
    let requested = domain.resources.as_ref().and_then(|resources| {
        resources
            .requests
            .get("memory")
            .or_else(|| resources.limits.get("memory"))
    });
    if let Some(guest) = requested.cloned() {
        domain.memory = Some(Memory { guest });
    }
}

fn apply_disks(spec: &mut VirtualMachineInstanceSpec) {
    for disk in &mut spec.domain.devices.disks {
        if disk.disk.is_none() && disk.cdrom.is_none() {
            disk.disk = Some(DiskTarget::default());
        }
        if let Some(target) = &mut disk.disk {
            target.bus.get_or_insert(DiskBus::Virtio);
        }
        if let Some(cdrom) = &mut disk.cdrom {
            cdrom.bus.get_or_insert(DiskBus::Virtio);
            cdrom.readonly.get_or_insert(true);
        }
    }
}

fn apply_networks(spec: &mut VirtualMachineInstanceSpec) {
    let autoattach = spec.domain.devices.autoattach_pod_interface != Some(false);
    if autoattach && spec.networks.is_empty() && spec.domain.devices.interfaces.is_empty() {
        spec.networks.push(Network {
            name: DEFAULT_NETWORK_NAME.to_string(),
            pod: Some(PodNetwork {}),
            multus: None,
        });
        spec.domain.devices.interfaces.push(Interface {
            name: DEFAULT_NETWORK_NAME.to_string(),
            masquerade: Some(InterfaceMasquerade {}),
            ..Interface::default()
        });
        return;
    }
    for interface in &mut spec.domain.devices.interfaces {
        if interface.masquerade.is_some() || interface.bridge.is_some() {
            continue;
        }
        let network = spec.networks.iter().find(|n| n.name == interface.name);
        match network {
            Some(network) if network.pod.is_some() && network.multus.is_none() => {
                interface.masquerade = Some(InterfaceMasquerade {});
            }
            Some(network) if network.multus.is_some() && network.pod.is_none() => {
                interface.bridge = Some(InterfaceBridge {});
            }
            // No or an ambiguous network: validation reports it.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{
        CdRomTarget, Disk, MultusNetwork, ResourceRequirements, VirtualMachineInstanceTemplateSpec,
        VirtualMachineSpec,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn vm(running: Option<bool>, run_strategy: Option<RunStrategy>) -> VirtualMachine {
        VirtualMachine::new(
            "vm",
            VirtualMachineSpec {
                run_strategy,
                running,
                template: VirtualMachineInstanceTemplateSpec::default(),
                ..VirtualMachineSpec::default()
            },
        )
    }

    #[test]
    fn run_strategy_comes_from_running() {
        let cases = [
            (Some(true), None, Some(RunStrategy::Always), None),
            (Some(false), None, Some(RunStrategy::Halted), None),
            (None, None, Some(RunStrategy::Halted), None),
            (
                None,
                Some(RunStrategy::Manual),
                Some(RunStrategy::Manual),
                None,
            ),
            // Both set: left alone so that validation reports the conflict.
            (
                Some(true),
                Some(RunStrategy::Halted),
                Some(RunStrategy::Halted),
                Some(true),
            ),
        ];
        for (running, strategy, want_strategy, want_running) in cases {
            let mut vm = vm(running, strategy);
            apply(&mut vm);
            assert_eq!(
                vm.spec.run_strategy, want_strategy,
                "{running:?} {strategy:?}"
            );
            assert_eq!(vm.spec.running, want_running, "{running:?} {strategy:?}");
        }
    }

    #[test]
    fn empty_spec_gets_pod_network_cpu_grace_period_and_isolation() {
        let mut spec = VirtualMachineInstanceSpec::default();
        apply_instance_spec(&mut spec);
        assert_eq!(spec.networks.len(), 1);
        assert_eq!(spec.networks[0].name, "default");
        assert!(spec.networks[0].pod.is_some());
        let interfaces = &spec.domain.devices.interfaces;
        assert_eq!(interfaces.len(), 1);
        assert_eq!(interfaces[0].name, "default");
        assert!(interfaces[0].masquerade.is_some());
        assert_eq!(
            spec.domain.cpu,
            Some(Cpu {
                cores: Some(1),
                sockets: Some(1),
                threads: Some(1),
                dedicated_cpu_placement: None,
                model: None,
            })
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.domain.features.and_then(|f| f.hardware_isolation),
            Some(HardwareIsolation::Preferred)
        );
        // Without requests there is nothing to take memory from.
        assert!(spec.domain.memory.is_none());
    }

    #[test]
    fn autoattach_false_adds_no_network() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.autoattach_pod_interface = Some(false);
        apply_instance_spec(&mut spec);
        assert!(spec.networks.is_empty());
        assert!(spec.domain.devices.interfaces.is_empty());
    }

    #[test]
    fn partial_cpu_keeps_given_values() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.cpu = Some(Cpu {
            cores: Some(4),
            sockets: None,
            threads: None,
            dedicated_cpu_placement: None,
            model: None,
        });
        apply_instance_spec(&mut spec);
        assert_eq!(spec.vcpus(), 4);
        assert_eq!(spec.domain.cpu.and_then(|c| c.sockets), Some(1));
    }

    #[test]
    fn memory_comes_from_requests_only_when_absent() {
        let mut spec = VirtualMachineInstanceSpec::default();
        let mut resources = ResourceRequirements::default();
        resources
            .requests
            .insert("memory".into(), Quantity("256Mi".into()));
        spec.domain.resources = Some(resources);
        apply_instance_spec(&mut spec);
        assert_eq!(
            spec.domain.memory,
            Some(Memory {
                guest: Quantity("256Mi".into())
            })
        );

        spec.domain.memory = Some(Memory {
            guest: Quantity("1Gi".into()),
        });
        apply_instance_spec(&mut spec);
        assert_eq!(spec.domain.memory.map(|m| m.guest.0), Some("1Gi".into()));
    }

    #[test]
    fn memory_comes_from_limits_when_nothing_is_requested_as_kubevirt_does() {
        let mut spec = VirtualMachineInstanceSpec::default();
        let mut resources = ResourceRequirements::default();
        resources
            .limits
            .insert("memory".into(), Quantity("512Mi".into()));
        spec.domain.resources = Some(resources.clone());
        apply_instance_spec(&mut spec);
        assert_eq!(spec.domain.memory.map(|m| m.guest.0), Some("512Mi".into()));

        // A request wins over the limit.
        resources
            .requests
            .insert("memory".into(), Quantity("256Mi".into()));
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.resources = Some(resources);
        apply_instance_spec(&mut spec);
        assert_eq!(spec.domain.memory.map(|m| m.guest.0), Some("256Mi".into()));
    }

    #[test]
    fn disks_default_to_virtio() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.disks = vec![
            Disk {
                name: "root".into(),
                ..Disk::default()
            },
            Disk {
                name: "iso".into(),
                cdrom: Some(CdRomTarget::default()),
                ..Disk::default()
            },
            Disk {
                name: "data".into(),
                disk: Some(DiskTarget {
                    bus: Some(DiskBus::Sata),
                }),
                ..Disk::default()
            },
        ];
        apply_instance_spec(&mut spec);
        let disks = &spec.domain.devices.disks;
        assert_eq!(
            disks[0].disk,
            Some(DiskTarget {
                bus: Some(DiskBus::Virtio)
            })
        );
        assert!(disks[0].cdrom.is_none());
        assert_eq!(
            disks[1].cdrom,
            Some(CdRomTarget {
                bus: Some(DiskBus::Virtio),
                readonly: Some(true)
            })
        );
        assert!(disks[1].disk.is_none());
        // An explicit bus is kept (validation rejects it).
        assert_eq!(
            disks[2].disk.as_ref().and_then(|d| d.bus),
            Some(DiskBus::Sata)
        );
    }

    #[test]
    fn interface_binding_follows_network_kind() {
        let mut spec = VirtualMachineInstanceSpec {
            networks: vec![
                Network {
                    name: "pod".into(),
                    pod: Some(PodNetwork {}),
                    multus: None,
                },
                Network {
                    name: "storage".into(),
                    pod: None,
                    multus: Some(MultusNetwork {
                        network_name: "storage-net".into(),
                    }),
                },
            ],
            ..VirtualMachineInstanceSpec::default()
        };
        spec.domain.devices.interfaces = ["pod", "storage", "orphan"]
            .into_iter()
            .map(|name| Interface {
                name: name.into(),
                ..Interface::default()
            })
            .collect();
        apply_instance_spec(&mut spec);
        let interfaces = &spec.domain.devices.interfaces;
        assert!(interfaces[0].masquerade.is_some() && interfaces[0].bridge.is_none());
        assert!(interfaces[1].bridge.is_some() && interfaces[1].masquerade.is_none());
        assert!(interfaces[2].bridge.is_none() && interfaces[2].masquerade.is_none());
        assert_eq!(spec.networks.len(), 2, "no default network added");
    }

    #[test]
    fn apply_is_idempotent() {
        let mut once = vm(Some(true), None);
        once.spec.template.spec.domain.devices.disks.push(Disk {
            name: "root".into(),
            ..Disk::default()
        });
        apply(&mut once);
        let mut twice = once.clone();
        apply(&mut twice);
        assert_eq!(once, twice);

        let mut vmi = VirtualMachineInstance::new("i", VirtualMachineInstanceSpec::default());
        apply_vmi(&mut vmi);
        let again = {
            let mut copy = vmi.clone();
            apply_vmi(&mut copy);
            copy
        };
        assert_eq!(vmi, again);
    }
}
