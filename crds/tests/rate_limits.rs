//! `rateLimit` on disks and interfaces: decoded from YAML, validated by path.

use ironvisor_crds::validate::{rates, Rates};
use ironvisor_crds::{defaults, parse_manifests, validate, Manifest, ValidationError};

fn manifest(disk_limit: &str, interface_limit: &str) -> String {
    format!(
        "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: limited
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory:
          guest: 256Mi
        devices:
          disks:
            - name: root
              rateLimit: {disk_limit}
          interfaces:
            - name: default
              masquerade: {{}}
              rateLimit: {interface_limit}
      networks:
        - name: default
          pod: {{}}
      volumes:
        - name: root
          containerDisk:
            image: ironvisor/rootfs:busybox
"
    )
}

fn problems(text: &str) -> Vec<ValidationError> {
    let mut manifests = parse_manifests(text, "limited.yaml").expect("decodes");
    let Some(Manifest::VirtualMachine(mut vm)) = manifests.pop() else {
        panic!("a VirtualMachine");
    };
    defaults::apply(&mut vm);
    match validate::vm(&vm) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_errors(),
    }
}

const DISK: &str = "spec.template.spec.domain.devices.disks[0].rateLimit";
const NIC: &str = "spec.template.spec.domain.devices.interfaces[0].rateLimit";

#[test]
fn rates_decode_and_convert_to_bytes_and_operations() {
    let text = manifest(
        "{bytesPerSecond: 10Mi, opsPerSecond: 500}",
        "{bytesPerSecond: 1M}",
    );
    assert_eq!(problems(&text), vec![]);
    let mut manifests = parse_manifests(&text, "limited.yaml").expect("decodes");
    let Some(Manifest::VirtualMachine(vm)) = manifests.pop() else {
        panic!("a VirtualMachine");
    };
    let devices = &vm.spec.template.spec.domain.devices;
    let disk = devices.disks[0].rate_limit.as_ref().expect("disk limit");
    assert_eq!(
        rates(disk),
        Some(Rates {
            bytes_per_second: Some(10 << 20),
            ops_per_second: Some(500),
        })
    );
    let nic = devices.interfaces[0]
        .rate_limit
        .as_ref()
        .expect("nic limit");
    assert_eq!(
        rates(nic),
        Some(Rates {
            bytes_per_second: Some(1_000_000),
            ops_per_second: None,
        })
    );
}

#[test]
fn an_empty_limit_zero_rates_and_bad_quantities_are_refused_by_path() {
    let found = problems(&manifest("{}", "{bytesPerSecond: 0, opsPerSecond: 0}"));
    assert_eq!(
        found,
        vec![
            ValidationError::RateLimitEmpty { path: DISK.into() },
            ValidationError::RateLimitZero {
                path: format!("{NIC}.bytesPerSecond")
            },
            ValidationError::RateLimitZero {
                path: format!("{NIC}.opsPerSecond")
            },
        ]
    );
    let found = problems(&manifest("{bytesPerSecond: fast}", "{opsPerSecond: 10}"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].path(), format!("{DISK}.bytesPerSecond"));
    assert!(found[0].to_string().contains("fast"), "{}", found[0]);
}

#[test]
fn unknown_rate_fields_are_refused_when_decoding() {
    let err = parse_manifests(&manifest("{iops: 5}", "{opsPerSecond: 10}"), "limited.yaml")
        .expect_err("unknown field");
    let message = err.to_string();
    assert!(message.contains("iops"), "{message}");
}
