//! One test per validation rule: start from a valid machine, break one thing, and check
//! that exactly the expected problem is reported at the expected path.

use ironvisor_crds::v1alpha1::{
    CdRomTarget, CloudInitNoCloudSource, ContainerDiskSource, Cpu, Disk, DiskBus, DiskTarget,
    EmptyDiskSource, HostDisk, HostDiskType, Interface, InterfaceBridge, KernelBoot,
    KernelBootContainer, Memory, MultusNetwork, Network, PersistentVolumeClaimSource, PodNetwork,
    ResourceRequirements, RunStrategy, VirtualMachine, VirtualMachineInstance, Volume,
};
use ironvisor_crds::{defaults, parse_manifests, validate, Manifest, ValidationError};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const BASE: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: base
  namespace: default
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
            - name: data
          interfaces:
            - name: default
              masquerade: {}
      networks:
        - name: default
          pod: {}
      volumes:
        - name: root
          containerDisk:
            image: ironvisor/rootfs:busybox
        - name: data
          emptyDisk:
            capacity: 1Gi
";

const T: &str = "spec.template.spec";

fn base() -> VirtualMachine {
    let mut manifests = parse_manifests(BASE, "base.yaml").expect("base decodes");
    let Some(Manifest::VirtualMachine(vm)) = manifests.pop() else {
        panic!("base is a VirtualMachine");
    };
    let mut vm = *vm;
    defaults::apply(&mut vm);
    vm
}

fn problems(vm: &VirtualMachine) -> Vec<ValidationError> {
    match validate::vm(vm) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_errors(),
    }
}

#[track_caller]
fn assert_only(vm: &VirtualMachine, expected: ValidationError) {
    assert_eq!(problems(vm), vec![expected]);
}

#[track_caller]
fn assert_paths(vm: &VirtualMachine, expected: &[String]) {
    let found: Vec<String> = problems(vm).iter().map(|e| e.path().to_string()).collect();
    assert_eq!(found, expected, "{:#?}", problems(vm));
}

fn q(text: &str) -> Quantity {
    Quantity(text.into())
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Volume::default()
    }
}

#[test]
fn base_is_valid() {
    assert_eq!(problems(&base()), vec![]);
}

#[test]
fn running_and_run_strategy_are_exclusive() {
    let mut vm = base();
    vm.spec.running = Some(true);
    vm.spec.run_strategy = Some(RunStrategy::Halted);
    assert_only(
        &vm,
        ValidationError::RunningAndRunStrategy {
            path: "spec.running".into(),
        },
    );
}

#[test]
fn duplicate_disk_names() {
    let mut vm = base();
    vm.spec.template.spec.domain.devices.disks[1].name = "root".into();
    let found = problems(&vm);
    assert!(found.contains(&ValidationError::DuplicateName {
        path: format!("{T}.domain.devices.disks[1].name"),
        name: "root".into(),
        first: format!("{T}.domain.devices.disks[0].name"),
    }));
    // The data volume has lost its disk.
    assert!(found.contains(&ValidationError::VolumeWithoutDisk {
        path: format!("{T}.volumes[1].name"),
        name: "data".into(),
    }));
    assert_eq!(found.len(), 2, "{found:#?}");
}

#[test]
fn duplicate_volume_interface_and_network_names() {
    let mut vm = base();
    let spec = &mut vm.spec.template.spec;
    spec.volumes.push(Volume {
        empty_disk: Some(EmptyDiskSource { capacity: q("1Gi") }),
        ..volume("data")
    });
    spec.domain.devices.interfaces.push(Interface {
        name: "default".into(),
        ..Interface::default()
    });
    spec.networks.push(Network {
        name: "default".into(),
        multus: Some(MultusNetwork {
            network_name: "other".into(),
        }),
        pod: None,
    });
    let duplicates: Vec<String> = problems(&vm)
        .into_iter()
        .filter_map(|e| match e {
            ValidationError::DuplicateName { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        duplicates,
        [
            format!("{T}.volumes[2].name"),
            format!("{T}.domain.devices.interfaces[1].name"),
            format!("{T}.networks[1].name"),
        ]
    );
}

#[test]
fn disk_without_volume() {
    let mut vm = base();
    vm.spec.template.spec.domain.devices.disks.push(Disk {
        name: "extra".into(),
        ..Disk::default()
    });
    assert_only(
        &vm,
        ValidationError::DiskWithoutVolume {
            path: format!("{T}.domain.devices.disks[2].name"),
            name: "extra".into(),
        },
    );
}

#[test]
fn interface_without_network_and_network_without_interface() {
    let mut vm = base();
    vm.spec.template.spec.domain.devices.interfaces[0].name = "eth1".into();
    assert_eq!(
        problems(&vm),
        vec![
            ValidationError::InterfaceWithoutNetwork {
                path: format!("{T}.domain.devices.interfaces[0].name"),
                name: "eth1".into(),
            },
            ValidationError::NetworkWithoutInterface {
                path: format!("{T}.networks[0].name"),
                name: "default".into(),
            },
        ]
    );
}

#[test]
fn memory_missing() {
    let mut vm = base();
    vm.spec.template.spec.domain.memory = None;
    assert_only(
        &vm,
        ValidationError::MemoryMissing {
            path: format!("{T}.domain.memory.guest"),
        },
    );
}

#[test]
fn memory_zero_unparsable_negative_and_too_large() {
    let path = format!("{T}.domain.memory.guest");
    let check = |guest: &str| {
        let mut vm = base();
        vm.spec.template.spec.domain.memory = Some(Memory { guest: q(guest) });
        problems(&vm)
    };
    assert_eq!(
        check("0"),
        vec![ValidationError::MemoryZero { path: path.clone() }]
    );
    assert!(matches!(
        check("12 MB").as_slice(),
        [ValidationError::InvalidQuantity { path: p, .. }] if *p == path
    ));
    assert!(matches!(
        check("-1Gi").as_slice(),
        [ValidationError::InvalidQuantity {
            source: ironvisor_crds::quantity::QuantityError::Negative { .. },
            ..
        }]
    ));
    assert_eq!(
        check("2Ti"),
        vec![ValidationError::MemoryTooLarge {
            path: path.clone(),
            value: "2Ti".into(),
            bytes: 2 << 40,
        }]
    );
    assert_eq!(check("1Ti"), vec![], "the limit itself is allowed");
}

#[test]
fn memory_from_requests_is_checked_at_the_request_path() {
    let mut vm = base();
    let domain = &mut vm.spec.template.spec.domain;
    domain.memory = None;
    let mut resources = ResourceRequirements::default();
    resources.requests.insert("memory".into(), q("0"));
    domain.resources = Some(resources);
    assert_only(
        &vm,
        ValidationError::MemoryZero {
            path: format!("{T}.domain.resources.requests[memory]"),
        },
    );
}

#[test]
fn requests_and_guest_memory_above_limits() {
    let mut vm = base();
    let mut resources = ResourceRequirements::default();
    resources.requests.insert("cpu".into(), q("2"));
    resources.limits.insert("cpu".into(), q("500m"));
    resources.limits.insert("memory".into(), q("128Mi"));
    vm.spec.template.spec.domain.resources = Some(resources);
    assert_eq!(
        problems(&vm),
        vec![
            ValidationError::MemoryAboveLimit {
                path: format!("{T}.domain.memory.guest"),
                guest: "256Mi".into(),
                limit: "128Mi".into(),
            },
            ValidationError::RequestAboveLimit {
                path: format!("{T}.domain.resources.requests[cpu]"),
                request: "2".into(),
                limit: "500m".into(),
            },
        ]
    );
}

#[test]
fn unparsable_resource_quantity() {
    let mut vm = base();
    let mut resources = ResourceRequirements::default();
    resources.limits.insert("cpu".into(), q("1.2.3"));
    vm.spec.template.spec.domain.resources = Some(resources);
    assert_paths(&vm, &[format!("{T}.domain.resources.limits[cpu]")]);
}

#[test]
fn cpu_zero_and_too_many_vcpus() {
    let mut vm = base();
    vm.spec.template.spec.domain.cpu = Some(Cpu {
        cores: Some(0),
        sockets: Some(1),
        threads: Some(1),
        dedicated_cpu_placement: None,
        model: None,
    });
    assert_only(
        &vm,
        ValidationError::CpuZero {
            path: format!("{T}.domain.cpu.cores"),
        },
    );
    vm.spec.template.spec.domain.cpu = Some(Cpu {
        cores: Some(33),
        sockets: Some(2),
        threads: Some(1),
        dedicated_cpu_placement: None,
        model: None,
    });
    assert_only(
        &vm,
        ValidationError::TooManyVcpus {
            path: format!("{T}.domain.cpu"),
            count: 66,
            max: 64,
        },
    );
}

#[test]
fn volume_with_zero_or_several_sources() {
    let mut vm = base();
    vm.spec.template.spec.volumes[1].empty_disk = None;
    assert_only(
        &vm,
        ValidationError::VolumeSourceCount {
            path: format!("{T}.volumes[1]"),
            name: "data".into(),
            found: "none".into(),
        },
    );
    vm.spec.template.spec.volumes[1] = Volume {
        container_disk: Some(ContainerDiskSource {
            image: "ironvisor/rootfs:busybox".into(),
        }),
        empty_disk: Some(EmptyDiskSource { capacity: q("1Gi") }),
        ..volume("data")
    };
    assert_only(
        &vm,
        ValidationError::VolumeSourceCount {
            path: format!("{T}.volumes[1]"),
            name: "data".into(),
            found: "containerDisk, emptyDisk".into(),
        },
    );
}

#[test]
fn host_disk_rules() {
    let mut vm = base();
    vm.spec.template.spec.volumes[1] = Volume {
        host_disk: Some(HostDisk {
            path: "/var/lib/ironvisor/data.raw".into(),
            type_: HostDiskType::DiskOrCreate,
            capacity: None,
        }),
        ..volume("data")
    };
    assert_only(
        &vm,
        ValidationError::HostDiskCapacityRequired {
            path: format!("{T}.volumes[1].hostDisk.capacity"),
        },
    );
    for bad in ["data.raw", "/var/../etc/shadow", "/"] {
        vm.spec.template.spec.volumes[1].host_disk = Some(HostDisk {
            path: bad.into(),
            type_: HostDiskType::Disk,
            capacity: None,
        });
        assert_only(
            &vm,
            ValidationError::InvalidPath {
                path: format!("{T}.volumes[1].hostDisk.path"),
                value: bad.into(),
            },
        );
    }
    vm.spec.template.spec.volumes[1].host_disk = Some(HostDisk {
        path: "/data.raw".into(),
        type_: HostDiskType::DiskOrCreate,
        capacity: Some(q("0")),
    });
    assert_only(
        &vm,
        ValidationError::CapacityZero {
            path: format!("{T}.volumes[1].hostDisk.capacity"),
        },
    );
}

#[test]
fn empty_disk_and_claim_rules() {
    let mut vm = base();
    vm.spec.template.spec.volumes[1].empty_disk = Some(EmptyDiskSource {
        capacity: q("1 Gi"),
    });
    assert_paths(&vm, &[format!("{T}.volumes[1].emptyDisk.capacity")]);

    vm.spec.template.spec.volumes[1] = Volume {
        persistent_volume_claim: Some(PersistentVolumeClaimSource {
            claim_name: "Data_Claim".into(),
            read_only: None,
        }),
        ..volume("data")
    };
    assert_paths(
        &vm,
        &[format!("{T}.volumes[1].persistentVolumeClaim.claimName")],
    );
}

#[test]
fn bad_mac_addresses() {
    let path = format!("{T}.domain.devices.interfaces[0].macAddress");
    for bad in [
        "02:00:00:00:00",
        "02:00:00:00:00:0g",
        "2:00:00:00:00:01",
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "02:00:00:00:00:01:02",
    ] {
        let mut vm = base();
        vm.spec.template.spec.domain.devices.interfaces[0].mac_address = Some(bad.into());
        let found = problems(&vm);
        assert!(
            matches!(found.as_slice(), [ValidationError::InvalidMac { path: p, value, .. }] if *p == path && value == bad),
            "{bad}: {found:#?}"
        );
    }
    for good in ["02:00:00:00:00:01", "52-54-00-AB-cd-EF"] {
        let mut vm = base();
        vm.spec.template.spec.domain.devices.interfaces[0].mac_address = Some(good.into());
        assert_eq!(problems(&vm), vec![], "{good}");
    }
}

#[test]
fn duplicate_mac_addresses() {
    let mut vm = base();
    let spec = &mut vm.spec.template.spec;
    spec.domain.devices.interfaces[0].mac_address = Some("02:00:00:00:00:01".into());
    spec.domain.devices.interfaces.push(Interface {
        name: "storage".into(),
        bridge: Some(InterfaceBridge {}),
        mac_address: Some("02-00-00-00-00-01".into()),
        ..Interface::default()
    });
    spec.networks.push(Network {
        name: "storage".into(),
        pod: None,
        multus: Some(MultusNetwork {
            network_name: "infra/storage".into(),
        }),
    });
    assert_only(
        &vm,
        ValidationError::DuplicateMac {
            path: format!("{T}.domain.devices.interfaces[1].macAddress"),
            value: "02-00-00-00-00-01".into(),
            first: format!("{T}.domain.devices.interfaces[0].macAddress"),
        },
    );
}

#[test]
fn boot_order_zero_and_duplicates() {
    let mut vm = base();
    let disks = &mut vm.spec.template.spec.domain.devices.disks;
    disks[0].boot_order = Some(0);
    disks[1].boot_order = Some(1);
    assert_only(
        &vm,
        ValidationError::BootOrderZero {
            path: format!("{T}.domain.devices.disks[0].bootOrder"),
        },
    );
    vm.spec.template.spec.domain.devices.disks[0].boot_order = Some(1);
    assert_only(
        &vm,
        ValidationError::DuplicateBootOrder {
            path: format!("{T}.domain.devices.disks[1].bootOrder"),
            value: 1,
            first: format!("{T}.domain.devices.disks[0].bootOrder"),
        },
    );
}

#[test]
fn names_must_be_dns_1123_labels() {
    let mut vm = base();
    vm.metadata.name = Some("Bad_Name".into());
    vm.spec.template.spec.domain.devices.disks[0].name = "Root".into();
    vm.spec.template.spec.volumes[0].name = "Root".into();
    assert_paths(
        &vm,
        &[
            "metadata.name".into(),
            format!("{T}.domain.devices.disks[0].name"),
            format!("{T}.volumes[0].name"),
        ],
    );
    vm.metadata.name = Some("a".repeat(64));
    vm.spec.template.spec.domain.devices.disks[0].name = "root".into();
    vm.spec.template.spec.volumes[0].name = "root".into();
    assert_paths(&vm, &["metadata.name".into()]);
    vm.metadata.name = None;
    assert_only(
        &vm,
        ValidationError::Required {
            path: "metadata.name".into(),
        },
    );
    vm.metadata.generate_name = Some("base-".into());
    assert_eq!(problems(&vm), vec![]);
}

#[test]
fn disk_and_cdrom_together_and_unsupported_bus() {
    let mut vm = base();
    let disk = &mut vm.spec.template.spec.domain.devices.disks[0];
    disk.cdrom = Some(CdRomTarget {
        bus: Some(DiskBus::Usb),
        readonly: Some(true),
    });
    assert_eq!(
        problems(&vm),
        vec![
            ValidationError::DiskTargetCount {
                path: format!("{T}.domain.devices.disks[0]"),
                name: "root".into(),
            },
            ValidationError::UnsupportedBus {
                path: format!("{T}.domain.devices.disks[0].cdrom.bus"),
                bus: "usb",
            },
        ]
    );
    // SATA (KubeVirt's default on amd64) is served as virtio-blk, with a warning event.
    let mut vm = base();
    vm.spec.template.spec.domain.devices.disks[0].disk = Some(DiskTarget {
        bus: Some(DiskBus::Sata),
    });
    assert_eq!(problems(&vm), vec![]);
    let mut vm = base();
    vm.spec.template.spec.domain.devices.disks[1].disk = Some(DiskTarget {
        bus: Some(DiskBus::Scsi),
    });
    assert_paths(&vm, &[format!("{T}.domain.devices.disks[1].disk.bus")]);
}

#[test]
fn interface_bindings() {
    let mut vm = base();
    vm.spec.template.spec.domain.devices.interfaces[0].bridge = Some(InterfaceBridge {});
    assert_only(
        &vm,
        ValidationError::InterfaceBindingCount {
            path: format!("{T}.domain.devices.interfaces[0]"),
            name: "default".into(),
        },
    );
    let mut vm = base();
    vm.spec.template.spec.networks[0] = Network {
        name: "default".into(),
        pod: None,
        multus: Some(MultusNetwork {
            network_name: "lan".into(),
        }),
    };
    assert_only(
        &vm,
        ValidationError::MasqueradeNeedsPodNetwork {
            path: format!("{T}.domain.devices.interfaces[0].masquerade"),
            network: "default".into(),
        },
    );
}

#[test]
fn network_sources() {
    let mut vm = base();
    vm.spec.template.spec.networks[0].multus = Some(MultusNetwork {
        network_name: "lan".into(),
    });
    assert_only(
        &vm,
        ValidationError::NetworkSourceCount {
            path: format!("{T}.networks[0]"),
            name: "default".into(),
        },
    );
    let mut vm = base();
    let spec = &mut vm.spec.template.spec;
    spec.networks.push(Network {
        name: "second".into(),
        pod: Some(PodNetwork {}),
        multus: None,
    });
    spec.domain.devices.interfaces.push(Interface {
        name: "second".into(),
        bridge: Some(InterfaceBridge {}),
        ..Interface::default()
    });
    assert_only(
        &vm,
        ValidationError::MultiplePodNetworks {
            path: format!("{T}.networks[1].pod"),
            first: format!("{T}.networks[0].pod"),
        },
    );
    let mut vm = base();
    vm.spec.template.spec.networks[0] = Network {
        name: "default".into(),
        pod: None,
        multus: Some(MultusNetwork {
            network_name: "Bad/Name".into(),
        }),
    };
    vm.spec.template.spec.domain.devices.interfaces[0].masquerade = None;
    vm.spec.template.spec.domain.devices.interfaces[0].bridge = Some(InterfaceBridge {});
    assert_paths(&vm, &[format!("{T}.networks[0].multus.networkName")]);
}

#[test]
fn cloud_init_rules() {
    let cloud = |source: CloudInitNoCloudSource| {
        let mut vm = base();
        vm.spec.template.spec.volumes[1] = Volume {
            cloud_init_no_cloud: Some(source),
            ..volume("data")
        };
        problems(&vm)
    };
    let path = format!("{T}.volumes[1].cloudInitNoCloud");
    assert_eq!(
        cloud(CloudInitNoCloudSource {
            user_data: Some("#cloud-config\n".into()),
            user_data_base64: Some("I2Nsb3VkLWNvbmZpZwo=".into()),
            network_data: None,
        }),
        vec![ValidationError::CloudInitUserDataConflict {
            path: format!("{path}.userDataBase64"),
        }]
    );
    assert_eq!(
        cloud(CloudInitNoCloudSource::default()),
        vec![ValidationError::CloudInitEmpty { path: path.clone() }]
    );
    let found = cloud(CloudInitNoCloudSource {
        user_data_base64: Some("not base64!".into()),
        ..CloudInitNoCloudSource::default()
    });
    assert!(
        matches!(found.as_slice(), [ValidationError::InvalidBase64 { path: p, .. }] if *p == format!("{path}.userDataBase64")),
        "{found:#?}"
    );
    // Base64 wrapped over lines by a YAML block scalar is fine.
    assert_eq!(
        cloud(CloudInitNoCloudSource {
            user_data_base64: Some("I2Nsb3Vk\nLWNvbmZpZwo=\n".into()),
            ..CloudInitNoCloudSource::default()
        }),
        vec![]
    );
    // Megabytes of userData are refused by size, naming the field.
    let huge = format!("#cloud-config\n{}", "x".repeat(2 << 20));
    assert_eq!(
        cloud(CloudInitNoCloudSource {
            user_data: Some(huge.clone()),
            ..CloudInitNoCloudSource::default()
        }),
        vec![ValidationError::CloudInitTooLarge {
            path: format!("{path}.userData"),
            bytes: huge.len(),
            max: ironvisor_crds::validate::MAX_CLOUD_INIT_BYTES,
        }]
    );
}

#[test]
fn kernel_boot_rules() {
    let kernel = |boot: KernelBoot| {
        let mut vm = base();
        vm.spec.template.spec.domain.firmware = Some(ironvisor_crds::v1alpha1::Firmware {
            kernel_boot: Some(boot),
            ..Default::default()
        });
        problems(&vm)
    };
    let path = format!("{T}.domain.firmware.kernelBoot");
    assert_eq!(
        kernel(KernelBoot {
            kernel_args: Some("console=ttyS0".into()),
            container: None,
        }),
        vec![ValidationError::KernelBootWithoutContainer {
            path: format!("{path}.container"),
        }]
    );
    let container = |image: &str, kernel: Option<&str>, initrd: Option<&str>| {
        Some(KernelBootContainer {
            image: image.into(),
            kernel_path: kernel.map(Into::into),
            initrd_path: initrd.map(Into::into),
        })
    };
    assert_eq!(
        kernel(KernelBoot {
            kernel_args: None,
            container: container("ironvisor/guest-kernel:debian-6.1", None, None),
        }),
        vec![ValidationError::KernelBootPathsMissing {
            path: format!("{path}.container"),
        }]
    );
    assert_eq!(
        kernel(KernelBoot {
            kernel_args: None,
            container: container(
                "ironvisor/guest-kernel:debian-6.1",
                Some("boot/vmlinuz"),
                None
            ),
        }),
        vec![ValidationError::InvalidPath {
            path: format!("{path}.container.kernelPath"),
            value: "boot/vmlinuz".into(),
        }]
    );
    for image in ["../../etc", "has space", "/abs/path", "a//b"] {
        let found = kernel(KernelBoot {
            kernel_args: None,
            container: container(image, Some("/boot/vmlinuz"), None),
        });
        assert!(
            matches!(found.as_slice(), [ValidationError::InvalidImage { path: p, .. }] if *p == format!("{path}.container.image")),
            "{image}: {found:#?}"
        );
    }
    for args in ["a".repeat(2049), "console=ttyS0\ninit=/bin/sh".to_string()] {
        let found = kernel(KernelBoot {
            kernel_args: Some(args),
            container: container(
                "ironvisor/guest-kernel:debian-6.1",
                Some("/boot/vmlinuz"),
                None,
            ),
        });
        assert!(
            matches!(found.as_slice(), [ValidationError::InvalidKernelArgs { path: p, .. }] if *p == format!("{path}.kernelArgs")),
            "{found:#?}"
        );
    }
}

#[test]
fn empty_container_disk_image() {
    let mut vm = base();
    vm.spec.template.spec.volumes[0].container_disk = Some(ContainerDiskSource {
        image: String::new(),
    });
    assert_only(
        &vm,
        ValidationError::Required {
            path: format!("{T}.volumes[0].containerDisk.image"),
        },
    );
}

#[test]
fn serial_rules() {
    let mut vm = base();
    vm.spec.template.spec.domain.devices.disks[0].serial = Some("serial with spaces".into());
    assert_paths(&vm, &[format!("{T}.domain.devices.disks[0].serial")]);
    vm.spec.template.spec.domain.devices.disks[0].serial = Some("A".repeat(21));
    assert_paths(&vm, &[format!("{T}.domain.devices.disks[0].serial")]);
    vm.spec.template.spec.domain.devices.disks[0].serial = Some("ROOT-0001_a.b+c".into());
    assert_eq!(problems(&vm), vec![]);
}

#[test]
fn negative_grace_period() {
    let mut vm = base();
    vm.spec.template.spec.termination_grace_period_seconds = Some(-1);
    assert_only(
        &vm,
        ValidationError::NegativeGracePeriod {
            path: format!("{T}.terminationGracePeriodSeconds"),
            value: -1,
        },
    );
}

#[test]
fn labels_and_node_selector() {
    let mut vm = base();
    vm.spec
        .template
        .spec
        .node_selector
        .insert("kubernetes.io/hostname".into(), "node-1".into());
    vm.spec
        .template
        .spec
        .node_selector
        .insert("bad key".into(), "x".into());
    vm.metadata.labels = Some([("app".to_string(), "-bad-".to_string())].into());
    assert_paths(
        &vm,
        &[
            "metadata.labels[app]".into(),
            format!("{T}.nodeSelector[bad key]"),
        ],
    );
}

#[test]
fn hardware_isolation_annotation_points_to_the_field() {
    let mut vm = base();
    vm.metadata.annotations = Some(
        [(
            "ironvisor.io/hardware-isolation".to_string(),
            "required".to_string(),
        )]
        .into(),
    );
    let found = problems(&vm);
    assert_eq!(
        found,
        vec![ValidationError::HardwareIsolationAnnotation {
            path: "metadata.annotations[ironvisor.io/hardware-isolation]".into(),
        }]
    );
    assert!(found[0].to_string().contains("hardwareIsolation"));
}

#[test]
fn too_many_devices() {
    let mut vm = base();
    let spec = &mut vm.spec.template.spec;
    for index in 0..17 {
        let name = format!("extra{index}");
        spec.domain.devices.disks.push(Disk {
            name: name.clone(),
            ..Disk::default()
        });
        spec.volumes.push(Volume {
            empty_disk: Some(EmptyDiskSource { capacity: q("1Mi") }),
            ..volume(&name)
        });
    }
    assert_only(
        &vm,
        ValidationError::TooManyDevices {
            path: format!("{T}.domain.devices"),
            count: 20,
            max: 18,
        },
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut vm = base();
    vm.spec.running = Some(false);
    let spec = &mut vm.spec.template.spec;
    spec.domain.memory = Some(Memory { guest: q("Mi") });
    spec.domain.devices.disks[1].name = "Data".into();
    spec.domain.devices.interfaces[0].mac_address = Some("zz".into());
    let errors = validate::vm(&vm).unwrap_err();
    assert_eq!(
        errors.paths(),
        [
            "spec.running".to_string(),
            format!("{T}.domain.memory.guest"),
            format!("{T}.domain.devices.disks[1].name"),
            format!("{T}.domain.devices.disks[1].name"),
            format!("{T}.volumes[1].name"),
            format!("{T}.domain.devices.interfaces[0].macAddress"),
        ]
    );
    let shown = errors.to_string();
    assert!(
        shown.starts_with("VirtualMachine default/base is invalid (6 problems):"),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 7, "{shown}");
}

#[test]
fn vmi_paths_start_at_spec() {
    let text = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: one
spec:
  domain:
    cpu:
      threads: 0
    devices:
      disks:
        - name: root
";
    let Some(Manifest::VirtualMachineInstance(vmi)) =
        parse_manifests(text, "vmi.yaml").expect("decodes").pop()
    else {
        panic!("a VMI");
    };
    let mut vmi: VirtualMachineInstance = *vmi;
    defaults::apply_vmi(&mut vmi);
    let errors = validate::vmi(&vmi).unwrap_err();
    assert_eq!(
        errors.paths(),
        [
            "spec.domain.cpu.threads",
            "spec.domain.memory.guest",
            "spec.domain.devices.disks[0].name",
        ]
    );
    assert_eq!(errors.object(), "VirtualMachineInstance one");
}
