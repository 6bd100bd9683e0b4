//! The KubeVirt corpus (`tests/kubevirt_corpus/`): every VM there, written for KubeVirt,
//! is refused as `kubevirt.io/v1` with the hint to change the apiVersion, and with only
//! that changed is decoded, defaulted and validated, each field where it lands.

use std::path::PathBuf;

use ironvisor_crds::v1alpha1::{RunStrategy, VirtualMachine};
use ironvisor_crds::{compat, defaults, parse_manifests, validate, Manifest};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/kubevirt_corpus")
}

fn corpus_text(name: &str) -> String {
    let path = corpus_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The corpus file with only its apiVersions changed, decoded.
fn decoded(name: &str) -> Vec<Manifest> {
    let text = corpus_text(name)
        .replace(
            "apiVersion: kubevirt.io/v1\n",
            "apiVersion: ironvisor.io/v1alpha1\n",
        )
        .replace(
            "apiVersion: instancetype.kubevirt.io/v1beta1\n",
            "apiVersion: ironvisor.io/v1alpha1\n",
        );
    parse_manifests(&text, name).unwrap_or_else(|e| panic!("{e}"))
}

/// The corpus file's VM (its last object), decoded, defaulted and validated.
fn accepted(name: &str) -> VirtualMachine {
    let mut manifests = decoded(name);
    let Some(Manifest::VirtualMachine(vm)) = manifests.pop() else {
        panic!("{name}: not one VirtualMachine");
    };
    let mut vm = *vm;
    defaults::apply(&mut vm);
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{name}: {errors}"));
    vm
}

#[test]
fn every_corpus_vm_names_the_api_version_to_change() {
    let mut names: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "devices-web.yaml",
            "exported-crm.yaml",
            "instancetype-app.yaml"
        ]
    );
    for name in &names {
        let error = parse_manifests(&corpus_text(name), name).unwrap_err();
        assert!(
            error.to_string().contains("ironvisor.io/v1alpha1"),
            "{name}: {error}"
        );
        accepted(name);
    }
}

#[test]
fn the_exported_vm_keeps_its_identity_memory_limit_sockets_and_time_zone() {
    let vm = accepted("exported-crm.yaml");
    assert_eq!(
        vm.metadata.uid.as_deref(),
        Some("0b5e1c2d-9a8f-4e7d-b6c5-4a3b2c1d0e9f")
    );
    assert_eq!(vm.status, None, "KubeVirt's status is ignored");
    let spec = &vm.spec.template.spec;
    let memory = spec.domain.memory.as_ref().expect("memory from the limit");
    assert_eq!(memory.guest.0, "256Mi");
    let cpu = spec.domain.cpu.as_ref().expect("cpu");
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(2), Some(1), Some(1))
    );
    let firmware = spec.domain.firmware.as_ref().expect("firmware");
    assert_eq!(firmware.serial.as_deref(), Some("CRM-0042"));
    // Asia/Kolkata has no daylight saving time: UTC+5:30 at any instant.
    let clock = spec.domain.clock.as_ref();
    assert_eq!(
        ironvisor_crds::clock::rtc_offset_seconds(clock, 1_796_385_600),
        Ok(19_800)
    );
    assert!(compat::mapped_settings(spec).is_empty());
}

#[test]
fn the_devices_vm_gets_rng_ports_threads_its_utc_offset_and_a_sata_warning() {
    let vm = accepted("devices-web.yaml");
    assert_eq!(
        vm.spec.run_strategy,
        Some(RunStrategy::Always),
        "running: true"
    );
    let spec = &vm.spec.template.spec;
    assert!(spec.domain.devices.rng.is_some());
    let cpu = spec.domain.cpu.as_ref().expect("cpu");
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(cpu.model.as_deref(), Some("host-passthrough"));
    let ports: Vec<_> = spec.domain.devices.interfaces[0]
        .ports
        .iter()
        .map(|port| (port.port, port.protocol_or_default()))
        .collect();
    assert_eq!(ports, [(80, "TCP"), (53, "UDP")]);
    let clock = spec.domain.clock.as_ref();
    assert_eq!(
        ironvisor_crds::clock::rtc_offset_seconds(clock, 0),
        Ok(-3600)
    );
    let mapped = compat::mapped_settings(spec);
    assert_eq!(mapped.len(), 1, "{mapped:?}");
    assert_eq!(mapped[0].reason, compat::DISK_BUS_MAPPED_REASON);
    assert!(
        mapped[0]
            .message
            .starts_with("disks rootdisk, tools ask for bus sata"),
        "{mapped:?}"
    );
}

#[test]
fn the_instancetype_vm_is_sized_and_completed_by_its_cluster_objects() {
    use ironvisor_crds::instancetype;
    use ironvisor_crds::v1alpha1::{ClockOffsetUtc, Rng};
    let mut manifests = decoded("instancetype-app.yaml");
    let Some(Manifest::VirtualMachine(vm)) = manifests.pop() else {
        panic!("the VM comes last");
    };
    let (Some(Manifest::ClusterPreference(preference)), Some(Manifest::ClusterInstancetype(size))) =
        (manifests.pop(), manifests.pop())
    else {
        panic!("an instance type, then a preference");
    };
    validate::instancetype(&size).unwrap_or_else(|e| panic!("{e}"));
    validate::preference(&preference).unwrap_or_else(|e| panic!("{e}"));
    let mut vm = *vm;
    defaults::apply(&mut vm);
    validate::vm(&vm).unwrap_or_else(|e| panic!("{e}"));
    let mut spec = vm.spec.template.spec.clone();
    instancetype::expand(
        &mut spec,
        Some(&size.spec),
        Some(("corpus.sockets", &preference.spec)),
    )
    .unwrap();
    defaults::apply_instance_spec(&mut spec);
    let cpu = spec.domain.cpu.clone().unwrap();
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(spec.domain.memory.map(|m| m.guest.0), Some("256Mi".into()));
    assert_eq!(spec.domain.devices.rng, Some(Rng {}));
    assert_eq!(
        spec.domain.clock.and_then(|c| c.utc),
        Some(ClockOffsetUtc {
            offset_seconds: Some(7200)
        })
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(20));
}
