//! A VM in the shape KubeVirt exports (`kubectl get vm -o yaml` on a KubeVirt cluster),
//! with only its apiVersion changed: everything KubeVirt's webhook and API server wrote
//! into it is accepted, the fields with a meaning here take effect, and the ones that
//! cannot be served are refused by name.

use ironvisor_crds::v1alpha1::VirtualMachine;
use ironvisor_crds::{defaults, parse_manifests, validate, DecodeError, Manifest};

/// Written for this project in the shape of a KubeVirt export.
const EXPORTED: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  annotations:
    kubevirt.io/latest-observed-api-version: v1
    kubevirt.io/storage-observed-api-version: v1
  creationTimestamp: \"2026-11-30T09:14:02Z\"
  finalizers:
    - kubevirt.io/virtualMachineControllerFinalize
  generation: 3
  labels:
    app: legacy-crm
  name: legacy-crm
  namespace: apps
  resourceVersion: \"918273\"
  uid: 0b5e1c2d-9a8f-4e7d-b6c5-4a3b2c1d0e9f
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        kubevirt.io/domain: legacy-crm
    spec:
      architecture: amd64
      domain:
        cpu:
          cores: 2
        firmware:
          serial: CRM-0042
          uuid: 6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab
        machine:
          type: pc-q35-rhel9.4.0
        resources:
          limits:
            memory: 768Mi
        devices:
          disks:
            - name: root
              disk:
                bus: virtio
      volumes:
        - name: root
          containerDisk:
            image: ironvisor/rootfs:busybox
status:
  created: true
  desiredGeneration: 3
  observedGeneration: 3
  printableStatus: Running
  ready: true
  runStrategy: Always
  volumeSnapshotStatuses:
    - enabled: false
      name: root
      reason: Snapshot is not supported for this volumeSource type [root]
";

fn decode(text: &str) -> Result<VirtualMachine, DecodeError> {
    let mut manifests = parse_manifests(text, "exported.yaml")?;
    match manifests.pop() {
        Some(Manifest::VirtualMachine(vm)) => Ok(*vm),
        other => panic!("not one VM: {other:?}"),
    }
}

fn defaulted(text: &str) -> VirtualMachine {
    let mut vm = decode(text).unwrap_or_else(|error| panic!("{error}"));
    defaults::apply(&mut vm);
    vm
}

fn refusal(text: &str) -> String {
    let vm = defaulted(text);
    validate::vm(&vm)
        .expect_err("the VM was accepted")
        .to_string()
}

#[test]
fn an_exported_vm_is_accepted_with_its_server_fields_and_kubevirt_status() {
    let vm = defaulted(EXPORTED);
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(
        vm.metadata.uid.as_deref(),
        Some("0b5e1c2d-9a8f-4e7d-b6c5-4a3b2c1d0e9f")
    );
    assert_eq!(vm.metadata.generation, Some(3));
    // KubeVirt's status means nothing here: ignored, as on apply.
    assert_eq!(vm.status, None);
    let spec = &vm.spec.template.spec;
    assert_eq!(spec.architecture.as_deref(), Some("amd64"));
    let firmware = spec.domain.firmware.as_ref().expect("firmware");
    assert_eq!(
        firmware.uuid.as_deref(),
        Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab")
    );
    assert_eq!(firmware.serial.as_deref(), Some("CRM-0042"));
}

#[test]
fn memory_comes_from_the_limit_and_the_grace_period_is_kubevirts() {
    let vm = defaulted(EXPORTED);
    let spec = &vm.spec.template.spec;
    assert_eq!(
        spec.domain.memory.as_ref().map(|m| m.guest.0.as_str()),
        Some("768Mi")
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
}

#[test]
fn another_architecture_is_refused_by_name() {
    let message = refusal(&EXPORTED.replace("architecture: amd64", "architecture: arm64"));
    assert!(
        message.contains("spec.template.spec.architecture: architecture \"arm64\" is not served"),
        "{message}"
    );
}

#[test]
fn a_machine_type_outside_q35_is_refused_by_name() {
    let message = refusal(&EXPORTED.replace("pc-q35-rhel9.4.0", "pc-i440fx-2.12"));
    assert!(
        message.contains(
            "spec.template.spec.domain.machine.type: machine type \"pc-i440fx-2.12\" is not served"
        ),
        "{message}"
    );
}

#[test]
fn a_malformed_firmware_uuid_or_serial_is_refused_by_name() {
    let text = EXPORTED
        .replace(
            "uuid: 6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab",
            "uuid: not-a-uuid",
        )
        .replace("serial: CRM-0042", "serial: \"tab\\there\"");
    let message = refusal(&text);
    assert!(
        message.contains("spec.template.spec.domain.firmware.uuid: \"not-a-uuid\" is not a UUID"),
        "{message}"
    );
    assert!(
        message
            .contains("spec.template.spec.domain.firmware.serial: serial \"tab\\there\" must be"),
        "{message}"
    );
}

#[test]
fn every_unknown_field_is_reported_in_one_pass_with_its_line() {
    let text = EXPORTED
        .replace(
            "        cpu:\n          cores: 2\n",
            "        cpu:\n          cores: 2\n          modell: x\n          numaa: {}\n",
        )
        .replace(
            "  runStrategy: Always\n  template:",
            "  runStrategy: Always\n  dataVolumeTemplatess: []\n  template:",
        );
    let error = decode(&text).expect_err("unknown fields were accepted");
    let DecodeError::UnknownField { path, more, .. } = &error else {
        panic!("not an unknown field: {error}");
    };
    let mut all: Vec<&str> = std::iter::once(path.as_str())
        .chain(more.0.iter().map(|field| field.path.as_str()))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        [
            "spec.dataVolumeTemplatess",
            "spec.template.spec.domain.cpu.modell",
            "spec.template.spec.domain.cpu.numaa",
        ],
        "{error}"
    );
    // Each one on its own line of the message, with its own line number.
    let text = error.to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().all(|line| line.starts_with("exported.yaml:")),
        "{text}"
    );
}

/// The export with the devices and features KubeVirt users write.
fn with_devices_and_features() -> String {
    EXPORTED
        .replace(
            "        cpu:\n          cores: 2\n",
            "        cpu:\n          cores: 2\n          model: host-passthrough\n        features:\n          acpi: {}\n          apic: {}\n          smm:\n            enabled: false\n",
        )
        .replace(
            "        devices:\n          disks:\n            - name: root\n              disk:\n                bus: virtio\n",
            "        devices:\n          autoattachSerialConsole: true\n          rng: {}\n          disks:\n            - name: root\n              disk:\n                bus: sata\n",
        )
}

#[test]
fn rng_host_cpu_models_features_and_sata_disks_are_accepted() {
    let text = with_devices_and_features();
    let vm = defaulted(&text);
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{errors}"));
    let spec = &vm.spec.template.spec;
    assert!(spec.domain.devices.rng.is_some());
    assert_eq!(
        spec.domain
            .cpu
            .as_ref()
            .and_then(|cpu| cpu.model.as_deref()),
        Some("host-passthrough")
    );
    // The SATA disk runs as virtio-blk, and a warning says so.
    let mapped = ironvisor_crds::compat::mapped_settings(spec);
    assert_eq!(mapped.len(), 1, "{mapped:?}");
    assert!(
        mapped[0].message.contains("disks root ask for bus sata"),
        "{mapped:?}"
    );
}

#[test]
fn what_the_microvm_cannot_serve_is_refused_by_name() {
    let text = with_devices_and_features()
        .replace("model: host-passthrough", "model: Skylake-Server")
        .replace(
            "autoattachSerialConsole: true",
            "autoattachSerialConsole: false",
        )
        .replace(
            "          acpi: {}\n",
            "          acpi:\n            enabled: false\n",
        )
        .replace(
            "          smm:\n            enabled: false\n",
            "          smm: {}\n",
        )
        .replace(
            "              disk:\n                bus: sata\n",
            "              lun: {}\n",
        );
    let message = refusal(&text);
    let domain = "spec.template.spec.domain";
    for expected in [
        format!("{domain}.cpu.model: CPU model \"Skylake-Server\" is not served"),
        format!("{domain}.devices.autoattachSerialConsole: the serial console cannot be left out"),
        format!("{domain}.features.acpi.enabled: acpi cannot be disabled"),
        format!("{domain}.features.smm: SMM is not emulated"),
        format!("{domain}.devices.disks[0].lun: lun disks (SCSI passthrough) are not served"),
    ] {
        assert!(
            message.contains(&expected),
            "{expected:?} not in:\n{message}"
        );
    }
}

/// The export with one masquerade interface on the pod network.
fn with_interface(interface: &str) -> String {
    EXPORTED
        .replace(
            "        devices:\n          disks:\n",
            &format!("        devices:\n          interfaces:\n{interface}          disks:\n"),
        )
        .replace(
            "      volumes:\n",
            "      networks:\n        - name: default\n          pod: {}\n      volumes:\n",
        )
}

#[test]
fn masquerade_ports_and_the_virtio_model_are_accepted() {
    let text = with_interface(
        "            - name: default\n              model: virtio\n              masquerade: {}\n              ports:\n                - name: http\n                  port: 80\n                - port: 53\n                  protocol: UDP\n",
    );
    let vm = defaulted(&text);
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{errors}"));
    let interface = &vm.spec.template.spec.domain.devices.interfaces[0];
    assert_eq!(interface.ports.len(), 2);
    assert_eq!(interface.ports[0].protocol_or_default(), "TCP");
    assert_eq!(interface.ports[1].protocol_or_default(), "UDP");
}

#[test]
fn bad_ports_other_nic_models_and_ports_on_bridge_are_refused_by_name() {
    let text = with_interface(
        "            - name: default\n              model: e1000\n              masquerade: {}\n              ports:\n                - port: 0\n                - port: 70000\n                - port: 22\n                  protocol: SCTP\n                - port: 8080\n                - port: 8080\n                  protocol: TCP\n",
    );
    let message = refusal(&text);
    let interface = "spec.template.spec.domain.devices.interfaces[0]";
    for expected in [
        format!("{interface}.model: NIC model \"e1000\" is not served"),
        format!("{interface}.ports[0].port: port 0 is not between 1 and 65535"),
        format!("{interface}.ports[1].port: port 70000 is not between 1 and 65535"),
        format!("{interface}.ports[2].protocol: protocol \"SCTP\" is not served"),
        format!("{interface}.ports[4].port: TCP port 8080 is listed twice (first at {interface}.ports[3])"),
    ] {
        assert!(message.contains(&expected), "{expected:?} not in:\n{message}");
    }
    let bridge = with_interface(
        "            - name: default\n              bridge: {}\n              ports:\n                - port: 80\n",
    );
    let message = refusal(&bridge);
    assert!(
        message.contains(&format!(
            "{interface}.ports: ports are forwarded by the masquerade binding only"
        )),
        "{message}"
    );
}

/// The export with a topology of sockets and threads and `clock` (the block is indented
/// for `domain:`).
fn with_topology_and_clock(clock: &str) -> String {
    EXPORTED.replace(
        "        cpu:\n          cores: 2\n",
        &format!(
            "        cpu:\n          sockets: 2\n          cores: 1\n          threads: 2\n{clock}"
        ),
    )
}

#[test]
fn topology_timezones_utc_offsets_and_the_timers_the_microvm_has_are_accepted() {
    let timezone = "        clock:\n          timezone: Asia/Kolkata\n";
    let vm = defaulted(&with_topology_and_clock(timezone));
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{errors}"));
    let spec = &vm.spec.template.spec;
    let cpu = spec.domain.cpu.as_ref().expect("cpu");
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(2), Some(1), Some(2))
    );
    let clock = spec.domain.clock.as_ref();
    assert_eq!(
        ironvisor_crds::clock::rtc_offset_seconds(clock, 0),
        Ok(19_800)
    );

    let utc = "        clock:\n          utc:\n            offsetSeconds: -600\n          timer:\n            hpet:\n              present: false\n            kvm: {}\n            pit:\n              present: true\n            rtc: {}\n            hyperv:\n              present: false\n";
    let vm = defaulted(&with_topology_and_clock(utc));
    validate::vm(&vm).unwrap_or_else(|errors| panic!("{errors}"));
    let clock = vm.spec.template.spec.domain.clock.as_ref();
    assert_eq!(
        ironvisor_crds::clock::rtc_offset_seconds(clock, 0),
        Ok(-600)
    );
}

#[test]
fn clocks_and_timers_the_microvm_cannot_keep_are_refused_by_name() {
    let clock = "        clock:\n          utc: {}\n          timezone: Europe/Berlin\n          timer:\n            hpet: {}\n            kvm:\n              present: false\n            rtc:\n              tickPolicy: catchup\n              track: guest\n            hyperv: {}\n";
    let message = refusal(&with_topology_and_clock(clock));
    let clock_path = "spec.template.spec.domain.clock";
    for expected in [
        format!("{clock_path}: utc and timezone are both set"),
        format!("{clock_path}.timer.hpet.present: the microVM has no HPET"),
        format!("{clock_path}.timer.kvm.present: the microVM always gives the guest its kvm timer"),
        format!("{clock_path}.timer.rtc.tickPolicy: tick policy \"catchup\" is not served"),
        format!("{clock_path}.timer.rtc.track: track \"guest\" is not served"),
        format!("{clock_path}.timer.hyperv.present: the microVM has no Hyper-V"),
    ] {
        assert!(
            message.contains(&expected),
            "{expected:?} not in:\n{message}"
        );
    }

    let unknown = "        clock:\n          timezone: Atlantis/Capital\n";
    let message = refusal(&with_topology_and_clock(unknown));
    assert!(
        message.contains(&format!(
            "{clock_path}.timezone: unknown time zone \"Atlantis/Capital\""
        )),
        "{message}"
    );
    let malformed = "        clock:\n          timezone: ../../etc/shadow\n";
    let message = refusal(&with_topology_and_clock(malformed));
    assert!(
        message.contains(&format!(
            "{clock_path}.timezone: \"../../etc/shadow\" is not a time zone name"
        )),
        "{message}"
    );
}

fn with_bootloader(bootloader: &str) -> String {
    EXPORTED.replace(
        "          serial: CRM-0042\n",
        &format!("          serial: CRM-0042\n          bootloader:\n{bootloader}"),
    )
}

#[test]
fn bios_and_efi_without_secure_boot_are_accepted() {
    for bootloader in [
        "            bios: {}\n",
        "            bios:\n              useSerial: true\n",
        "            efi:\n              secureBoot: false\n",
        "            efi:\n              secureBoot: false\n              persistent: false\n",
    ] {
        let vm = defaulted(&with_bootloader(bootloader));
        if let Err(error) = validate::vm(&vm) {
            panic!("{bootloader}: {error}");
        }
    }
}

#[test]
fn secure_boot_persistent_variables_and_two_firmwares_are_refused_by_name() {
    const AT: &str = "spec.template.spec.domain.firmware.bootloader";
    for (bootloader, path, why) in [
        (
            "            efi: {}\n",
            "efi.secureBoot",
            "set secureBoot: false",
        ),
        (
            "            efi:\n              secureBoot: true\n",
            "efi.secureBoot",
            "Secure Boot is not served",
        ),
        (
            "            efi:\n              secureBoot: false\n              persistent: true\n",
            "efi.persistent",
            "persistent UEFI variables are not served",
        ),
        (
            "            bios: {}\n            efi:\n              secureBoot: false\n",
            "",
            "set exactly one of bios and efi",
        ),
        ("            {}\n", "", "set exactly one of bios and efi"),
    ] {
        let message = refusal(&with_bootloader(bootloader));
        let field = if path.is_empty() {
            format!("{AT}: ")
        } else {
            format!("{AT}.{path}: ")
        };
        assert!(
            message.contains(&field) && message.contains(why),
            "{bootloader}: {message}"
        );
    }
}

#[test]
fn a_bootloader_with_a_kernel_image_is_refused_by_name() {
    let text = with_bootloader("            bios: {}\n").replace(
        "          serial: CRM-0042\n",
        "          serial: CRM-0042\n          kernelBoot:\n            container:\n              \
         image: ironvisor/guest-kernel:debian\n              kernelPath: /boot/vmlinuz\n",
    );
    let message = refusal(&text);
    assert!(
        message.contains(
            "spec.template.spec.domain.firmware.bootloader: a bootloader cannot be combined \
             with kernelBoot.container"
        ),
        "{message}"
    );
}

fn with_volume(volume: &str) -> String {
    EXPORTED
        .replace(
            "            - name: root\n              disk:\n                bus: virtio\n",
            "            - name: root\n              disk:\n                bus: virtio\n            \
             - name: extra\n              serial: EXTRA1\n              disk:\n                bus: virtio\n",
        )
        .replace(
            "      volumes:\n",
            &format!("      volumes:\n        - name: extra\n{volume}"),
        )
}

#[test]
fn config_map_secret_service_account_and_downward_api_volumes_are_accepted() {
    for volume in [
        "          configMap:\n            name: app-config\n            volumeLabel: cidata\n",
        "          secret:\n            secretName: app-secret\n            optional: true\n",
        "          serviceAccount:\n            serviceAccountName: builder\n",
        "          downwardAPI:\n            fields:\n              - path: labels\n                \
         fieldRef:\n                  fieldPath: metadata.labels\n",
    ] {
        let vm = defaulted(&with_volume(volume));
        if let Err(error) = validate::vm(&vm) {
            panic!("{volume}: {error}");
        }
    }
}

#[test]
fn bad_labels_names_and_downward_api_paths_are_refused_by_name() {
    const AT: &str = "spec.template.spec.volumes[0]";
    for (volume, field) in [
        (
            "          configMap:\n            name: app-config\n            volumeLabel: a-label-too-long\n",
            "configMap.volumeLabel",
        ),
        ("          secret:\n            secretName: Not_A_Name\n", "secret.secretName"),
        (
            "          serviceAccount:\n            serviceAccountName: \"\"\n",
            "serviceAccount.serviceAccountName",
        ),
        (
            "          downwardAPI:\n            fields:\n              - path: ../escape\n                \
             fieldRef:\n                  fieldPath: metadata.labels\n",
            "downwardAPI.fields[0].path",
        ),
        (
            "          downwardAPI:\n            fields:\n              - path: nothing\n",
            "downwardAPI.fields[0]",
        ),
    ] {
        let message = refusal(&with_volume(volume));
        assert!(message.contains(&format!("{AT}.{field}: ")), "{volume}: {message}");
    }
}

fn with_access(credential: &str, seed: &str) -> String {
    EXPORTED
        .replace(
            "      architecture: amd64\n",
            &format!("      architecture: amd64\n      accessCredentials:\n{credential}"),
        )
        .replace(
            "            - name: root\n              disk:\n                bus: virtio\n",
            "            - name: root\n              disk:\n                bus: virtio\n            \
             - name: cloudinit\n              disk:\n                bus: virtio\n",
        )
        .replace(
            "      volumes:\n",
            &format!("      volumes:\n        - name: cloudinit\n          cloudInitNoCloud:\n{seed}"),
        )
}

const NO_CLOUD_KEY: &str = "
        - sshPublicKey:
            source:
              secret:
                secretName: my-keys
            propagationMethod:
              noCloud: {}
";
const CLOUD_CONFIG: &str = "            userData: \"#cloud-config\\nhostname: crm\\n\"\n";

#[test]
fn ssh_keys_by_no_cloud_are_accepted_with_a_cloud_config_seed() {
    let vm = defaulted(&with_access(NO_CLOUD_KEY, CLOUD_CONFIG));
    if let Err(error) = validate::vm(&vm) {
        panic!("{error}");
    }
}

#[test]
fn passwords_other_propagations_and_seeds_without_cloud_config_are_refused_by_name() {
    const AT: &str = "spec.template.spec.accessCredentials[0]";
    let agent = NO_CLOUD_KEY.replace(
        "noCloud: {}",
        "qemuGuestAgent:\n                users: [root]",
    );
    let drive = NO_CLOUD_KEY.replace("noCloud: {}", "configDrive: {}");
    let password = "
        - userPassword:
            source:
              secret:
                secretName: pw
            propagationMethod:
              qemuGuestAgent: {}
";
    for (credential, seed, field, why) in [
        (
            agent.as_str(),
            CLOUD_CONFIG,
            "sshPublicKey.propagationMethod.qemuGuestAgent",
            "guest agent",
        ),
        (
            drive.as_str(),
            CLOUD_CONFIG,
            "sshPublicKey.propagationMethod.configDrive",
            "NoCloud",
        ),
        (password, CLOUD_CONFIG, "userPassword", "guest agent"),
        (
            NO_CLOUD_KEY,
            "            userData: \"#!/bin/sh\\necho hi\\n\"\n",
            "sshPublicKey.propagationMethod.noCloud",
            "its userData is not #cloud-config",
        ),
    ] {
        let message = refusal(&with_access(credential, seed));
        assert!(
            message.contains(&format!("{AT}.{field}: ")) && message.contains(why),
            "{field}: {message}"
        );
    }
}
