//! Instance types and preferences: what a VM that names them gets, what it may not set
//! itself, and the refusals that name the field.

use ironvisor_crds::instancetype::{conflicts, expand, InstancetypeError};
use ironvisor_crds::v1alpha1::{
    InstancetypeCpu, InstancetypeMatcher, InstancetypeMemory, InstancetypeSpec, PreferenceCpu,
    PreferenceFirmware, PreferenceSpec, VirtualMachine, VirtualMachineInstanceSpec,
};
use ironvisor_crds::{defaults, parse_manifests, validate, Manifest};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn size(guest: u32) -> InstancetypeSpec {
    InstancetypeSpec {
        cpu: InstancetypeCpu {
            guest,
            dedicated_cpu_placement: None,
        },
        memory: InstancetypeMemory {
            guest: Quantity("1Gi".into()),
        },
    }
}

fn topology(value: &str) -> PreferenceSpec {
    PreferenceSpec {
        cpu: Some(PreferenceCpu {
            preferred_cpu_topology: Some(value.into()),
        }),
        ..PreferenceSpec::default()
    }
}

#[test]
fn the_preferred_topology_shapes_the_instance_types_vcpus() {
    for (preferred, shape) in [
        (None, (4, 1, 1)),
        (Some("preferCores"), (1, 4, 1)),
        (Some("threads"), (1, 1, 4)),
    ] {
        let preference = preferred.map(topology);
        let mut spec = VirtualMachineInstanceSpec::default();
        expand(
            &mut spec,
            Some(&size(4)),
            preference.as_ref().map(|p| ("p", p)),
        )
        .unwrap();
        let cpu = spec.domain.cpu.unwrap();
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(shape.0), Some(shape.1), Some(shape.2)),
            "{preferred:?}"
        );
        assert_eq!(spec.domain.memory.map(|m| m.guest.0), Some("1Gi".into()));
    }
    let error = expand(
        &mut VirtualMachineInstanceSpec::default(),
        Some(&size(4)),
        Some(("spready", &topology("spread"))),
    )
    .unwrap_err();
    assert!(
        matches!(error, InstancetypeError::Topology { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("\"spready\""), "{error}");
}

#[test]
fn the_preference_fills_only_what_the_vm_leaves_out() {
    let preference = PreferenceSpec {
        firmware: Some(PreferenceFirmware {
            preferred_use_efi: Some(true),
            ..PreferenceFirmware::default()
        }),
        preferred_termination_grace_period_seconds: Some(5),
        ..PreferenceSpec::default()
    };
    let mut spec = VirtualMachineInstanceSpec {
        termination_grace_period_seconds: Some(60),
        ..VirtualMachineInstanceSpec::default()
    };
    expand(&mut spec, None, Some(("p", &preference))).unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(60));
    let efi = spec
        .domain
        .firmware
        .and_then(|f| f.bootloader)
        .and_then(|b| b.efi)
        .unwrap();
    assert_eq!(efi.secure_boot, Some(false));
}

const VM: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: sized
spec:
  instancetype:
    name: u1.small
  template:
    spec:
      domain:
        devices:
          disks:
            - name: root
      volumes:
        - name: root
          containerDisk:
            image: ironvisor/rootfs:busybox
";

fn vm(text: &str) -> VirtualMachine {
    match parse_manifests(text, "vm.yaml").unwrap().pop() {
        Some(Manifest::VirtualMachine(vm)) => *vm,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_vm_with_an_instance_type_needs_no_memory_and_gets_no_default_cpu() {
    let mut vm = vm(VM);
    defaults::apply(&mut vm);
    validate::vm(&vm).unwrap_or_else(|e| panic!("{e}"));
    assert!(conflicts(&vm).is_empty());
    assert_eq!(vm.spec.template.spec.domain.cpu, None);
}

#[test]
fn template_sizes_namespaced_kinds_and_bad_names_are_refused_by_name() {
    let mut sized = vm(&VM.replace(
        "        devices:\n",
        "        cpu:\n          cores: 2\n        memory:\n          guest: 1Gi\n        devices:\n",
    ));
    sized.spec.preference = Some(InstancetypeMatcher {
        name: "Bad_Name".into(),
        kind: Some("VirtualMachinePreference".into()),
    });
    defaults::apply(&mut sized);
    let message = validate::vm(&sized).unwrap_err().to_string();
    for expected in [
        "spec.template.spec.domain.cpu.cores: the instance type sets it",
        "spec.template.spec.domain.memory.guest: the instance type sets it",
        "spec.preference.kind: kind \"VirtualMachinePreference\" is not served",
        "spec.preference.name: \"Bad_Name\" is not a valid name",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

#[test]
fn kubevirts_instance_type_api_version_gets_the_hint() {
    let text = "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\nmetadata:\n  name: u1.small\nspec:\n  cpu:\n    guest: 1\n  memory:\n    guest: 1Gi\n";
    let error = parse_manifests(text, "it.yaml").unwrap_err().to_string();
    assert!(
        error.contains("apiVersion: ironvisor.io/v1alpha1"),
        "{error}"
    );
}

#[test]
fn objects_with_no_vcpus_or_an_unserved_topology_are_refused_by_name() {
    let text = "apiVersion: ironvisor.io/v1alpha1\nkind: VirtualMachineClusterInstancetype\nmetadata:\n  name: u1.none\nspec:\n  cpu:\n    guest: 0\n  memory:\n    guest: 1Gi\n---\napiVersion: ironvisor.io/v1alpha1\nkind: VirtualMachineClusterPreference\nmetadata:\n  name: spread\nspec:\n  cpu:\n    preferredCPUTopology: spread\n";
    let manifests = parse_manifests(text, "objects.yaml").unwrap();
    let [Manifest::ClusterInstancetype(size), Manifest::ClusterPreference(preference)] =
        &manifests[..]
    else {
        panic!("{manifests:?}");
    };
    let message = validate::instancetype(size).unwrap_err().to_string();
    assert!(message.contains("spec.cpu.guest"), "{message}");
    let message = validate::preference(preference).unwrap_err().to_string();
    assert!(
        message.contains("spec.cpu.preferredCPUTopology: \"spread\" is not served"),
        "{message}"
    );
}
