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
