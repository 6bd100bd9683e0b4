//! The KVM VM: guest memory slots, the in-kernel interrupt controllers and PIT.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use ironvisor_arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_API_VERSION, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening KVM device {}: {source}", path.display())]
    OpenKvm {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("{} is not a KVM device (KVM_GET_API_VERSION: {source})", path.display())]
    NotKvmDevice {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("KVM device {} reports API version {found}; the launcher needs {KVM_API_VERSION}", path.display())]
    ApiVersion { path: PathBuf, found: i32 },
    #[error("creating the KVM VM (KVM_CREATE_VM): {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("{step}: {source}")]
    Setup {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("registering guest memory slot {slot} at {guest_addr:#x} ({size} bytes): {source}")]
    MemorySlot {
        slot: u32,
        guest_addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
}

/// Opens the KVM device at `path` and checks that it speaks the KVM API the launcher uses,
/// so that a wrong path fails here, naming the path, rather than at the first VM ioctl.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let open_error = |source| VmError::OpenKvm {
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| open_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(&c_path).map_err(open_error)?;
    let version = kvm.get_api_version();
    if version < 0 {
        // errno still belongs to the ioctl: nothing ran since.
        return Err(VmError::NotKvmDevice {
            path: path.to_path_buf(),
            source: kvm_ioctls::Error::last(),
        });
    }
    if u32::try_from(version) != Ok(KVM_API_VERSION) {
        return Err(VmError::ApiVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(kvm)
}

/// Creates the VM, registers every guest memory region as a KVM slot and sets up the
/// in-kernel IOAPIC/PIC/LAPICs and the PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
    let setup = |step: &'static str| move |source| VmError::Setup { step, source };
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(setup("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(setup("KVM_SET_IDENTITY_MAP_ADDR"))?;
    register_memory(&vm, mem)?;
    vm.create_irq_chip().map_err(setup("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(setup("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

fn register_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let guest_addr = region.start_addr().0;
        let size = region.len();
        let host_addr =
            mem.get_host_address(region.start_addr())
                .map_err(|_| VmError::MemorySlot {
                    slot,
                    guest_addr,
                    size,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
        let slot_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: the host mapping backs exactly `size` bytes and lives in `mem`, which the
        // VMM keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(slot_desc) }.map_err(|source| VmError::MemorySlot {
            slot,
            guest_addr,
            size,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::ffi::OsStrExt;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::host::DEFAULT_KVM_DEVICE;

    /// The host's KVM device, opened; fails the test when there is none.
    pub(in crate::vmm) fn open_host_kvm() -> Kvm {
        let device = ironvisor_prereq::path(DEFAULT_KVM_DEVICE, "the KVM device (kvm module)");
        match open_kvm(&device) {
            Ok(kvm) => kvm,
            Err(err) => panic!("the host's KVM device does not open: {err}"),
        }
    }

    /// A `Kvm` whose fd is /dev/null: every KVM ioctl on it fails with ENOTTY.
    pub(in crate::vmm) fn kvm_on_dev_null() -> Kvm {
        Kvm::new_with_path(c"/dev/null").expect("/dev/null opens read-write")
    }

    pub(in crate::vmm) fn small_guest_memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("2 MiB of guest memory")
    }

    #[test]
    fn a_missing_kvm_device_is_an_open_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("no-kvm-here");
        let err = open_kvm(&device).unwrap_err();
        let message = err.to_string();
        match err {
            VmError::OpenKvm { path, source } => {
                assert_eq!(path, device);
                assert_eq!(source.errno(), libc::ENOENT);
            }
            other => panic!("expected VmError::OpenKvm, got {other:?}"),
        }
        assert!(message.contains(&device.display().to_string()), "{message}");
    }

    #[test]
    fn a_directory_as_kvm_device_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_kvm(dir.path()).unwrap_err();
        assert!(
            matches!(&err, VmError::OpenKvm { path, source }
                if path == dir.path() && source.errno() == libc::EISDIR),
            "{err:?}"
        );
    }

    #[test]
    fn a_path_with_a_nul_byte_is_an_open_error_not_a_panic() {
        let device = Path::new(std::ffi::OsStr::from_bytes(b"/dev/k\0vm"));
        let err = open_kvm(device).unwrap_err();
        assert!(
            matches!(&err, VmError::OpenKvm { path, source }
                if path == device && source.errno() == libc::EINVAL),
            "{err:?}"
        );
    }

    #[test]
    fn dev_null_is_refused_as_not_a_kvm_device() {
        let err = open_kvm(Path::new("/dev/null")).unwrap_err();
        let message = err.to_string();
        match err {
            VmError::NotKvmDevice { path, source } => {
                assert_eq!(path, Path::new("/dev/null"));
                assert_eq!(source.errno(), libc::ENOTTY);
            }
            other => panic!("expected VmError::NotKvmDevice, got {other:?}"),
        }
        assert!(
            message.contains("/dev/null is not a KVM device"),
            "{message}"
        );
    }

    #[test]
    fn create_vm_on_a_fd_that_is_not_kvm_fails_at_kvm_create_vm() {
        let err = create_vm(&kvm_on_dev_null(), &small_guest_memory()).unwrap_err();
        assert!(
            matches!(&err, VmError::CreateVm(source) if source.errno() == libc::ENOTTY),
            "{err:?}"
        );
        assert!(err.to_string().contains("KVM_CREATE_VM"), "{err}");
    }

    #[test]
    #[ignore = "needs /dev/kvm"]
    fn the_host_kvm_device_opens_and_creates_a_vm_with_its_memory() {
        let kvm = open_host_kvm();
        let mem = small_guest_memory();
        if let Err(err) = create_vm(&kvm, &mem) {
            panic!("creating a VM on the host's KVM device: {err}");
        }
    }

    #[test]
    #[ignore = "needs /dev/kvm"]
    fn moving_a_registered_memory_slot_is_a_memory_slot_error() {
        let kvm = open_host_kvm();
        let vm = kvm
            .create_vm()
            .expect("KVM_CREATE_VM on the host's KVM device");
        let first = small_guest_memory();
        register_memory(&vm, &first).expect("registering the first guest memory");
        // Same slot and guest address, another host mapping: KVM refuses to move a slot.
        let second = small_guest_memory();
        let err = register_memory(&vm, &second).unwrap_err();
        assert!(
            matches!(
                &err,
                VmError::MemorySlot { slot: 0, guest_addr: 0, size, source }
                    if *size == 2 << 20 && source.errno() == libc::EINVAL
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("slot 0 at 0x0"), "{err}");
    }
}
