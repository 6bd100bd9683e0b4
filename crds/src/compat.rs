//! KubeVirt settings that Ironvisor serves in its own way: the instance runs, and a
//! Warning event says what was mapped to what, so nobody believes the setting took
//! effect as written.

use crate::v1alpha1::{DiskBus, VirtualMachineInstanceSpec};

/// Reason of the warning about disks on a bus the microVM does not have.
pub const DISK_BUS_MAPPED_REASON: &str = "DiskBusMapped";
/// Reason of the warning about `bootloader.bios.useSerial`.
pub const BIOS_SERIAL_MAPPED_REASON: &str = "BiosSerialMapped";

/// One mapping to warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSetting {
    /// Event reason.
    pub reason: &'static str,
    /// Event message.
    pub message: String,
}

/// Every setting of `spec` that is served differently from how it is written.
pub fn mapped_settings(spec: &VirtualMachineInstanceSpec) -> Vec<MappedSetting> {
    let sata: Vec<&str> = spec
        .domain
        .devices
        .disks
        .iter()
        .filter(|disk| {
            let disk_bus = disk.disk.as_ref().and_then(|target| target.bus);
            let cdrom_bus = disk.cdrom.as_ref().and_then(|target| target.bus);
            disk_bus == Some(DiskBus::Sata) || cdrom_bus == Some(DiskBus::Sata)
        })
        .map(|disk| disk.name.as_str())
        .collect();
    let mut mapped = Vec::new();
    if !sata.is_empty() {
        mapped.push(MappedSetting {
            reason: DISK_BUS_MAPPED_REASON,
            message: format!(
                "disks {} ask for bus sata, which the microVM does not have: they are served \
                 as virtio-blk (every Linux guest has virtio drivers)",
                sata.join(", ")
            ),
        });
    }
    let use_serial = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|firmware| firmware.bootloader.as_ref())
        .and_then(|bootloader| bootloader.bios.as_ref())
        .and_then(|bios| bios.use_serial);
    if use_serial == Some(true) {
        mapped.push(MappedSetting {
            reason: BIOS_SERIAL_MAPPED_REASON,
            message: "bootloader.bios.useSerial: the BIOS's own messages are not copied to the \
                      serial console (the microVM has no BIOS; under emulation SeaBIOS draws \
                      on the absent display); the disk's bootloader and kernel use the serial \
                      console as they are configured to"
                .to_string(),
        });
    }
    mapped
}

/// The domain of the finalizers KubeVirt's controllers put on their objects.
pub const KUBEVIRT_FINALIZER_PREFIX: &str = "kubevirt.io/";

/// The finalizers of `finalizers` that KubeVirt's controllers own (a VM exported from
/// KubeVirt carries `kubevirt.io/virtualMachineControllerFinalize`). No controller watches
/// Ironvisor's kinds for them, so kept they would block the object's deletion forever.
pub fn kubevirt_finalizers(finalizers: &[String]) -> Vec<&str> {
    finalizers
        .iter()
        .map(String::as_str)
        .filter(|finalizer| finalizer.starts_with(KUBEVIRT_FINALIZER_PREFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{CdRomTarget, Disk, DiskTarget};

    fn disk(name: &str, bus: Option<DiskBus>, cdrom: bool) -> Disk {
        Disk {
            name: name.into(),
            disk: (!cdrom).then_some(DiskTarget { bus }),
            cdrom: cdrom.then_some(CdRomTarget {
                bus,
                readonly: None,
            }),
            ..Disk::default()
        }
    }

    #[test]
    fn use_serial_gets_a_warning_saying_what_the_console_shows() {
        use crate::v1alpha1::{BiosBootloader, Bootloader, Firmware};
        let mut spec = VirtualMachineInstanceSpec::default();
        assert!(mapped_settings(&spec).is_empty());
        spec.domain.firmware = Some(Firmware {
            bootloader: Some(Bootloader {
                bios: Some(BiosBootloader {
                    use_serial: Some(true),
                }),
                efi: None,
            }),
            ..Firmware::default()
        });
        let mapped = mapped_settings(&spec);
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped[0].reason, BIOS_SERIAL_MAPPED_REASON);
        assert!(mapped[0].message.starts_with("bootloader.bios.useSerial"));
    }

    #[test]
    fn sata_disks_and_cdroms_are_named_in_one_warning() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.disks = vec![
            disk("root", Some(DiskBus::Virtio), false),
            disk("data", Some(DiskBus::Sata), false),
            disk("install", Some(DiskBus::Sata), true),
            disk("plain", None, false),
        ];
        let mapped = mapped_settings(&spec);
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped[0].reason, DISK_BUS_MAPPED_REASON);
        assert!(
            mapped[0]
                .message
                .starts_with("disks data, install ask for bus sata"),
            "{}",
            mapped[0].message
        );
    }

    #[test]
    fn virtio_only_needs_no_warning() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.disks = vec![disk("root", None, false)];
        assert!(mapped_settings(&spec).is_empty());
    }
}

#[cfg(test)]
mod finalizer_tests {
    use super::*;

    #[test]
    fn only_kubevirts_finalizers_are_picked() {
        let finalizers = vec![
            "kubevirt.io/virtualMachineControllerFinalize".to_string(),
            "ironvisor.io/vm-graceful-stop".to_string(),
            "example.com/kubevirt.io/x".to_string(),
        ];
        assert_eq!(
            kubevirt_finalizers(&finalizers),
            ["kubevirt.io/virtualMachineControllerFinalize"]
        );
    }
}
