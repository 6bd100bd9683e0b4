//! `spec.domain.firmware`: the SMBIOS identity the guest sees (`uuid`, `serial`) and the
//! firmware a boot disk was made for (`bootloader`: BIOS, or UEFI without Secure Boot).

use super::{formats, FieldPath, ValidationError};
use crate::v1alpha1::{Bootloader, Firmware};

/// Checks `firmware` (at `path`).
pub(super) fn check(firmware: &Firmware, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if let Some(uuid) = firmware.uuid.as_deref() {
        if !formats::uuid(uuid) {
            errors.push(ValidationError::InvalidFirmwareUuid {
                path: path.child("uuid").into(),
                value: uuid.to_string(),
            });
        }
    }
    if let Some(serial) = firmware.serial.as_deref() {
        if !formats::smbios_string(serial) {
            errors.push(ValidationError::InvalidFirmwareSerial {
                path: path.child("serial").into(),
                value: serial.to_string(),
            });
        }
    }
    if let Some(bootloader) = &firmware.bootloader {
        let at = path.child("bootloader");
        let kernel_image = firmware
            .kernel_boot
            .as_ref()
            .is_some_and(|kernel| kernel.container.is_some());
        if kernel_image {
            errors.push(ValidationError::BootloaderWithKernelBoot {
                path: at.clone().into(),
            });
        }
        bootloader_choice(bootloader, &at, errors);
    }
}

fn bootloader_choice(bootloader: &Bootloader, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    match (&bootloader.bios, &bootloader.efi) {
        (Some(_), None) => {}
        (None, Some(efi)) => {
            let efi_path = path.child("efi");
            if efi.secure_boot != Some(false) {
                errors.push(ValidationError::SecureBootNotServed {
                    path: efi_path.child("secureBoot").into(),
                });
            }
            if efi.persistent == Some(true) {
                errors.push(ValidationError::PersistentEfiNotServed {
                    path: efi_path.child("persistent").into(),
                });
            }
        }
        _ => errors.push(ValidationError::BootloaderChoice {
            path: path.clone().into(),
        }),
    }
}
