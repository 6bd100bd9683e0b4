//! Every manifest under `examples/` decodes, defaults and validates.

use std::path::PathBuf;

use ironvisor_crds::v1alpha1::{HardwareIsolation, HostDiskType, RunStrategy};
use ironvisor_crds::{defaults, parse_manifests, validate, Manifest};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Decodes, defaults and validates one example file.
fn load(file_name: &str) -> Vec<Manifest> {
    let path = examples_dir().join(file_name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut manifests =
        parse_manifests(&text, file_name).unwrap_or_else(|e| panic!("{file_name}: {e}"));
    assert!(!manifests.is_empty(), "{file_name} has no manifest");
    for manifest in &mut manifests {
        match manifest {
            Manifest::VirtualMachine(vm) => {
                defaults::apply(vm);
                validate::vm(vm).unwrap_or_else(|e| panic!("{file_name}: {e}"));
            }
            Manifest::VirtualMachineInstance(vmi) => {
                defaults::apply_vmi(vmi);
                validate::vmi(vmi).unwrap_or_else(|e| panic!("{file_name}: {e}"));
            }
            Manifest::ClusterInstancetype(object) => {
                validate::instancetype(object).unwrap_or_else(|e| panic!("{file_name}: {e}"))
            }
            Manifest::ClusterPreference(object) => {
                validate::preference(object).unwrap_or_else(|e| panic!("{file_name}: {e}"))
            }
        }
    }
    manifests
}

fn single_vm(file_name: &str) -> ironvisor_crds::v1alpha1::VirtualMachine {
    match load(file_name).pop() {
        Some(Manifest::VirtualMachine(vm)) => *vm,
        other => panic!("{file_name}: expected one VirtualMachine, got {other:?}"),
    }
}

#[test]
fn every_example_is_valid() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("examples directory")
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    for required in [
        "vm-small.yaml",
        "vm-hostdisk.yaml",
        "vm-hardware-isolated.yaml",
        "vm-dedicated.yaml",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
    for name in &names {
        load(name);
    }
}

#[test]
fn vm_small_runs_always_with_container_disk_cloud_init_and_masquerade() {
    let vm = single_vm("vm-small.yaml");
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Always));
    let spec = &vm.spec.template.spec;
    assert!(spec.volumes.iter().any(|v| v.container_disk.is_some()));
    assert!(spec.volumes.iter().any(|v| v.cloud_init_no_cloud.is_some()));
    let interface = &spec.domain.devices.interfaces[0];
    assert!(interface.masquerade.is_some());
    assert!(spec.networks[0].pod.is_some());
    assert_eq!(spec.hardware_isolation(), HardwareIsolation::Preferred);
}

#[test]
fn vm_hostdisk_is_manual_with_host_and_empty_disks() {
    let vm = single_vm("vm-hostdisk.yaml");
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Manual));
    let spec = &vm.spec.template.spec;
    let host_types: Vec<HostDiskType> = spec
        .volumes
        .iter()
        .filter_map(|v| v.host_disk.as_ref().map(|h| h.type_))
        .collect();
    assert_eq!(host_types, [HostDiskType::Disk, HostDiskType::DiskOrCreate]);
    assert!(spec.volumes.iter().any(|v| v.empty_disk.is_some()));
    // Memory defaulted from requests, network defaulted to the pod network.
    assert_eq!(
        spec.domain.memory.as_ref().map(|m| m.guest.0.as_str()),
        Some("512Mi")
    );
    assert_eq!(spec.networks.len(), 1);
    assert_eq!(spec.vcpus(), 2);
}

#[test]
fn vm_dedicated_is_the_small_vm_with_a_dedicated_cpu() {
    let dedicated = single_vm("vm-dedicated.yaml");
    let small = single_vm("vm-small.yaml");
    let spec = &dedicated.spec.template.spec;
    assert!(spec.dedicated_cpu_placement());
    assert!(!small.spec.template.spec.dedicated_cpu_placement());
    assert_eq!(spec.vcpus(), 1);
    // Otherwise the same machine: disks, network and memory.
    assert_eq!(spec.volumes.len(), small.spec.template.spec.volumes.len());
    assert_eq!(spec.domain.memory, small.spec.template.spec.domain.memory);
    assert_eq!(spec.networks, small.spec.template.spec.networks);
}

#[test]
fn vm_hardware_isolated_requires_hardware() {
    let vm = single_vm("vm-hardware-isolated.yaml");
    assert_eq!(
        vm.spec.template.spec.hardware_isolation(),
        HardwareIsolation::Required
    );
}

#[test]
fn examples_only_differ_from_kubevirt_in_api_version() {
    // The same text with KubeVirt's apiVersion is refused with the hint, nothing else.
    let path = examples_dir().join("vm-small.yaml");
    let text = std::fs::read_to_string(path).expect("vm-small.yaml");
    let kubevirt = text.replace("ironvisor.io/v1alpha1", "kubevirt.io/v1");
    let error = parse_manifests(&kubevirt, "vm-small.yaml").unwrap_err();
    assert!(
        error.to_string().contains("change the apiVersion line"),
        "{error}"
    );
}

/// A manifest in KubeVirt's usual style (deprecated `running`, memory only in requests,
/// `creationTimestamp: null` in the template, keys in any order) needs only the
/// apiVersion changed.
#[test]
fn kubevirt_shaped_manifest_works_after_changing_api_version() {
    let kubevirt = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  labels:
    kubevirt.io/vm: demo
  name: demo
spec:
  running: false
  template:
    metadata:
      creationTimestamp: null
      labels:
        kubevirt.io/vm: demo
    spec:
      domain:
        devices:
          disks:
          - disk:
              bus: virtio
            name: containerdisk
          - disk:
              bus: virtio
            name: cloudinitdisk
        resources:
          requests:
            memory: 128Mi
      terminationGracePeriodSeconds: 0
      volumes:
      - containerDisk:
          image: registry:5000/demo/disk:devel
        name: containerdisk
      - cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo hello
        name: cloudinitdisk
";
    assert!(parse_manifests(kubevirt, "demo.yaml").is_err());
    let ours = kubevirt.replace("kubevirt.io/v1", "ironvisor.io/v1alpha1");
    let Some(Manifest::VirtualMachine(vm)) = parse_manifests(&ours, "demo.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .pop()
    else {
        panic!("a VirtualMachine");
    };
    let mut vm = *vm;
    defaults::apply(&mut vm);
    validate::vm(&vm).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    assert_eq!(vm.spec.running, None);
    assert_eq!(
        vm.spec.template.spec.domain.memory.map(|m| m.guest.0),
        Some("128Mi".to_string())
    );
}
