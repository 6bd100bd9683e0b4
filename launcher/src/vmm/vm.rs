//! The KVM VM: guest memory slots, the in-kernel interrupt controllers and PIT.

use ironvisor_arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening {path}: {source}")]
    OpenKvm {
        path: String,
        source: kvm_ioctls::Error,
    },
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

/// Opens the KVM device at `path`.
pub fn open_kvm(path: &std::path::Path) -> Result<Kvm, VmError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::OpenKvm {
            path: path.display().to_string(),
            source: kvm_ioctls::Error::new(libc::EINVAL),
        }
    })?;
    Kvm::new_with_path(&c_path).map_err(|source| VmError::OpenKvm {
        path: path.display().to_string(),
        source,
    })
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
